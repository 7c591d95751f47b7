"""The report's pages: plots (PNG), tables (CSV) and one self-contained HTML page, from the numbers of a report.

write_report renders report.html from run_report's numbers (latentbasis.report); _compare_page renders
compare.html from run_compare's. Nothing here computes a basis or a measurement.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from .atomic import all_or_nothing, atomic_path, write_text_atomic
from .findings import verdict_word
from .theory import signal_fraction
from .viz import direction_image


def verdict(finding: dict) -> str:
    """The one-line verdict of a finding: holds, does not hold, mixed, or too few samples to judge."""
    return finding.get("verdict") or verdict_word(finding["holds"], finding.get("judged", True))


def findings_lines(findings: list[dict], markdown: bool = False) -> list[str]:
    """A line per finding: its verdict, the claim, and the evidence (as a Markdown list item with `markdown`)."""
    if markdown:
        return [f"- **{verdict(f)}**: {f['claim']} ({f['evidence']})" for f in findings]
    return [f"{verdict(f)}: {f['claim']}  [{f['evidence']}]" for f in findings]


PLOTS = (("spectrum", "singular values"), ("sample_distance", "tangent spaces across samples"),
         ("timestep_distance", "across timesteps"), ("frequency", "frequency content"), ("prompt_distance", "prompts"),
         ("theory", "theory overlays"), ("directions", "directions"))


def report_plots(out: str | os.PathLike) -> list[tuple[str, str]]:
    """The plots a report folder holds, in the page's order: (path, caption)."""
    return [(str(Path(out) / f"{f}.png"), c) for f, c in PLOTS if (Path(out) / f"{f}.png").exists()]


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

    tf = np.array(n["t_fractions"])
    k = n["k"]
    figs = {}

    fig, ax = plt.subplots(figsize=(6, 4))
    S = np.array(n["spectrum"]["mean"])
    for i in range(k):
        ax.plot(tf, S[:, i], "o-", ms=3, color=plt.cm.viridis(i / max(1, k - 1)), label=f"s{i + 1}" if i < 4 else None)
    if "gaussian" in n:
        G = np.array(n["gaussian"]["gains"])
        top = G[:, :1]
        scale = np.divide(S[:, :1], top, out=np.full_like(top, np.nan), where=top > 0)   # no signal: not drawn
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


