"""The pure schedule functions: DDIM against theory.md's exact flow-map values, and the prediction types."""
import pytest
import torch

from latentbasis import GaussianModel, LatentBasisError
from latentbasis.sampling import ddim_timesteps
from latentbasis.schedules import (PREDICTION_TYPES, clip_x0, ddim_step, from_eps_x0, to_eps_x0,
                                   vp_alphas_cumprod)


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




@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_prediction_types_round_trip(prediction_type):
    """to_eps_x0 inverts from_eps_x0 at every level, and x = alpha x0 + sigma eps holds (VP levels for the VP
    types, flow levels alpha = 1 - sigma for the velocity)."""
    g = torch.Generator().manual_seed(0)
    eps, x0 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    for level in (0.999, 0.5, 0.01):
        lv = torch.tensor(level, dtype=torch.float64)
        a, s = ((1 - lv), lv) if prediction_type == "flow" else (lv.sqrt(), (1 - lv).sqrt())
        x = a * x0 + s * eps
        e2, x2 = to_eps_x0(from_eps_x0(eps, x0, a, s, prediction_type), x, a, s, prediction_type)
        assert torch.allclose(e2, eps, atol=1e-10) and torch.allclose(x2, x0, atol=1e-10)


def test_v_prediction_is_the_salimans_ho_velocity_and_flow_the_rectified_one():
    a, s = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    eps, x0 = torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    assert float(from_eps_x0(eps, x0, a, s, "v_prediction")) == pytest.approx(0.6 * 1.0 - 0.8 * 2.0)
    assert float(from_eps_x0(eps, x0, 1 - s, s, "flow")) == pytest.approx(1.0 - 2.0)


def test_one_step_of_a_flow_model_is_the_euler_step():
    """x_b = alpha_b x0 + sigma_b eps with (eps, x0) from the velocity is x_a + (s_b - s_a) v."""
    from latentbasis.schedules import ddim_update

    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    sa, sb = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.45, dtype=torch.float64)
    eps, x0 = to_eps_x0(v, x, 1 - sa, sa, "flow")
    assert torch.allclose(ddim_update(eps, x0, 1 - sb, sb), x + (sb - sa) * v, atol=1e-12)


def test_unknown_prediction_type_is_refused():
    with pytest.raises(LatentBasisError, match="not supported"):
        GaussianModel.random(prediction_type="flow")      # a velocity belongs to a flow schedule, not to VP
    with pytest.raises(LatentBasisError, match="not supported"):
        GaussianModel.random(prediction_type="x_start")


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_the_schedule_is_the_models_own(schedule):
    """alphas_cumprod from a scheduler config is what diffusers' own schedulers compute from it."""
    from diffusers import DDPMScheduler

    cfg = {"num_train_timesteps": 1000, "beta_schedule": schedule, "beta_start": 0.00085, "beta_end": 0.012}
    ref = DDPMScheduler(**cfg).alphas_cumprod.double()
    assert torch.allclose(vp_alphas_cumprod(cfg), ref, atol=1e-7)
    assert not torch.allclose(vp_alphas_cumprod({**cfg, "beta_schedule": "linear", "beta_start": 1e-4,
                                                 "beta_end": 0.02}), ref) or schedule == "linear"


@pytest.mark.parametrize("cfg", [{"beta_schedule": "cubic"}, {"beta_start": 0.5, "beta_end": 2.0},
                                 {"num_train_timesteps": 1}])
def test_a_degenerate_schedule_is_one_message(cfg):
    with pytest.raises(LatentBasisError, match="schedule"):
        vp_alphas_cumprod(cfg)


def test_clip_x0_is_a_no_op_inside_the_range_and_keeps_the_line():
    ab = torch.tensor(0.5, dtype=torch.float64)
    x, eps = torch.tensor([0.1, 3.0], dtype=torch.float64), torch.tensor([0.0, 0.0], dtype=torch.float64)
    e, x0 = clip_x0(x, eps, x / ab.sqrt(), ab.sqrt(), (1 - ab).sqrt(), 1.0)
    assert float(x0[0]) == pytest.approx(0.1 / 0.5 ** 0.5) and float(x0[1]) == 1.0
    assert torch.allclose(ab.sqrt() * x0 + (1 - ab).sqrt() * e, x)      # still on the line through x


@pytest.mark.parametrize("lam", [10.0, 0.01])
def test_the_flow_sampler_follows_the_gaussian_flow_map(lam):
    """A flow-matching Gaussian (x_s = (1 - s) x0 + s eps) with its optimal velocity v = c (1 - g) / s along u
    (theory.md: eigenvalues (1 - g_i) / sigma). Euler over the 1000 training levels multiplies a unit coordinate at
    s = 1 by prod (1 + (s_b - s_a)(1 - g_a) / s_a), exactly (to 1e-10), and that approaches the continuous flow map
    sqrt(lam / w(1)) = sqrt(lam), w(s) = (1 - s)^2 lam + s^2 (to 1 %: Euler is first order)."""
    from latentbasis.sampling import ddim_walk, predict_x0

    g = GaussianModel.random(x_shape=(1,), h_dim=1, lam=[lam], seed=0, flow=True)
    g.mu.zero_()
    grid = list(range(999, -1, -1))
    end = float(predict_x0(g, ddim_walk(g, torch.ones(1, 1, dtype=torch.float64), grid)[-1], 0)[0, 0])
    s = torch.cat([g.sigmas.flip(0), torch.zeros(1, dtype=torch.float64)])      # 1, ..., s_0, then the image
    gain = (1 - s[:-1]) * lam / ((1 - s[:-1]) ** 2 * lam + s[:-1] ** 2)
    exact = float(torch.prod(1 + (s[1:] - s[:-1]) * (1 - gain) / s[:-1]))
    assert end == pytest.approx(exact, rel=1e-6)          # the states are float32 between steps
    assert end == pytest.approx(lam ** 0.5, rel=1e-2)
