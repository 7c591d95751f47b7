"""Analysis: the grid of bases (cache, resume), the measurements on known inputs, and the theory curves."""
import json

import numpy as np
import pytest
import torch

from latentbasis.analysis import (GridSpec, check_cache, compute_grid, data_pca, gaussian_gains, half_signal_timestep,
                                  load_grid, low_frequency_fraction, measure, radial_power, report_timesteps)
from latentbasis.errors import LatentBasisError
from latentbasis.families.gaussian import GaussianModel, ddpm_linear_alphas_cumprod
from latentbasis.loading import load_model


def test_report_timesteps_descend_from_t_max_to_t_min():
    assert report_timesteps(1000, 4, 1.0, 0.1) == [999, 699, 400, 100]
    with pytest.raises(LatentBasisError):
        report_timesteps(1000, 1)
    with pytest.raises(LatentBasisError):
        report_timesteps(1000, 3, 0.2, 0.5)


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


def test_resolution_chromatography_matches_theory_md():
    ab = ddpm_linear_alphas_cumprod()
    assert [half_signal_timestep(ab, m) for m in (1, 2, 4, 8, 16, 32)] == [259, 396, 527, 641, 740, 827]
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd = torch.cumprod(1 - betas, 0)
    assert [half_signal_timestep(sd, m) for m in (1, 2, 4, 8, 16)] == [354, 563, 745, 892, None]


def test_data_pca_recovers_a_known_covariance():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    lam = torch.tensor([9.0, 4, 1, 0.5, 0.2, 0.1], dtype=torch.float64)
    X = (torch.randn(200000, 6, generator=g, dtype=torch.float64) * lam.sqrt()) @ U.T
    got_lam, comps = data_pca(X.reshape(-1, 1, 2, 3))
    np.testing.assert_allclose(got_lam.numpy(), lam.numpy(), rtol=0.02)
    assert abs(float(comps[0].reshape(-1) @ U[:, 0])) > 0.999


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


def test_the_cache_resumes_and_refuses_other_settings(tmp_path, tiny_unet_dir):
    model = load_model(str(tiny_unet_dir))
    spec = GridSpec(seeds=[0, 1], timesteps=[999, 500, 100], k=3, num_steps=10)
    cache = check_cache(model, spec, tmp_path / "cache")
    assert compute_grid(model, spec, cache, progress=False) == 6
    first = load_grid(model, spec, cache)
    assert compute_grid(model, spec, cache, progress=False) == 0              # all there: nothing recomputed
    victim = cache / "p0" / "s1" / "t0500.safetensors"
    victim.unlink()
    with pytest.raises(LatentBasisError, match="missing"):
        load_grid(model, spec, cache)
    assert compute_grid(model, spec, cache, progress=False) == 1               # an interrupted run resumes
    again = load_grid(model, spec, cache)
    for key in first:
        torch.testing.assert_close(first[key].tangent, again[key].tangent, rtol=0, atol=0)
    with pytest.raises(LatentBasisError, match="other settings"):
        check_cache(model, GridSpec(seeds=[0, 1], timesteps=[999, 500, 100], k=4, num_steps=10), cache)
    assert json.loads((cache / "manifest.json").read_text())["k"] == 3         # the refused run wrote nothing


def test_warm_start_changes_cost_not_the_subspace(tmp_path, tiny_unet_dir):
    """Each timestep started from the previous one's basis: every basis within 0.5 degrees of its cold start (the
    largest principal angle of the latent and of the tangent basis), at no more evaluations in all."""
    from latentbasis import principal_angles

    model = load_model(str(tiny_unet_dir))
    kw = dict(seeds=[0, 1], timesteps=[999, 900, 800, 700], k=3, num_steps=10)
    warm, cold = GridSpec(**kw), GridSpec(**kw, warm_start=False)
    compute_grid(model, warm, tmp_path / "w", progress=False)
    compute_grid(model, cold, tmp_path / "c", progress=False)
    bw, bc = load_grid(model, warm, tmp_path / "w"), load_grid(model, cold, tmp_path / "c")
    assert len(bw) == len(bc) == 8
    for key in bw:
        torch.testing.assert_close(bw[key].singular_values, bc[key].singular_values, rtol=2e-3, atol=0)
        for part in ("latent", "tangent"):
            angle = float(principal_angles(getattr(bw[key], part), getattr(bc[key], part)).max().rad2deg())
            assert angle < 0.5, (key, part, angle)
    assert sum(b.jvps + b.vjps for b in bw.values()) <= sum(b.jvps + b.vjps for b in bc.values())


def test_a_trend_claim_needs_end_points_and_rank_correlation_to_agree():
    from latentbasis.analysis import _rank_correlation, _trend

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
