"""The report's grid of bases: its timesteps, the cache that resumes and refuses other settings, warm starts."""
import json

import pytest
import torch

from latentbasis.grid import GridSpec, check_cache, compute_grid, load_grid, report_timesteps
from latentbasis.errors import LatentBasisError
from latentbasis.loading import load_model


def test_report_timesteps_descend_from_t_max_to_t_min():
    assert report_timesteps(1000, 4, 1.0, 0.1) == [999, 699, 400, 100]
    with pytest.raises(LatentBasisError):
        report_timesteps(1000, 1)
    with pytest.raises(LatentBasisError):
        report_timesteps(1000, 3, 0.2, 0.5)


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


def test_a_trajectory_that_would_not_load_back_is_not_cached(tmp_path, tiny_unet_dir):
    """The kept trajectory is read back by load_trajectory before it is renamed into the cache: a NaN (a broken
    model's) is one message now and no file, not a cache entry that stops the next run."""
    from latentbasis.grid import load_trajectory, save_trajectory
    from latentbasis.sampling import sample_trajectory

    model = load_model(str(tiny_unet_dir))
    traj = sample_trajectory(model, 0, num_steps=5, through=[500])
    good = tmp_path / "good.safetensors"
    save_trajectory(traj, good, model)
    assert torch.equal(load_trajectory(good, model).xs, traj.xs.float())
    traj.x0_hats[1, 0] = float("nan")
    with pytest.raises(LatentBasisError, match="was not written: the trajectory would not load back.*x0_hats"):
        save_trajectory(traj, tmp_path / "bad.safetensors", model)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["good.safetensors"]


def test_warm_start_changes_cost_not_the_subspace(tmp_path, tiny_unet_dir):
    """Each timestep started from the previous one's basis: every basis within 0.5 degrees of its cold start (the
    largest principal angle of the latent and of the tangent basis), at fewer evaluations in all."""
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
    assert sum(b.jvps + b.vjps for b in bw.values()) < sum(b.jvps + b.vjps for b in bc.values())
