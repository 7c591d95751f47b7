"""The similarity report: plots (PNG), numbers (JSON and CSV) and one self-contained report.html.

`run_report` is what `latentbasis report` calls: compute (or resume) the grid of bases into OUT/cache, measure,
render. Under torch.distributed every process computes its share and process 0 writes the report.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import all_or_nothing, write_text_atomic
from .data import DIGIT_WORDS, digit_caption
from .errors import LatentBasisError
from .evaluate import quality_judge, training_data
from .findings import measure, _pair_mean
from .findings import geometry_findings
from .geometry import measure_geometry
from .grid import (GridSpec, barrier, check_cache, compute_grid, distributed, load_grid, load_trajectories,
                   report_timesteps)
from . import validate as v
from .report_pages import _compare_page, _csv, findings_lines, report_plots, verdict, write_report
from .theory import data_pca
from .validate import check_output_folder, sampling_options


@dataclass
class ReportSettings:
    samples: int = 8
    timesteps: int = 10
    k: int = 8
    t_max: float = 1.0
    t_min: float = 0.1
    prompts: tuple[str, ...] = ()
    guidance: float = 3.0     # text models only
    num_steps: int = 100
    algorithm: str = "krylov"
    prompt_points: str = "own"  # text models: "own" (each prompt's trajectory) or "shared" (one x_t for all)
    geometry: bool = True       # the generation-geometry part (latentbasis.geometry), from the kept trajectories
    judge_samples: int = 64     # images per teleportation fraction (bundled models' quality judges)


def default_prompts(model) -> tuple[list[str], list[str] | None]:
    """For a conditional model with no conditions given: a class-conditional model's labels 1, 4 and 7 (as many as
    it has, no groups); a text model's three digits in two wordings each, grouped by digit."""
    if getattr(model, "conditioning", None) == "class":
        return [str(i) for i in (1, 4, 7) if i < model.num_classes] or ["0"], None

    prompts, groups = [], []
    for d in (1, 4, 7):
        for t in (1, 2):
            prompts.append(digit_caption(d, t))
            groups.append(str(d))
    return prompts, groups


def prompt_group(prompt: str) -> str | None:
    """The digit a prompt names ("the digit seven", "number 7" -> "7"), or None: prompts naming the same digit in
    different words form a group."""
    found = {str(i) for i, w in enumerate(DIGIT_WORDS) for tok in prompt.lower().split() if tok in (w, str(i))}
    return found.pop() if len(found) == 1 else None


# What a report (a comparison) writes in its folder first: an existing folder must hold one of these or nothing.
REPORT_OUTPUTS = ("cache", "report.html", "numbers.json")
COMPARE_OUTPUTS = ("[0-9]*-*", "compare.json", "compare.html")