def _geometry_plot(g: dict, out: Path) -> bytes:
    """Six panels: linearity and convergence, perturbation impact, commit times, chromatography, the Gaussian
    closed form (and the mean-shift denoiser), teleportation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tf = np.array(g["t_fractions"])
    fig, ax = plt.subplots(2, 3, figsize=(14, 7.5))
    a = ax[0, 0]
    a.plot(tf, g["chord_deviation"]["mean"], "o-", ms=3, label="distance from the chord / its length")
    a.plot(tf, g["convergence"]["sampling_mean"], "s-", ms=3, label="x_t to the image (normalised)")
    a.plot(tf, g["convergence"]["denoising_mean"], "^-", ms=3, label="x0_hat(t) to the image (normalised)")
    a.set(xlabel="t (fraction of T)", title="Linearity and convergence")
    a.invert_xaxis()
    a.legend(fontsize=7)
    a = ax[0, 1]
    p = g["perturbation"]
    T1 = g["timesteps"][0] / tf[0] if tf[0] else 1.0   # T - 1
    pt = np.array(p["timesteps"]) / T1
    a.plot(pt, p["random_mean"], "o-", ms=3, label="random direction")
    if p.get("basis_mean"):
        a.plot(pt, p["basis_mean"], "s-", ms=3, label="latent basis v1")
    if p.get("gaussian_random"):
        a.plot(pt, p["gaussian_random"], "k--", lw=1, label="Gaussian theory (random)")
    a.set(xlabel="t (fraction of T)", ylabel="change of x_0 per unit", title="Perturbation impact", yscale="log")
    a.invert_xaxis()
    a.legend(fontsize=7)
    a = ax[0, 2]
    if "commit" in g:
        c = g["commit"]
        a.plot(c["data_variances"], c["measured_median"], "o", label="measured (median over samples)")
        a.plot(c["data_variances"], c["predicted"], "k--", label="Gaussian: sigma^2 / alpha^2 = lam")
        a.set(xscale="log", xlabel="data variance lam_i", ylabel="commit timestep", title="Commit times")
        a.legend(fontsize=7)
    else:
        b = g["bands"]
        a.bar([f"{lo:g}-{hi:g}" for lo, hi in b["bands"]], b["commit_timestep_median"])
        a.set(xlabel="frequency band (cycles/px)", ylabel="commit timestep", title="Commit times of frequency bands")
    a = ax[1, 0]
    c = g["chromatography"]
    a.plot(c["m"], c["settle_timestep_median"], "o-", label="measured: pooled x0_hat settles")
    a.plot(c["m"], [v if v is not None else np.nan for v in c["theory_half_signal"]], "k--",
           label="schedule theory: half signal")
    a.set(xscale="log", xlabel="pooling m (m x m)", ylabel="timestep", title="Resolution chromatography")
    a.legend(fontsize=7)
    a = ax[1, 1]
    if "gaussian" in g:
        a.plot(tf, g["gaussian"]["relative_distance_mean"], "o-", ms=3, label="real vs Gaussian closed form")
    if "mean_shift" in g:
        a.plot(tf, g["mean_shift"]["relative_distance_mean"], "s-", ms=3, label="x0_hat vs optimal (mean-shift)")
    a.set(xlabel="t (fraction of T)", ylabel="relative distance", title="Against the closed forms")
    a.invert_xaxis()
    if "gaussian" in g or "mean_shift" in g:
        a.legend(fontsize=7)
    else:
        a.text(0.5, 0.5, "no training data known:\nno closed-form comparison", ha="center")
    a = ax[1, 2]
    if "teleport" in g:
        rows = g["teleport"]
        a.plot([r["fraction"] for r in rows], [r["score"] for r in rows], "o-")
        a.set(xlabel="fraction of steps teleported", ylabel="quality judge", title="Gaussian teleportation")
    else:
        a.axis("off")
        a.text(0.5, 0.5, "no quality judge for this model", ha="center")
    fig.tight_layout()
    return _save_fig(fig, out / "geometry.png")


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
    if "geometry" in n:
        g = n["geometry"]
        cols = {"chord_deviation_mean": g["chord_deviation"]["mean"],
                "sampling_distance_mean": g["convergence"]["sampling_mean"],
                "denoising_distance_mean": g["convergence"]["denoising_mean"]}
        if "gaussian" in g:
            cols["gaussian_relative_distance"] = g["gaussian"]["relative_distance_mean"]
        if "mean_shift" in g:
            cols["mean_shift_relative_distance"] = g["mean_shift"]["relative_distance_mean"]
        steps = g["timesteps"]
        _csv(out / "geometry.csv", ["timestep", "t", *cols],
             [[s_, t_, *[c[i] for c in cols.values()]] for i, (s_, t_) in enumerate(zip(steps, g["t_fractions"]))])
        p = g["perturbation"]
        _csv(out / "perturbation.csv", ["timestep", "random", "basis_v1", "gaussian_random"],
             [[t_, p["random_mean"][i], (p.get("basis_mean") or [None] * len(p["timesteps"]))[i],
               (p.get("gaussian_random") or [None] * len(p["timesteps"]))[i]] for i, t_ in enumerate(p["timesteps"])])
        if "teleport" in g:
            _csv(out / "teleport.csv", ["fraction", "quality", "seconds"],
                 [[r["fraction"], r["score"], r["seconds"]] for r in g["teleport"]])
    if "description_shares" in n:
        ds = n["description_shares"]
        _csv(out / "descriptions.csv", ["timestep", "t", *ds], [[ts[i], tf[i], *[ds[g][i] for g in ds]]
                                                               for i in range(len(ts))])
    if "gaussian" in n:
        g = n["gaussian"]
        _csv(out / "gaussian.csv", ["timestep", "t", "latent_to_data_pcs", "spectrum_shape_error", "spectrum_error"]
             + [f"g{i + 1}" for i in range(k)],
             [[ts[i], tf[i], g["latent_to_data_pcs_mean"][i], g["spectrum_shape_error"][i], g["spectrum_error"][i],
               *g["gains"][i]] for i in range(len(ts))])


def _findings_rows(findings: list[dict]) -> str:
    e = html.escape
    return "".join(
        f"<tr><td>{e(f['claim'])}</td><td class={ {True: 'yes', False: 'no', None: 'mixed'}[f['holds']]}>"
        f"{verdict(f)}</td><td>{e(f['evidence'])}</td></tr>" for f in findings)


def _geometry_html(n: dict, img) -> str:
    g = n["geometry"]
    tele = ""
    if "teleport" in g:
        tele = ("<table><tr><th>steps teleported</th><th>quality judge</th><th>seconds</th></tr>"
                + "".join(f"<tr><td>{100 * r['fraction']:.0f} %</td><td>{r['score']:.3f}</td><td>{r['seconds']:.1f}"
                          "</td></tr>" for r in g["teleport"]) + "</table>")
    cost = (f"<p>This part took {n.get('seconds_geometry', float('nan')):.1f} s, reusing the kept trajectories of the "
            f"grid, which took {n.get('seconds_grid', float('nan')):.1f} s in this run (less when the cache held "
            f"its bases).</p>")
    return (f"<h2>Generation geometry</h2><p>Claims of Wang &amp; Vastola (2023/24), the coarse-to-fine "
            f"(chromatography) paper and Chen et al. (2023), measured on the kept trajectories of the first condition; "
            f"each verdict comes from a rule fixed in latentbasis/findings.py before any result was seen.</p>"
            f"<table><tr><th>claim</th><th>here</th><th>evidence</th></tr>{_findings_rows(n['geometry_findings'])}"
            f"</table>{img('geometry')}{tele}{cost}")


def _descriptions_html(n: dict) -> str:
    """What the directions do as t falls: the mean share of each group of parts of their change of x0_hat
    (latentbasis.describe), the seed papers' "outline first, details later" in another measure."""
    ds = n.get("description_shares")
    if not ds:
        return "<p>The directions are not described (bases cached by an older version).</p>"
    head = "<tr><th>timestep</th><th>t</th>" + "".join(f"<th>{g}</th>" for g in ds) + "</tr>"
    rows = "".join(f"<tr><td>{ts}</td><td>{t:.2f}</td>" + "".join(f"<td>{ds[g][i]:.2f}</td>" for g in ds) + "</tr>"
                   for i, (ts, t) in enumerate(zip(n["timesteps"], n["t_fractions"])))
    return ("<h2>What the directions do</h2><p>Mean share of each part of a direction's first-order change of the "
            "denoised estimate x0_hat at x_t, over the samples' directions (latentbasis.describe; not the finished "
            f"edit's, which `basis` and `edit` describe).</p><table>{head}{rows}</table>")


