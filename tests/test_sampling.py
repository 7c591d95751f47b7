"""DDIM against theory.md's exact flow-map values for a Gaussian, and sampling a real model to x_t."""
import pytest
import torch

from latentbasis import GaussianModel, load_model, sample_to
from latentbasis.sampling import ddim_step, ddim_timesteps


@pytest.mark.parametrize("lam,n,expected", [
    (10, 10, 2.680), (10, 50, 3.067), (10, 250, 3.143), (10, 1000, 3.157),
    (0.01, 10, 0.0347), (0.01, 50, 0.0789), (0.01, 250, 0.0958), (0.01, 1000, 0.0993),
])
def test_ddim_flow_map_matches_theory(lam, n, expected):
    """One Gaussian direction with variance lam: DDIM (eta = 0) over linspace(999, 0, n) scales it by `expected`."""
    g = GaussianModel.random(x_shape=(1,), h_dim=1, lam=[lam], seed=0)
    g.mu.zero_()
    ab = g.alphas_cumprod
    x = torch.ones(1, dtype=torch.float64)
    for a, b in zip(ddim_timesteps(999, 0, n)[:-1], ddim_timesteps(999, 0, n)[1:]):
        eps = (x - ab[a].sqrt() * g.denoiser(x, a)) / (1 - ab[a]).sqrt()
        x = ddim_step(x, eps, ab[a], ab[b])
    assert float(x[0]) == pytest.approx(expected, abs=6e-4)


def test_ddim_step_inverts():
    ab = torch.tensor([0.9, 0.3], dtype=torch.float64)
    x, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    assert torch.allclose(ddim_step(ddim_step(x, eps, ab[0], ab[1]), eps, ab[1], ab[0]), x)


def test_clipped_ddim_step_clamps_x0_hat_and_is_a_no_op_inside_the_range():
    ab = torch.tensor([0.5, 0.8], dtype=torch.float64)
    x, eps = torch.tensor([0.3, 2.0, -2.5], dtype=torch.float64), torch.tensor([0.1, -0.4, 0.2], dtype=torch.float64)
    x0 = (x - (1 - ab[0]).sqrt() * eps) / ab[0].sqrt()                       # [0.32, 3.39, -3.68]
    y, y_clip = ddim_step(x, eps, ab[0], ab[1]), ddim_step(x, eps, ab[0], ab[1], clip=1.0)
    assert y_clip[0] == pytest.approx(float(y[0]), abs=1e-12)              # inside: unchanged
    eps_c = (x - ab[0].sqrt() * x0.clamp(-1, 1)) / (1 - ab[0]).sqrt()
    assert torch.allclose(y_clip, ab[1].sqrt() * x0.clamp(-1, 1) + (1 - ab[1]).sqrt() * eps_c)
    assert not torch.allclose(y_clip[1:], y[1:])


def test_pixel_models_clip_as_their_scheduler_config_says(tiny_unet_dir, tiny_sd_dir):
    m = load_model(str(tiny_unet_dir))
    assert m.clip_sample == float(m.scheduler.config.clip_sample_range)     # diffusers' DDPM default: clip to 1
    m.scheduler.register_to_config(clip_sample=False)
    assert m.clip_sample is None
    assert load_model(str(tiny_sd_dir)).clip_sample is None                  # VAE latents are not bounded


def test_sample_to_is_seeded_and_starts_from_noise(tiny_unet_dir):
    m = load_model(str(tiny_unet_dir))
    a, b = sample_to(m, 3, t=0.5, num_steps=10), sample_to(m, 3, t=0.5, num_steps=10)
    assert a.shape == m.x_shape and torch.equal(a, b)
    assert not torch.equal(a, sample_to(m, 4, t=0.5, num_steps=10))
    xT = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample_to(m, 3, t=1.0), xT)


def test_sample_with_prompt(tiny_sd_dir):
    m = load_model(str(tiny_sd_dir))
    x = sample_to(m, 0, t=0.5, num_steps=6, prompt="a cat", guidance=3.0)
    assert x.shape == (4, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize("which", ["pixel", "text"])
def test_the_traced_sampling_unet_gives_the_eager_outputs(which, tiny_unet_dir, tiny_sd_dir):
    """DiffusionModel.eps runs a torch.jit trace of a channels-last copy of the U-Net: the eager forward's numbers up
    to rounding, any batch, the same bits on every call; the eager U-Net (used by the feature map) is untouched."""
    from latentbasis.models import load_model

    m = load_model(str(tiny_unet_dir if which == "pixel" else tiny_sd_dir))
    cond = m.encode_prompt("the digit one") if which == "text" else None
    for b in (1, 3):
        x = torch.randn(b, *m.x_shape, generator=torch.Generator().manual_seed(b))
        t = torch.full((b,), 321, dtype=torch.long)
        c = None if cond is None else cond.expand(b, -1, -1)
        with torch.no_grad():
            eager = (m.unet(x, t) if c is None else m.unet(x, t, encoder_hidden_states=c)).sample
            traced = m.eps(x, t, c)
            torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)
            assert torch.equal(m.eps(x, t, c), traced)
    assert m._traced[("cond" if which == "text" else "uncond")] is not None   # it really is the traced path
    convs = [w for w in m.unet.parameters() if w.dim() == 4]
    assert convs and all(w.is_contiguous() for w in convs)