def run_report(model, out: str | os.PathLike, settings: ReportSettings, *, progress: bool = True,
               pca=None, callback=None) -> dict | None:
    """Compute, measure and write the report into `out`; returns the numbers (None on processes other than 0).
    callback(done, total): after each basis of the grid (progress: a progress bar on stderr). settings: None for
    the defaults; every number is checked before any work (validate.sampling_options)."""
    model = v.model(model)
    settings = ReportSettings() if settings is None else settings
    if not isinstance(settings, ReportSettings):
        raise LatentBasisError(f"settings must be a ReportSettings, got {type(settings).__name__}")
    sampling_options(lambda name: f"settings.{name}", samples=settings.samples, timesteps=settings.timesteps,
                     k=settings.k, t_max=settings.t_max, t_min=settings.t_min, guidance=settings.guidance,
                     steps=settings.num_steps, judge_samples=settings.judge_samples)
    if settings.prompt_points not in ("own", "shared"):
        raise LatentBasisError(f"prompt points {settings.prompt_points!r}: choose 'own' or 'shared'")
    if settings.samples < 2:
        raise LatentBasisError(f"samples = {settings.samples}: at least 2 samples are needed to compare them")
    D = int(np.prod(model.x_shape))
    if not 1 <= settings.k <= D:
        raise LatentBasisError(f"k = {settings.k} is out of range: x_t has {D} dimensions, so 1 <= k <= {D}")
    out = check_output_folder(out, "the output folder", earlier=REPORT_OUTPUTS, what="report")
    prompts: list[str | None] = [None]
    groups = None
    if settings.prompts:
        if not model.conditional:
            raise LatentBasisError(f"{model.name} is not a text model: it takes no prompt")
        prompts = list(settings.prompts)
        groups = None if model.conditioning == "class" else [prompt_group(p) for p in prompts]
    elif model.conditional:
        prompts, groups = default_prompts(model)
    spec = GridSpec(seeds=list(range(settings.samples)),
                    timesteps=report_timesteps(model.num_train_timesteps, settings.timesteps, settings.t_max,
                                               settings.t_min),
                    k=settings.k, prompts=prompts, guidance=settings.guidance if model.conditional else 1.0,
                    num_steps=settings.num_steps, algorithm=settings.algorithm,
                    prompt_points=settings.prompt_points)
    t0 = time.perf_counter()
    with distributed() as (rank, world):
        if rank == 0:
            check_cache(model, spec, out / "cache")
        barrier()
        compute_grid(model, spec, out / "cache", rank=rank, world=world, progress=progress, callback=callback)
        barrier()
        if rank != 0:
            return None
    seconds_grid = time.perf_counter() - t0
    bases = load_grid(model, spec, out / "cache")
    data = training_data(model) if (pca is None or settings.geometry) else None
    if pca is None:
        pca = data_pca(data) if data is not None else None
    numbers = measure(model, spec, bases, pca=pca, prompt_groups=groups)
    numbers["seconds_per_basis"] = float(np.mean([b.seconds for b in bases.values()]))
    numbers["evaluations_per_basis"] = float(np.mean([b.jvps + b.vjps for b in bases.values()]))
    numbers["warm_start"] = spec.warm_start
    numbers["seconds_grid"] = seconds_grid
    if settings.geometry:
        numbers.update(geometry_part(model, spec, bases, out / "cache", data, settings.judge_samples, pca))
    write_report(numbers, out, bases=bases, pca=pca, alphas_cumprod=model.alphas_cumprod)
    return numbers


def geometry_part(model, spec, bases, cache: Path, data, judge_samples: int, pca=None) -> dict:
    """{"geometry", "geometry_findings", "seconds_geometry"} from the grid's kept trajectories of the first
    condition (latentbasis.geometry), with the latent basis v1 of each sample as the perturbation's basis
    direction."""
    t0 = time.perf_counter()
    trajs = load_trajectories(model, spec, cache, 0)
    directions = {i: {ts: bases[0, seed, ts].latent[0] for ts in spec.timesteps} for i, seed in enumerate(spec.seeds)}
    g = measure_geometry(model, trajs, data=data, pca=pca, judge=quality_judge(model), directions=directions,
                         impact_timesteps=spec.timesteps, k=spec.k, judge_samples=judge_samples,
                         prompt=trajs[0].prompt, guidance=trajs[0].guidance)
    return {"geometry": g, "geometry_findings": geometry_findings(g), "seconds_geometry": time.perf_counter() - t0}


# ---------------------------------------------------------------- several models side by side

def tangent_report(model, folder: str | os.PathLike, samples, timesteps, k, *, num_steps: int = 100,
                 most: tuple[int, int, int] = (16, 12, 12), callback=None) -> tuple[list, list[str], Path]:
    """The tangent-space part of a report (no generation geometry) in folder/report-{samples}-{timesteps}-{k}, the
    counts checked against `most` (samples, timesteps, k): (plots with captions, findings as Markdown lines,
    report.html). callback(done, total): after each basis of the grid."""
    settings = ReportSettings(samples=v.count(samples, "samples", most[0], lo=2), k=v.count(k, "k", most[2]),
                              timesteps=v.count(timesteps, "timesteps", most[1], lo=2), num_steps=num_steps,
                              geometry=False)
    out = Path(folder) / f"report-{settings.samples}-{settings.timesteps}-{settings.k}"
    numbers = run_report(model, out, settings, progress=False, callback=callback)
    return report_plots(out), findings_lines(numbers["findings"], markdown=True), out / "report.html"