def write_report(n: dict, out: str | os.PathLike, *, bases, pca, alphas_cumprod) -> Path:
    """report.html (plots embedded: readable offline), numbers.json, CSV tables and PNG plots in `out`: all of them
    or, where one cannot be written, none (an earlier report there stays whole)."""
    with all_or_nothing():
        return _write_report(n, out, bases=bases, pca=pca, alphas_cumprod=alphas_cumprod)


def _write_report(n: dict, out: str | os.PathLike, *, bases, pca, alphas_cumprod) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = _plots(n, out, bases, pca, alphas_cumprod)
    if "geometry" in n:
        figs["geometry"] = _geometry_plot(n["geometry"], out)
    _tables(n, out)
    write_text_atomic(out / "numbers.json", json.dumps(n, indent=1))
    e = html.escape

    def img(name: str) -> str:
        return (f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(figs[name]).decode()}">'
                if name in figs else "")

    rows = _findings_rows(n["findings"])
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
Bases by the Jacobian of h at DDIM (eta = 0) trajectory points{', each timestep warm-started from the previous one' if n.get('warm_start', True) else ''};
{n.get('seconds_per_basis', float('nan')):.2f} s and {n.get('evaluations_per_basis', float('nan')):.1f} network
evaluations (J v and J^T u) per basis. Distances are Grassmann geodesic distances
sqrt(sum theta_i^2); random k-subspaces give {rb['tangent']['geodesic_mean']:.3f} ± {rb['tangent']['geodesic_std']:.3f}
in h and {rb['latent']['geodesic_mean']:.3f} ± {rb['latent']['geodesic_std']:.3f} in x (maximum sqrt(k) pi/2 =
{np.sqrt(n['k']) * np.pi / 2:.3f}).</p>{prompts}
<h2>Findings of the paper, checked here</h2>
<table><tr><th>claim</th><th>here</th><th>evidence</th></tr>{rows}</table>
<h2>Per timestep</h2><table>{head}{per_t}</table>{_descriptions_html(n)}
<h2>Spectrum</h2>{img('spectrum')}
<h2>Similarity of tangent spaces across samples</h2>{img('sample_distance')}
<h2>Across timesteps</h2>{img('timestep_distance')}
<h2>Frequency content</h2>{img('frequency')}
{'<h2>Prompts</h2>' + img('prompt_distance') if 'prompt_distance' in figs else ''}
<h2>Theory overlays</h2>{img('theory')}
<p>Resolution chromatography (theory.md): first timestep where m x m pooled x_t is less than half signal: {chrom}.
{'' if 'gaussian' in n else 'No data PCA: the training data of this model is not known to latentbasis.'}</p>
<h2>Directions</h2>{img('directions')}
{_geometry_html(n, img) if 'geometry' in n else ''}
<p>Numbers: numbers.json, spectrum.csv, per_timestep.csv, timestep_distance.csv{', prompt_distance.csv' if 'prompt_distance' in n else ''}{', gaussian.csv' if 'gaussian' in n else ''}.
Bases: cache/ (latentbasis basis files).</p>
</body></html>
"""
    write_text_atomic(out / "report.html", page)
    return out / "report.html"


def _compare_page(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = html.escape
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in r["models"]:
        ax.plot(r["t_fractions"], r["normalised"][m], "o-", ms=3, label=m)
    ax.axhline(1.0, color="grey", ls=":", label="random subspaces")
    ax.set(xlabel="t (fraction of T)", ylabel="distance between samples / random baseline",
           title="Tangent-space consistency across samples")
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    png = _save_fig(fig, out / "compare.png")
    keys = list(next(iter(r["confounds"].values())))
    conf = ("<tr><th>model</th>" + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>" + "".join(
        f"<tr><td>{e(m)}</td>" + "".join(f"<td>{e(str(r['confounds'][m][k]))}</td>" for k in keys) + "</tr>"
        for m in r["models"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>latentbasis compare</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}img{{max-width:100%}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
.yes{{color:#070;font-weight:bold}}.no{{color:#a00;font-weight:bold}}.mixed{{color:#a60;font-weight:bold}}</style></head><body>
<h1>Models compared: {e(', '.join(r['models']))}</h1>
<p>The same grid for each (samples x timesteps, k), each model's geodesic distances between its samples' tangent
spaces divided by its own random-subspace baseline. The pullback paper's claim, "the simpler the dataset, the more
consistent the tangent spaces", with the first model as the simpler data; intervals from resampling each model's
samples (2,000 times).</p>
<table><tr><th>claim</th><th>here</th><th>evidence: difference (other - first) [95 % interval]</th></tr>{_findings_rows(r['findings'])}</table>
<img alt="compare" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>What else differs (confounds)</h2><p>The models differ in more than their data; any of these can move the
numbers, so the claim is read with them in view:</p><table>{conf}</table>
<p>Numbers: compare.json, compare.csv; each model's own report in its folder here.</p></body></html>"""
    write_text_atomic(out / "compare.html", page)
