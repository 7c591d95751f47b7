"""The DDIM sampler: seeded, through the t asked for, every prediction type, against diffusers' own pipelines."""
import pytest
import torch

from latentbasis import load_model, sample_to


def test_pixel_models_clip_as_their_scheduler_config_says(tiny_unet_dir, tiny_sd_dir):
    m = load_model(str(tiny_unet_dir))
    assert m.clip_sample == float(m.scheduler_config["clip_sample_range"])   # diffusers' DDPM default: clip to 1
    from latentbasis.families import UNetModel

    cfg = dict(m.scheduler_config, clip_sample=False)
    assert UNetModel(m.unet, cfg, name="x", model_hash="x").clip_sample is None
    assert load_model(str(tiny_sd_dir)).clip_sample is None      # Stable Diffusion's config: latents are not clamped


def test_sample_to_is_seeded_and_starts_from_noise(tiny_unet_dir):
    m = load_model(str(tiny_unet_dir))
    a, b = sample_to(m, 3, t=0.5, num_steps=10), sample_to(m, 3, t=0.5, num_steps=10)
    assert a.shape == m.x_shape and torch.equal(a, b)
    assert not torch.equal(a, sample_to(m, 4, t=0.5, num_steps=10))
    xT = torch.randn(m.x_shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample_to(m, 3, t=1.0), xT)


def test_sample_with_prompt(tiny_sd_dir):
    """The prompt conditions the sample: two prompts give different x_t from the same seed, one prompt the same
    x_t twice, and without guidance the unconditional one."""
    m = load_model(str(tiny_sd_dir))
    x = sample_to(m, 0, t=0.5, num_steps=6, prompt="a cat", guidance=3.0)
    assert x.shape == (4, 8, 8) and torch.isfinite(x).all()
    assert torch.equal(x, sample_to(m, 0, t=0.5, num_steps=6, prompt="a cat", guidance=3.0))
    dog = sample_to(m, 0, t=0.5, num_steps=6, prompt="a dog", guidance=3.0)
    assert (x - dog).abs().max() > 1e-3 * x.abs().max()
    assert not torch.equal(x, sample_to(m, 0, t=0.5, num_steps=6, guidance=3.0))


@pytest.mark.parametrize("which", ["pixel", "text"])
def test_the_traced_sampling_unet_gives_the_eager_outputs(which, tiny_unet_dir, tiny_sd_dir):
    """DiffusionModel.eps runs a torch.jit trace of a channels-last copy of the U-Net: the eager forward's numbers up
    to rounding, any batch, the same bits on every call; the eager U-Net (used by the feature map) is untouched."""
    from latentbasis.loading import load_model

    m = load_model(str(tiny_unet_dir if which == "pixel" else tiny_sd_dir))
    cond = m.encode_prompt("the digit one") if which == "text" else None
    kw = cond.batch(1) if cond is not None else {}
    for b in (1, 3):
        x = torch.randn(b, *m.x_shape, generator=torch.Generator().manual_seed(b))
        t = torch.full((b,), 321, dtype=torch.long)
        with torch.no_grad():
            eager = m.unet(x, t, **{k: v.expand(b, -1, -1) for k, v in kw.items()}).sample
            traced = m.network(x, t, cond)
            torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)
            assert torch.equal(m.network(x, t, cond), traced)
    assert all(net is not None for net in m._traced.values())   # it really is the traced path
    convs = [w for w in m.unet.parameters() if w.dim() == 4]
    assert convs and all(w.is_contiguous() for w in convs)
