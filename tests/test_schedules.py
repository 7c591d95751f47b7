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


