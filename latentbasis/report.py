"""The similarity report: plots (PNG), numbers (JSON and CSV) and one self-contained report.html.

`run_report` is what `latentbasis report` calls: compute (or resume) the grid of bases into OUT/cache, measure,
render. Under torch.distributed every process computes its share and process 0 writes the report.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_text_atomic
from .errors import LatentBasisError


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


def default_prompts(model) -> tuple[list[str], list[str] | None]:
    """For a conditional model with no conditions given: a class-conditional model's labels 1, 4 and 7 (as many as
    it has, no groups); a text model's three digits in two wordings each, grouped by digit."""
    from .data import digit_caption

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
    from .data import DIGIT_WORDS

    found = {str(i) for i, w in enumerate(DIGIT_WORDS) for tok in prompt.lower().split() if tok in (w, str(i))}
    return found.pop() if len(found) == 1 else None


def run_report(model, out: str | os.PathLike, settings: ReportSettings, *, progress: bool = True,
               pca=None, callback=None) -> dict | None:
    """Compute, measure and write the report into `out`; returns the numbers (None on processes other than 0).
    callback(done, total): after each basis of the grid (progress: a progress bar on stderr)."""
    from .analysis import (GridSpec, barrier, check_cache, compute_grid, data_pca, distributed, load_grid,
                           measure, report_timesteps, training_data)

    if settings.prompt_points not in ("own", "shared"):
        raise LatentBasisError(f"prompt points {settings.prompt_points!r}: choose 'own' or 'shared'")
    if settings.samples < 2:
        raise LatentBasisError(f"--samples {settings.samples}: at least 2 samples are needed to compare them")
    D = int(np.prod(model.x_shape))
    if not 1 <= settings.k <= D:
        raise LatentBasisError(f"k = {settings.k} is out of range: x_t has {D} dimensions, so 1 <= k <= {D}")
    out = Path(out)
    if not out.parent.exists():
        raise LatentBasisError(f"{out.parent} does not exist")
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
    with distributed() as (rank, world):
        if rank == 0:
            check_cache(model, spec, out / "cache")
        barrier()
        compute_grid(model, spec, out / "cache", rank=rank, world=world, progress=progress, callback=callback)
        barrier()
        if rank != 0:
            return None
    bases = load_grid(model, spec, out / "cache")
    if pca is None:
        data = training_data(model)
        pca = data_pca(data) if data is not None else None
    numbers = measure(model, spec, bases, pca=pca, prompt_groups=groups)
    numbers["seconds_per_basis"] = float(np.mean([b.seconds for b in bases.values()]))
    write_report(numbers, out, bases=bases, pca=pca, alphas_cumprod=model.alphas_cumprod)
    return numbers


# ---------------------------------------------------------------- rendering

def verdict(finding: dict) -> str:
    """The one-line verdict of a finding: holds, does not hold, mixed, or too few samples to judge."""
    from .analysis import verdict_word

    return finding.get("verdict") or verdict_word(finding["holds"], finding.get("judged", True))


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _save_fig(fig, path: Path) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return data