def run_compare(models: list, out: str | os.PathLike, settings: ReportSettings, *, progress: bool = True) -> dict:
    """The same grid for several models (each in out/<n>-<name>/, resumable), their tangent-space distances between
    samples divided by each one's random-subspace baseline at every matched t, and the pullback paper's cross-model
    claim decided on them: the first model (the simpler data) has more consistent tangent spaces than each other
    model, i.e. the 95 % interval (resampling each model's samples) of the difference of normalised distances is
    above 0 at every t (holds), below 0 at every t (does not hold), else mixed. Writes compare.html, compare.json,
    compare.csv and compare.png."""
    if len(models) < 2:
        raise LatentBasisError("compare needs at least two models")
    out = check_output_folder(out, "the output folder", earlier=COMPARE_OUTPUTS, what="comparison")
    out.mkdir(parents=True, exist_ok=True)
    one = dataclass_replace(settings, geometry=False)
    per = []
    for i, model in enumerate(models):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(model.name).name)[:40]
        n = run_report(model, out / f"{i}-{safe}", one, progress=progress)
        base = n["random_baseline"]["tangent"]["geodesic_mean"]
        mats = [np.asarray(m[0]) / base for m in n["sample_distance"]["tangent_matrices"]]   # first condition
        per.append({"model": model.name, "t_fractions": n["t_fractions"], "baseline": base, "matrices": mats,
                    "normalised": [float(d / base) for d in n["sample_distance"]["tangent_mean"]],
                    "confounds": _confounds(model, n)})
    rows, verdicts = [], []
    for other in per[1:]:
        diffs = []
        for ti in range(len(per[0]["t_fractions"])):
            a, b = per[0]["matrices"][ti], other["matrices"][ti]
            d = other["normalised"][ti] - per[0]["normalised"][ti]
            lo, hi = _difference_interval(a, b, seed=ti)
            diffs.append((d, lo, hi))
            rows.append([other["model"], per[0]["t_fractions"][ti], per[0]["normalised"][ti],
                         other["normalised"][ti], d, lo, hi])
        above = all(lo > 0 for _, lo, _ in diffs)
        below = all(hi < 0 for _, _, hi in diffs)
        holds = True if above else False if below else None
        verdicts.append({"claim": f"{per[0]['model']} (simpler data) has more consistent tangent spaces than "
                                  f"{other['model']} at every matched t (distances / random baseline)",
                         "holds": holds, "judged": True, "verdict": verdict({"holds": holds}),
                         "evidence": "; ".join(f"t = {t:.2f}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for t, (d, lo, hi)
                                               in zip(per[0]["t_fractions"], diffs))})
    result = {"models": [p["model"] for p in per], "t_fractions": per[0]["t_fractions"],
              "normalised": {p["model"]: p["normalised"] for p in per},
              "baselines": {p["model"]: p["baseline"] for p in per},
              "confounds": {p["model"]: p["confounds"] for p in per}, "findings": verdicts}
    with all_or_nothing():          # the comparison's files together, or an earlier comparison left whole
        write_text_atomic(out / "compare.json", json.dumps(result, indent=1))
        _csv(out / "compare.csv", ["model", "t", "first_normalised", "model_normalised", "difference", "low95",
                                   "high95"], rows)
        _compare_page(result, out)
    return result


def _difference_interval(a: np.ndarray, b: np.ndarray, seed: int = 0, draws: int = 2000) -> tuple[float, float]:
    """95 % percentile interval of mean pair distance(b) - mean pair distance(a), the samples of each model resampled
    independently (with replacement; pairs of one sample drawn twice left out)."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(draws):
        ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        v = _pair_mean([b], ib) - _pair_mean([a], ia)
        if v == v:
            vals.append(v)
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def _confounds(model, n: dict) -> dict:
    """What else differs between the models besides their data (written on the compare page)."""
    return {"x": "x".join(map(str, model.x_shape)), "resolution": model.x_shape[-1], "channels": model.x_shape[0],
            "architecture": type(model.denoiser).__name__, "family": model.family,
            "schedule": "flow matching" if model.flow else "variance preserving", "h dimensions": n["tangent_dim"],
            "x dimensions": n["latent_dim"], "random baseline": round(n["random_baseline"]["tangent"]["geodesic_mean"], 3)}
