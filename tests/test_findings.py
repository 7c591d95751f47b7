"""Measurements over a grid of bases on known inputs (frequency content, the Gaussian model where theory.md says what
they are), the trend rule of the findings, and the report on the Gaussian model."""
import json

import numpy as np
import pytest
import torch

from latentbasis.findings import low_frequency_fraction, measure, radial_power
from latentbasis.grid import GridSpec, check_cache, compute_grid, load_grid, report_timesteps
from latentbasis.theory import gaussian_gains
from latentbasis.families.gaussian import GaussianModel


def test_frequency_content_of_known_images():
    const = torch.ones(1, 1, 16, 16)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 2.0 - 1  # Nyquist in x and y
    slow = torch.cos(2 * np.pi * torch.arange(16) / 16)[None, :].expand(16, 16)       # 1/16 cycles per pixel
    fast = torch.cos(2 * np.pi * 6 * torch.arange(16) / 16)[None, :].expand(16, 16)   # 6/16 cycles per pixel
    v = torch.stack([const[0], checker[None], slow[None], fast[None]])
    np.testing.assert_allclose(low_frequency_fraction(v, 0.25), [1, 0, 1, 0], atol=1e-12)
    f, p = radial_power(v)
    assert f[-1] == 0.5 and np.allclose(p.sum(1), 1)
    assert p[0, 0] == pytest.approx(1) and p[2, 1] == pytest.approx(1) and p[3, 6] == pytest.approx(1)


def _gaussian_grid(tmp_path, **kw):
    model = GaussianModel.random((1, 4, 4), h_dim=24, seed=1)
    spec = GridSpec(seeds=[0, 1, 2], timesteps=report_timesteps(1000, 5, 0.95, 0.05), k=4, num_steps=20, **kw)
    check_cache(model, spec, tmp_path / "cache")
    compute_grid(model, spec, tmp_path / "cache", progress=False)
    return model, spec, load_grid(model, spec, tmp_path / "cache")


def test_on_the_gaussian_model_the_measurements_show_what_theory_says(tmp_path):
    """theory.md: across-timestep distance 0, spectrum g_i(t), top latent basis = top data principal components."""
    model, spec, bases = _gaussian_grid(tmp_path)
    n = measure(model, spec, bases, pca=(model.lam, model.U.T.reshape(-1, *model.x_shape)))
    assert np.abs(np.array(n["timestep_distance"]["mean"])).max() < 1e-2
    assert max(n["gaussian"]["latent_to_data_pcs_mean"]) < 1e-2
    assert max(n["gaussian"]["spectrum_error"]) < 1e-4
    for ts, s in zip(spec.timesteps, n["spectrum"]["mean"]):
        np.testing.assert_allclose(s, model.gains(ts)[:4].numpy(), rtol=1e-4)
    assert max(n["sample_distance"]["tangent_mean"]) < 1e-2   # J does not depend on x_t: every sample agrees
    g = gaussian_gains(model.alphas_cumprod, model.lam[:2], [999, 0])
    np.testing.assert_allclose(g[1], model.gains(0)[:2].numpy())


def test_a_trend_claim_needs_end_points_and_rank_correlation_to_agree():
    from latentbasis.findings import _rank_correlation, _trend

    t = [1.0, 0.7, 0.4, 0.1]
    assert _trend(3.0, 1.0, _rank_correlation(t, [3, 2.5, 1.5, 1]), falls=True) is True
    assert _trend(1.0, 3.0, _rank_correlation(t, [1, 2, 2.5, 3]), falls=True) is False
    assert _trend(1.3, 1.2, _rank_correlation(t, [1.3, 1.9, 1.8, 1.2]), falls=True) is None   # up, then down
    assert _trend(1.0, 3.0, _rank_correlation(t, [1, 2, 2.5, 3]), falls=False) is True
    assert _trend(0.12900, 0.12899, 0.9, falls=True) is None                                     # rounding only


def test_the_report_on_the_gaussian_model_shows_what_theory_says(tmp_path):
    """The whole report (run_report: grid, cache, measurements, page) on the closed-form model."""
    from latentbasis.report import ReportSettings, run_report

    model = GaussianModel.random((1, 4, 4), h_dim=24, seed=1)
    pca = (model.lam, model.U.T.reshape(-1, *model.x_shape))
    n = run_report(model, tmp_path / "g", ReportSettings(samples=3, timesteps=4, k=4, t_max=0.95, t_min=0.05,
                                                         num_steps=20), progress=False, pca=pca)
    saved = json.loads((tmp_path / "g" / "numbers.json").read_text())
    assert saved["timesteps"] == n["timesteps"]
    assert np.abs(np.array(saved["timestep_distance"]["mean"])).max() < 1e-2
    assert max(saved["gaussian"]["latent_to_data_pcs_mean"]) < 1e-2 and max(saved["gaussian"]["spectrum_error"]) < 1e-4
    assert "latent vs data PCs" in (tmp_path / "g" / "report.html").read_text()
