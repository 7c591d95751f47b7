"""`latentbasis report`: the files it writes, resuming, prompts, bad input, and the 2-process (gloo) run."""
import base64
import json
import os
import subprocess
import sys

import pytest

from latentbasis.cli import main
from latentbasis.report import prompt_group, verdict

SMALL = ["--samples", "2", "--timesteps", "3", "--k", "3", "--steps", "10", "--judge-samples", "8", "--quiet"]


def _numbers(folder):
    """numbers.json without its timings (the only numbers that differ between runs)."""
    def drop(v):
        if isinstance(v, dict):
            return {k: drop(x) for k, x in v.items() if not k.startswith("seconds")}
        return [drop(x) for x in v] if isinstance(v, list) else v

    return drop(json.loads((folder / "numbers.json").read_text()))


@pytest.fixture(scope="module")
def report(tiny_unet_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "r"
    assert main(["report", "--model", str(tiny_unet_dir), *SMALL, "--out", str(out)]) == 0
    return out


def test_report_writes_a_self_contained_page_numbers_and_plots(report):
    page = (report / "report.html").read_text()
    assert "src=\"http" not in page and "<script" not in page                 # nothing to fetch: readable offline
    pngs = [p.split('"')[0] for p in page.split('src="data:image/png;base64,')[1:]]
    assert len(pngs) >= 6 and all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for name in ("spectrum", "sample_distance", "timestep_distance", "frequency", "theory", "directions"):
        assert (report / f"{name}.png").stat().st_size > 1000
    n = _numbers(report)
    assert n["timesteps"] == [999, 549, 100] and len(n["spectrum"]["mean"]) == 3
    assert len(n["timestep_distance"]["mean"]) == 3 and n["timestep_distance"]["mean"][0][0] == 0
    assert {f["claim"][:20] for f in n["findings"]} and all(f["holds"] in (True, False, None) for f in n["findings"])
    for f in n["findings"]:                                                  # each finding's verdict is on the page
        assert verdict(f) in page
        assert f["verdict"] == "too few samples to judge" and not f["judged"] and f["holds"] is None
        assert "needs at least 4 samples and 4 timesteps" in f["evidence"]
    rows = (report / "per_timestep.csv").read_text().splitlines()
    assert rows[0].startswith("timestep,t,tangent_distance_mean") and len(rows) == 4
    shares = n["description_shares"]                # what the directions do, per timestep, adding up to 1
    assert set(shares) == {"motion", "level and colour", "coarse", "mid", "fine"}
    assert all(abs(sum(shares[g][i] for g in shares) - 1) < 1e-6 for i in range(3))
    assert "What the directions do" in page and len((report / "descriptions.csv").read_text().splitlines()) == 4


def test_a_second_run_reuses_the_cache(report, tiny_unet_dir, capsys):
    before = _numbers(report)
    stamp = {p: p.stat().st_mtime_ns for p in (report / "cache").rglob("*.safetensors")}
    assert main(["report", "--model", str(tiny_unet_dir), *SMALL, "--out", str(report)]) == 0
    assert {p: p.stat().st_mtime_ns for p in (report / "cache").rglob("*.safetensors")} == stamp
    assert _numbers(report) == before


def test_a_rerun_that_cannot_write_its_page_leaves_the_earlier_report_whole(report, tiny_unet_dir, capsys,
                                                                             monkeypatch):
    """A full disk on the page, the last file a report writes: one line, and the folder's numbers, tables and plots
    are the earlier run's byte for byte (not new numbers beside an old page)."""
    from pathlib import Path

    def files():
        return {p: p.read_bytes() for p in sorted(report.iterdir()) if p.is_file()}

    before = files()
    real = Path.write_text

    def full(self, *a, **k):
        if "report.html" in self.name:
            raise OSError(28, "No space left on device")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    capsys.readouterr()
    assert main(["report", "--model", str(tiny_unet_dir), *SMALL, "--out", str(report)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "report.html" in err[0], err
    assert files() == before


def test_prompts_of_a_text_model(tiny_sd_dir, tmp_path):
    out = tmp_path / "r"
    prompts = ["the digit one", "number one", "the digit two", "number two"]
    argv = ["report", "--model", str(tiny_sd_dir), *SMALL, "--out", str(out)]
    for p in prompts:
        argv += ["--prompt", p]
    assert main(argv) == 0
    n = _numbers(out)
    pd = n["prompt_distance"]
    assert pd["groups"] == ["1", "1", "2", "2"] and len(pd["same_group_mean"]) == 3
    assert len(pd["matrix"][0]) == 4
    claims = " ".join(f["claim"] for f in n["findings"])
    assert "same meaning" in claims and "depends less on the prompt" in claims
    assert (out / "prompt_distance.png").exists() and (out / "prompt_distance.csv").exists()


def test_prompt_groups():
    assert prompt_group("the digit seven") == prompt_group("number 7") == "7"
    assert prompt_group("a cat") is None and prompt_group("one or two") is None


@pytest.mark.parametrize("extra, message", [
    (["--samples", "1"], "at least 2 samples"),
    (["--k", "1000"], "out of range"),
    (["--t-min", "0.8", "--t-max", "0.5"], "t_min < t_max"),
    (["--prompt", "the digit one"], "not a text model"),
])
def test_bad_input_one_line_and_no_output(extra, message, tiny_unet_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", "--model", str(tiny_unet_dir), *SMALL, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_two_gloo_processes_give_the_single_process_numbers(report, tiny_unet_dir, tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "latentbasis.cli", "report", "--model", str(tiny_unet_dir), *SMALL, "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    made = sorted(p.relative_to(out / "cache") for p in (out / "cache").rglob("t[0-9]*.safetensors"))
    assert len(made) == 6 and len(list((out / "cache").rglob("trajectory.safetensors"))) == 2
    single, dist = _numbers(report), _numbers(out)
    assert single.keys() == dist.keys()

    def close(a, b):
        if isinstance(a, dict):
            return all(close(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
        if isinstance(a, float):
            return abs(a - b) <= 1e-4 * max(1.0, abs(a))
        return a == b

    assert close(single, dist)


def test_a_trend_is_judged_only_with_enough_evidence():
    """The rule fixed in findings.findings: at least 4 samples and 4 timesteps, and a bootstrap interval of the
    end-point change that excludes 0 on the claimed side."""
    import numpy as np

    from latentbasis.findings import findings

    def numbers(n_samples, n_t, spread):
        rng = np.random.default_rng(0)
        tf = list(np.linspace(1.0, 0.1, n_t))
        mats = []
        for i in range(n_t):   # distances grow as t falls, with per-pair noise `spread`
            m = 1.0 + i + spread * rng.standard_normal((n_samples, n_samples))
            m = (m + m.T) / 2
            np.fill_diagonal(m, 0)
            mats.append([m.tolist()])
        mean = [float(np.mean(np.asarray(m[0])[np.triu_indices(n_samples, 1)])) for m in mats]
        low = [[list(0.9 - 0.05 * i + 0.001 * rng.standard_normal(n_samples))] for i in range(n_t)]
        return {"t_fractions": tf, "seeds": list(range(n_samples)), "timesteps": list(range(n_t)),
                "sample_distance": {"tangent_mean": mean, "tangent_matrices": mats},
                "random_baseline": {"tangent": {"geodesic_mean": 9.0}}, "low_frequency_cutoff": 0.25,
                "frequency": {"low_fraction_mean": [float(np.mean(x)) for x in low], "low_fraction_per_sample": low}}

    assert [f["verdict"] for f in findings(numbers(8, 5, 0.1))] == ["holds", "holds"]
    few = findings(numbers(3, 5, 0.1))
    assert all(f["verdict"] == "too few samples to judge" and "with 4 samples" in f["evidence"] for f in few)
    assert findings(numbers(8, 3, 0.1))[0]["verdict"] == "too few samples to judge"
    noisy = findings(numbers(4, 4, 30.0))[0]            # the end points differ, but the interval spans 0
    assert noisy["verdict"] == "mixed (no clear trend)" and "95 % interval" in noisy["evidence"]


def test_the_cost_line_states_evaluations_per_basis_and_the_warm_start(report):
    """The page's cost line: seconds and network evaluations (J v and J^T u) per basis, their mean over the grid's
    basis files, and that each timestep was warm-started from the previous one."""
    from latentbasis.basisfile import load_basis

    n = json.loads((report / "numbers.json").read_text())
    files = [report / "cache" / "p0" / f"s{seed}" / f"t{ts:04d}.safetensors" for seed in n["seeds"]
             for ts in n["timesteps"]]        # the grid's bases (the cache also holds the geometry part's)
    evals = [(b.jvps + b.vjps) for b in (load_basis(f) for f in files)]
    assert n["evaluations_per_basis"] == pytest.approx(sum(evals) / len(evals)) and min(evals) > 0
    page = (report / "report.html").read_text()
    assert n["warm_start"] is True and "warm-started from the previous one" in page
    assert f"{n['evaluations_per_basis']:.1f} network\nevaluations (J v and J^T u) per basis" in page


def test_the_report_has_a_generation_geometry_part(report):
    n = _numbers(report)
    g = n["geometry"]
    assert len(g["top2_share"]) == 2 and 0 < g["top2_share"][0] <= 1
    assert g["perturbation"]["timesteps"] == [999, 549, 100]       # the report's timesteps (not 0)
    claims = [f["claim"] for f in n["geometry_findings"]]
    assert any("low-dimensional" in c for c in claims) and any("quasi-linear" in c for c in claims)
    assert all(f["verdict"] in ("holds", "does not hold", "mixed (no clear trend)") for f in n["geometry_findings"])
    page = (report / "report.html").read_text()
    assert "Generation geometry" in page and (report / "geometry.png").stat().st_size > 10000
    assert (report / "geometry.csv").read_text().startswith("timestep,t,chord_deviation_mean")


def test_compare_two_models(tiny_unet_dir, other_unet_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--model", str(tiny_unet_dir), "--model", str(other_unet_dir), "--samples", "4",
                 "--timesteps", "2", "--k", "2", "--steps", "6", "--quiet", "--out", str(out)]) == 0
    r = json.loads((out / "compare.json").read_text())
    assert len(r["models"]) == 2 and len(r["findings"]) == 1
    f = r["findings"][0]
    assert f["verdict"] in ("holds", "does not hold", "mixed (no clear trend)") and "95 %" not in f["evidence"]
    assert "[" in f["evidence"] and "architecture" in (out / "compare.html").read_text()
    assert (out / "compare.csv").read_text().count("\n") == 1 + 2
    assert main(["compare", "--model", str(tiny_unet_dir), "--out", str(tmp_path / "c2")]) == 2
    assert "at least two models" in capsys.readouterr().err


def test_a_flow_model_report_has_no_gaussian_comparison_where_there_is_no_signal(tmp_path):
    """The bundled flow transformer: at t = T a flow model's x_t holds no signal (alpha = 0), so the Gaussian overlay
    has nothing to compare there: left empty, with no division by zero."""
    import warnings

    out = tmp_path / "r"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["report", "--model", "digits-flow", *SMALL, "--out", str(out)]) == 0
    rows = [r.split(",") for r in (out / "gaussian.csv").read_text().splitlines()]
    assert rows[1][0] == "999" and rows[1][3] == "" and rows[2][3] != ""
