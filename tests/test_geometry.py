"""Generation geometry against the Gaussian model's closed forms (theory.md), and the pure measurements."""
import numpy as np
import pytest
import torch

from latentbasis import GaussianModel
from latentbasis.geometry import (chord_deviation, commit_timesteps, gaussian_trajectory, optimal_denoiser,
                                  perturbation_impact, plane_share, predicted_commit_timesteps, settle_index,
                                  top2_variance_share)
from latentbasis.sampling import sample_trajectory


@pytest.fixture(scope="module", params=["vp", "flow"])
def gauss(request):
    lam = torch.tensor([9.0, 2.0, 0.5, 0.1, 0.02, 0.005], dtype=torch.float64)
    g = GaussianModel.random(x_shape=(6,), h_dim=6, lam=lam, seed=4, flow=request.param == "flow")
    return g


def test_the_sampler_follows_the_closed_form_trajectory(gauss):
    tr = sample_trajectory(gauss, seed=2, num_steps=1000)
    G = gaussian_trajectory(tr.xs[0], tr.timesteps, gauss.alphas, gauss.sigmas, gauss.mu, gauss.U, gauss.lam)
    rel = (tr.xs.double() - G).norm(dim=1) / G.norm(dim=1)
    assert float(rel.max()) < 2e-2                        # Euler / DDIM over 1000 levels: first-order error only


def test_measured_commit_times_are_the_gaussian_ones(gauss):
    """x0_hat along u_i comes 1 / sqrt(2) of its way exactly where sigma^2 / alpha^2 = lam_i (theory.md)."""
    tr = sample_trajectory(gauss, seed=3, num_steps=1000)
    comps = gauss.U.T.reshape(6, 6)
    meas = commit_timesteps(tr.x0_hats, tr.timesteps, gauss.mu, comps, 6)
    pred = predicted_commit_timesteps(gauss.alphas, gauss.sigmas, gauss.lam)
    assert np.all(np.abs(meas - pred) <= 2), (meas, pred)          # to the grid's resolution
    assert np.all(np.diff(pred) < 0)                               # high variance commits earlier (larger t)


def test_perturbation_impact_is_the_flow_map_gain(gauss):
    """A change along u_i at t reaches x_0 multiplied by sqrt(lam_i / v_i(t)), v_i = alpha^2 lam_i + sigma^2."""
    tr = sample_trajectory(gauss, seed=1, num_steps=1000)
    ts = [900, 500, 100]
    for i in (0, 3):
        u = gauss.U[:, i].float()
        imp = perturbation_impact(gauss, tr, ts, {t: u for t in ts}, delta=0.1)["basis"]
        a, s = gauss.alphas[ts], gauss.sigmas[ts]
        gain = torch.sqrt(gauss.lam[i] / (a ** 2 * gauss.lam[i] + s ** 2))
        np.testing.assert_allclose(imp, gain.numpy(), rtol=2e-2)


def test_perturbation_impact_from_the_kept_x0_hat_equals_re_running_x_t(gauss):
    """The unperturbed x0 is the trajectory's own final x0_hat where it was kept; without it (an inversion's
    trajectory keeps none) x_t is re-run: the same gains, random and basis, up to rounding."""
    import dataclasses

    tr = sample_trajectory(gauss, seed=6, num_steps=200)
    ts = [tr.timesteps[20], tr.timesteps[100], tr.timesteps[180]]
    dirs = {t: gauss.U[:, 1].float() for t in ts[:2]}                       # no basis direction at the last one
    kept = perturbation_impact(gauss, tr, ts, dirs, delta=0.1, seed=3)
    rerun = perturbation_impact(gauss, dataclasses.replace(tr, x0_hats=None), ts, dirs, delta=0.1, seed=3)
    np.testing.assert_allclose(kept["random"], rerun["random"], rtol=1e-5)
    np.testing.assert_allclose(kept["basis"][:2], rerun["basis"][:2], rtol=1e-5)
    assert np.isnan(kept["basis"][2]) and np.isnan(rerun["basis"][2]) and min(kept["random"]) > 0


def test_a_two_component_gaussian_moves_in_a_plane():
    g = GaussianModel.random(x_shape=(2,), h_dim=2, lam=[4.0, 0.1], seed=0)
    g.mu.zero_()
    tr = sample_trajectory(g, seed=5, num_steps=200)
    assert top2_variance_share(tr.xs) == pytest.approx(1.0) and plane_share(tr.xs) == pytest.approx(1.0)


def test_pure_measurements_on_known_inputs():
    line = torch.linspace(0, 1, 11)[:, None] * torch.tensor([[1.0, 2.0, 3.0]])
    assert chord_deviation(line).max() < 1e-6                                # a straight path (float32)
    bent = line.clone()
    bent[5, 0] += 1.0
    assert chord_deviation(bent).max() > 0.2
    assert settle_index(np.array([5.0, 3.0, 1.2, 1.0, 1.0]), 1.0, 1.0) == 2  # |dev| <= 0.29 from index 2 on
    data = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(optimal_denoiser(torch.tensor([0.9, 0.0]), 1.0, 0.05, data).numpy(), [1, 0],
                               atol=1e-6)                                     # a mean shift onto the nearest image