def _plots(n: dict, out: Path, bases, pca, alphas_cumprod) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .analysis import signal_fraction
    from .viz import direction_image

    tf = np.array(n["t_fractions"])
    k = n["k"]
    figs = {}

    fig, ax = plt.subplots(figsize=(6, 4))
    S = np.array(n["spectrum"]["mean"])
    for i in range(k):
        ax.plot(tf, S[:, i], "o-", ms=3, color=plt.cm.viridis(i / max(1, k - 1)), label=f"s{i + 1}" if i < 4 else None)
    if "gaussian" in n:
        G = np.array(n["gaussian"]["gains"])
        scale = S[:, :1] / G[:, :1]
        for i in range(k):
            ax.plot(tf, G[:, i] * scale[:, 0], "--", lw=0.8, color=plt.cm.viridis(i / max(1, k - 1)))
        ax.plot([], [], "k--", lw=0.8, label="Gaussian g_i(t) (data PCA), scaled to s1")
    ax.set(xlabel="t (fraction of T)", ylabel="singular value", yscale="log", title="Singular-value spectrum")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    figs["spectrum"] = _save_fig(fig, out / "spectrum.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    sd = n["sample_distance"]
    for kind, c in (("tangent", "C0"), ("latent", "C1")):
        m, s = np.array(sd[f"{kind}_mean"]), np.array(sd[f"{kind}_std"])
        ax.errorbar(tf, m, yerr=s, fmt="o-", ms=3, color=c, capsize=2, label=f"{kind} spaces between samples")
        ax.axhline(n["random_baseline"][kind]["geodesic_mean"], color=c, ls=":", label=f"random {kind} subspaces")
    ax.set(xlabel="t (fraction of T)", ylabel="geodesic distance", title="Distance between samples' subspaces")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    figs["sample_distance"] = _save_fig(fig, out / "sample_distance.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    M = np.array(n["timestep_distance"]["mean"])
    im = ax.imshow(M, cmap="magma")
    labels = [f"{t:.2f}" for t in tf]
    ax.set_xticks(range(len(tf)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tf)), labels, fontsize=7)
    ax.set(title="Tangent spaces across timesteps (mean over samples)", xlabel="t", ylabel="t")
    fig.colorbar(im, ax=ax, label="geodesic distance")
    figs["timestep_distance"] = _save_fig(fig, out / "timestep_distance.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    f = n["frequency"]
    a1.errorbar(tf, f["low_fraction_mean"], yerr=f["low_fraction_std"], fmt="o-", ms=3, capsize=2)
    a1.set(xlabel="t (fraction of T)", ylabel="energy fraction", ylim=(0, 1.02),
           title=f"Low-frequency energy (<= {n['low_frequency_cutoff']} cycles/px) of latent basis")
    a1.invert_xaxis()
    fr, rp = np.array(f["radial_frequencies"]), np.array(f["radial_power"])
    for i in range(len(tf)):
        a2.plot(fr, rp[i], color=plt.cm.coolwarm(i / max(1, len(tf) - 1)), label=f"t={tf[i]:.2f}")
    a2.set(xlabel="radial frequency (cycles/px)", ylabel="power share", yscale="log",
           title="Radial power spectrum of latent basis")
    a2.legend(fontsize=6, ncol=2)
    figs["frequency"] = _save_fig(fig, out / "frequency.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    T = len(alphas_cumprod)
    tt = np.arange(T) / (T - 1)
    for j, m in enumerate(n["chromatography"]["m"]):
        a1.plot(tt, signal_fraction(alphas_cumprod, m), color=plt.cm.plasma(j / len(n["chromatography"]["m"])),
                label=f"{m}x{m} pooling")
    for t in tf:
        a1.axvline(t, color="grey", lw=0.5, ls=":")
    a1.set(xlabel="t (fraction of T); dotted: the report's timesteps", ylabel="signal fraction rho_m(t)",
           title="Resolution chromatography")
    a1.legend(fontsize=7)
    if "gaussian" in n:
        a2.plot(tf, n["gaussian"]["latent_to_data_pcs_mean"], "o-", ms=3, label="latent basis vs top-k data PCs")
        a2.axhline(n["random_baseline"]["latent"]["geodesic_mean"], ls=":", color="C0", label="random subspaces")
        a2.set(xlabel="t (fraction of T)", ylabel="geodesic distance", title="Gaussian prediction: subspace")
        a2.invert_xaxis()
        a2.legend(fontsize=7)
    else:
        a2.axis("off")
        a2.text(0.5, 0.5, "no training data known for this model:\nno data-PCA overlay", ha="center")
    figs["theory"] = _save_fig(fig, out / "theory.png")

    # the directions themselves: first sample's latent basis at each timestep, and the data PCs
    rows = [("t=%.2f" % t, bases[0, n["seeds"][0], ts].latent) for t, ts in zip(tf, n["timesteps"])]
    if pca is not None:
        rows.append(("data PCs", pca[1][:k].float()))
    fig, axes = plt.subplots(len(rows), k, figsize=(k * 0.9, len(rows) * 0.95), squeeze=False)
    for r, (label, V) in enumerate(rows):
        for i in range(k):
            img = direction_image(V[i])
            axes[r, i].imshow(img, cmap="RdBu_r" if img.ndim == 2 else None, vmin=-1, vmax=1)
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Latent basis v1..vk of sample 0 at each t", fontsize=9)
    figs["directions"] = _save_fig(fig, out / "directions.png")

    pd = n.get("prompt_distance")
    if pd:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(tf, pd["mean"], "o-", ms=3, label="all prompt pairs")
        if "same_group_mean" in pd:
            ax.plot(tf, pd["same_group_mean"], "s-", ms=3, label="same meaning, other words")
            ax.plot(tf, pd["different_group_mean"], "^-", ms=3, label="different meaning")
        ax.axhline(n["random_baseline"]["tangent"]["geodesic_mean"], ls=":", color="grey", label="random subspaces")
        ax.set(xlabel="t (fraction of T)", ylabel="geodesic distance", title="Tangent spaces of different prompts")
        ax.invert_xaxis()
        ax.legend(fontsize=7)
        figs["prompt_distance"] = _save_fig(fig, out / "prompt_distance.png")
    return figs


def _tables(n: dict, out: Path) -> None:
    tf, ts = n["t_fractions"], n["timesteps"]
    k = n["k"]
    _csv(out / "spectrum.csv", ["timestep", "t"] + [f"s{i + 1}_mean" for i in range(k)] + [f"s{i + 1}_std" for i in range(k)],
         [[a, b, *m, *s] for a, b, m, s in zip(ts, tf, n["spectrum"]["mean"], n["spectrum"]["std"])])
    sd, f = n["sample_distance"], n["frequency"]
    _csv(out / "per_timestep.csv",
         ["timestep", "t", "tangent_distance_mean", "tangent_distance_std", "latent_distance_mean",
          "latent_distance_std", "low_frequency_fraction_mean", "low_frequency_fraction_std"],
         [[ts[i], tf[i], sd["tangent_mean"][i], sd["tangent_std"][i], sd["latent_mean"][i], sd["latent_std"][i],
           f["low_fraction_mean"][i], f["low_fraction_std"][i]] for i in range(len(ts))])
    _csv(out / "timestep_distance.csv", ["timestep"] + [str(t) for t in ts],
         [[t, *row] for t, row in zip(ts, n["timestep_distance"]["mean"])])
    pd = n.get("prompt_distance")
    if pd:
        cols = ["timestep", "t", "prompt_distance_mean"] + (["same_group_mean", "different_group_mean"]
                                                            if "same_group_mean" in pd else [])
        _csv(out / "prompt_distance.csv", cols,
             [[ts[i], tf[i], pd["mean"][i]] + ([pd["same_group_mean"][i], pd["different_group_mean"][i]]
                                               if "same_group_mean" in pd else []) for i in range(len(ts))])
    if "gaussian" in n:
        g = n["gaussian"]
        _csv(out / "gaussian.csv", ["timestep", "t", "latent_to_data_pcs", "spectrum_shape_error", "spectrum_error"]
             + [f"g{i + 1}" for i in range(k)],
             [[ts[i], tf[i], g["latent_to_data_pcs_mean"][i], g["spectrum_shape_error"][i], g["spectrum_error"][i],
               *g["gains"][i]] for i in range(len(ts))])


def write_report(n: dict, out: str | os.PathLike, *, bases, pca, alphas_cumprod) -> Path:
    """report.html (plots embedded: readable offline), numbers.json, CSV tables and PNG plots in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = _plots(n, out, bases, pca, alphas_cumprod)
    _tables(n, out)
    write_text_atomic(out / "numbers.json", json.dumps(n, indent=1))
    e = html.escape

    def img(name: str) -> str:
        return (f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(figs[name]).decode()}">'
                if name in figs else "")

    rows = "".join(
        f"<tr><td>{e(f['claim'])}</td><td class={ {True: 'yes', False: 'no', None: 'mixed'}[f['holds']]}>"
        f"{verdict(f)}</td><td>{e(f['evidence'])}</td></tr>" for f in n["findings"])
    sd, fq = n["sample_distance"], n["frequency"]
    per_t = "".join(
        f"<tr><td>{ts}</td><td>{t:.2f}</td><td>{sd['tangent_mean'][i]:.3f} ± {sd['tangent_std'][i]:.3f}</td>"
        f"<td>{sd['latent_mean'][i]:.3f} ± {sd['latent_std'][i]:.3f}</td><td>{fq['low_fraction_mean'][i]:.3f}</td>"
        f"<td>{n['spectrum']['mean'][i][0]:.3g}</td>"
        + (f"<td>{n['gaussian']['latent_to_data_pcs_mean'][i]:.3f}</td>" if "gaussian" in n else "")
        + (f"<td>{n['prompt_distance']['mean'][i]:.3f}</td>" if "prompt_distance" in n else "") + "</tr>"
        for i, (ts, t) in enumerate(zip(n["timesteps"], n["t_fractions"])))
    head = ("<tr><th>timestep</th><th>t</th><th>tangent distance between samples</th><th>latent distance</th>"
            "<th>low-frequency fraction</th><th>s1</th>" + ("<th>latent vs data PCs</th>" if "gaussian" in n else "")
            + ("<th>distance between prompts</th>" if "prompt_distance" in n else "") + "</tr>")
    rb = n["random_baseline"]
    chrom = ", ".join(f"{m}x{m}: {v if v is not None else 'never'}"
                      for m, v in n["chromatography"]["half_signal_timestep"].items())
    where = ("each on its own guided trajectory (guidance " + f"{n['guidance']})" if n.get("prompt_points") != "shared"
             else "all at the same x_t, from the seed's unconditional trajectory")
    prompts = (f"<p>Prompts ({where}): "
               + "; ".join(e(repr(p)) for p in n["prompts"]) + "</p>") if n["prompts"] != [None] else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>latentbasis report: {e(n['model'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
.yes{{color:#070;font-weight:bold}}.no{{color:#a00;font-weight:bold}}.mixed{{color:#a60;font-weight:bold}}</style></head><body>
<h1>Latent-space geometry of {e(n['model'])}</h1>
<p>Model hash {e(n['model_hash'])}. {len(n['seeds'])} samples (seeds {n['seeds'][0]}..{n['seeds'][-1]}) x
{len(n['timesteps'])} timesteps, k = {n['k']}; x has {n['latent_dim']} dimensions, h (the bottleneck) {n['tangent_dim']}.
Bases by the Jacobian of h at DDIM (eta = 0) trajectory points, each timestep warm-started from the previous one;
{n.get('seconds_per_basis', float('nan')):.2f} s per basis. Distances are Grassmann geodesic distances
sqrt(sum theta_i^2); random k-subspaces give {rb['tangent']['geodesic_mean']:.3f} ± {rb['tangent']['geodesic_std']:.3f}
in h and {rb['latent']['geodesic_mean']:.3f} ± {rb['latent']['geodesic_std']:.3f} in x (maximum sqrt(k) pi/2 =
{np.sqrt(n['k']) * np.pi / 2:.3f}).</p>{prompts}
<h2>Findings of the paper, checked here</h2>
<table><tr><th>claim</th><th>here</th><th>evidence</th></tr>{rows}</table>
<h2>Per timestep</h2><table>{head}{per_t}</table>
<h2>Spectrum</h2>{img('spectrum')}
<h2>Similarity of tangent spaces across samples</h2>{img('sample_distance')}
<h2>Across timesteps</h2>{img('timestep_distance')}
<h2>Frequency content</h2>{img('frequency')}
{'<h2>Prompts</h2>' + img('prompt_distance') if 'prompt_distance' in figs else ''}
<h2>Theory overlays</h2>{img('theory')}
<p>Resolution chromatography (theory.md): first timestep where m x m pooled x_t is less than half signal: {chrom}.
{'' if 'gaussian' in n else 'No data PCA: the training data of this model is not known to latentbasis.'}</p>
<h2>Directions</h2>{img('directions')}
<p>Numbers: numbers.json, spectrum.csv, per_timestep.csv, timestep_distance.csv{', prompt_distance.csv' if 'prompt_distance' in n else ''}{', gaussian.csv' if 'gaussian' in n else ''}.
Bases: cache/ (latentbasis basis files).</p>
</body></html>
"""
    write_text_atomic(out / "report.html", page)
    return out / "report.html"
