"""Measurements over a grid of bases and the paper's findings checked on them.

Measurements (per timestep t, method.md "Analysis the paper reports"):
    spectrum            s_1(t) >= ... >= s_k(t), mean and spread over samples
    sample distances    d(A, B) = sqrt(sum_i theta_i^2) between samples' tangent (and latent) spaces,
                        beside the random-subspace baseline of the same dimensions
    timestep distances  d(T_a, T_b) between one sample's tangent spaces at timesteps a, b (a t x t matrix)
    frequency content   radial power spectrum of the latent basis vectors; fraction of energy with radial
                        frequency <= cutoff (cycles per pixel; Nyquist is 0.5)
    prompt distances    d between the tangent spaces of two prompts for the same seed and t (text models)
The theory overlays they are compared with are in latentbasis.theory; the grid they are read from in
latentbasis.grid.
"""
from __future__ import annotations

import numpy as np
import torch

from .describe import GROUPS, group_shares
from .geometry import EARLY, spearman, verdict3
from .grassmann import geodesic_distance, random_subspace_distances
from .grid import GridSpec
from .theory import gaussian_gains, generation_rate, half_signal_timestep

LOW_FREQUENCY_CUTOFF = 0.25  # cycles per pixel: half the Nyquist frequency


def pairwise_geodesic(subspaces: list[torch.Tensor]) -> np.ndarray:
    """[n, n] Grassmann geodesic distances between n subspaces given as [k, ...] row sets."""
    n = len(subspaces)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = float(geodesic_distance(subspaces[i], subspaces[j]))
    return d


def _upper(d: np.ndarray) -> np.ndarray:
    return d[np.triu_indices(len(d), 1)]


def _power_spectrum(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(power |FFT2|^2 summed over channels [n, H, W], radial frequency in cycles per pixel [H, W]) of v [n, C, H, W]."""
    v = v.detach().double()
    H, W = v.shape[-2:]
    fy, fx = torch.fft.fftfreq(H, dtype=torch.float64), torch.fft.fftfreq(W, dtype=torch.float64)
    return (torch.fft.fft2(v).abs() ** 2).sum(dim=1), (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()


def radial_power(v: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Radial power spectrum of images v [n, C, H, W]: (frequencies [H//2 + 1] in cycles per pixel, power
    [n, H//2 + 1]) with power summed over channels and over rings of width 1/H, each row normalised to sum 1."""
    P, r = _power_spectrum(v)
    H = v.shape[-2]
    ring = (r * H).round().long().clamp(max=H // 2)                    # rings up to Nyquist (corners folded in)
    out = torch.zeros(v.shape[0], H // 2 + 1, dtype=torch.float64)
    out.index_add_(1, ring.reshape(-1), P.reshape(v.shape[0], -1))
    out = out / out.sum(dim=1, keepdim=True).clamp(min=1e-300)
    return (torch.arange(H // 2 + 1, dtype=torch.float64) / H).numpy(), out.numpy()


def low_frequency_fraction(v: torch.Tensor, cutoff: float = LOW_FREQUENCY_CUTOFF) -> np.ndarray:
    """Fraction of each image's energy (v [n, C, H, W]) at radial frequency <= cutoff (cycles per pixel), [n]."""
    P, r = _power_spectrum(v)
    low = r <= cutoff + 1e-12
    return ((P * low).sum(dim=(1, 2)) / P.sum(dim=(1, 2)).clamp(min=1e-300)).numpy()


def _rank_correlation(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def measure(model, spec: GridSpec, bases: dict, pca: tuple[torch.Tensor, torch.Tensor] | None = None,
            prompt_groups: list[str | None] | None = None, cutoff: float = LOW_FREQUENCY_CUTOFF) -> dict:
    """All the report's numbers from a loaded grid (see the module docstring). JSON-ready (lists and floats)."""
    ts_list, seeds, P = spec.timesteps, spec.seeds, len(spec.prompts)
    T = model.num_train_timesteps
    any_b = next(iter(bases.values()))
    n_x, n_h, k = any_b.latent[0].numel(), any_b.tangent[0].numel(), spec.k
    base_h = random_subspace_distances(n_h, k)
    base_x = random_subspace_distances(n_x, k)
    out = {"model": model.name, "model_hash": model.model_hash, "k": k, "seeds": seeds,
           "prompts": spec.prompts, "guidance": spec.guidance, "prompt_points": spec.prompt_points,
           "timesteps": ts_list,
           "t_fractions": [ts / (T - 1) for ts in ts_list], "latent_dim": n_x, "tangent_dim": n_h,
           "random_baseline": {"tangent": base_h, "latent": base_x}, "low_frequency_cutoff": cutoff}

    spec_mean, spec_std = [], []
    tan_mean, tan_std, lat_mean, lat_std, lowf, lowf_std, radial = [], [], [], [], [], [], []
    per_t_tangent, per_t_lowf = [], []   # per timestep: [prompt][n x n] distances; [prompt][sample] fractions
    for ts in ts_list:
        s = np.stack([bases[p, sd, ts].singular_values.double().numpy() for p in range(P) for sd in seeds])
        spec_mean.append(s.mean(0).tolist())
        spec_std.append(s.std(0).tolist())
        dt = np.concatenate([_upper(pairwise_geodesic([bases[p, sd, ts].tangent for sd in seeds])) for p in range(P)])
        dl = np.concatenate([_upper(pairwise_geodesic([bases[p, sd, ts].latent for sd in seeds])) for p in range(P)])
        per_t_tangent.append([pairwise_geodesic([bases[p, sd, ts].tangent for sd in seeds]).tolist()
                              for p in range(P)])
        tan_mean.append(float(dt.mean()))
        tan_std.append(float(dt.std()))
        lat_mean.append(float(dl.mean()))
        lat_std.append(float(dl.std()))
        V = torch.cat([bases[p, sd, ts].latent for p in range(P) for sd in seeds])
        f = low_frequency_fraction(V, cutoff)
        per_t_lowf.append(f.reshape(P, len(seeds), -1).mean(2).tolist())
        lowf.append(float(f.mean()))
        lowf_std.append(float(f.std()))
        freqs, rp = radial_power(V)
        radial.append(rp.mean(0).tolist())
    out["spectrum"] = {"mean": spec_mean, "std": spec_std}
    out["sample_distance"] = {"tangent_mean": tan_mean, "tangent_std": tan_std,
                              "latent_mean": lat_mean, "latent_std": lat_std, "tangent_matrices": per_t_tangent}
    out["frequency"] = {"low_fraction_mean": lowf, "low_fraction_std": lowf_std, "low_fraction_per_sample": per_t_lowf,
                        "radial_frequencies": freqs.tolist(), "radial_power": radial}
    mats = [pairwise_geodesic([bases[p, sd, ts].tangent for ts in ts_list]) for p in range(P) for sd in seeds]
    out["timestep_distance"] = {"mean": np.mean(mats, 0).tolist(), "first_sample": mats[0].tolist()}

    if P > 1:
        per_t = []
        for ts in ts_list:
            per_t.append(np.mean([pairwise_geodesic([bases[p, sd, ts].tangent for p in range(P)]) for sd in seeds], 0))
        pd = {"matrix": [m.tolist() for m in per_t], "mean": [float(_upper(m).mean()) for m in per_t]}
        if prompt_groups is not None and all(g is not None for g in prompt_groups):
            same = np.array([[prompt_groups[i] == prompt_groups[j] for j in range(P)] for i in range(P)])
            iu = np.triu_indices(P, 1)
            if same[iu].any() and (~same[iu]).any():
                pd["groups"] = list(prompt_groups)
                pd["same_group_mean"] = [float(m[iu][same[iu]].mean()) for m in per_t]
                pd["different_group_mean"] = [float(m[iu][~same[iu]].mean()) for m in per_t]
        out["prompt_distance"] = pd

    if pca is not None:
        lam, comps = pca
        top = comps[:k]
        g = gaussian_gains(model.alphas_cumprod, lam[:k], ts_list)
        out["gaussian"] = {
            "data_variances": lam[:k].tolist(),
            "gains": g.tolist(),
            "latent_to_data_pcs_mean": [float(np.mean([float(geodesic_distance(bases[p, sd, ts].latent, top))
                                                       for p in range(P) for sd in seeds])) for ts in ts_list],
            # spectrum shape: each curve divided by its top value (the scale of h is arbitrary for a U-Net)
            # None where the Gaussian has no signal (alpha = 0: a flow model's t = T), so nothing to compare
            "spectrum_shape_error": [float(np.abs(np.array(sm) / sm[0] - gi / gi[0]).max()) if gi[0] > 0 else None
                                     for sm, gi in zip(spec_mean, g)],
            "spectrum_error": [float(np.abs(np.array(sm) - gi).max() / gi[0]) if gi[0] > 0 else None
                               for sm, gi in zip(spec_mean, g)],
        }

    ab = model.alphas_cumprod
    R = model.x_shape[-1]
    ms = [2 ** i for i in range(int(np.log2(R)) + 1)]
    rates = np.stack([generation_rate(ab, m) for m in ms])
    out["chromatography"] = {
        "m": ms, "half_signal_timestep": {str(m): half_signal_timestep(ab, m) for m in ms},
        "dominant_m_at_timesteps": [ms[int(np.argmax(rates[:, ts]))] for ts in ts_list]}
    described = [[bases[p, sd, ts].descriptions for p in range(P) for sd in seeds] for ts in ts_list]
    if all(d for row in described for d in row):     # bases cached by an older version have none
        shares = [[group_shares(d) for d in row] for row in described]
        out["description_shares"] = {g: [float(np.mean([s[g] for s in row])) for row in shares] for g in GROUPS}
    out["findings"] = findings(out)
    return out


MIN_SAMPLES = 4       # a trend verdict needs at least this many samples ...
MIN_TIMESTEPS = 4     # ... and timesteps (fixed before looking at any result)
BOOTSTRAP = 2000      # resamples of the samples for the interval of a trend


def _trend(first: float, last: float, rho: float, falls: bool, interval: tuple[float, float] | None = None) -> bool | None:
    """A claim that a quantity falls (or rises) as t falls, from its values at the largest (first) and smallest
    (last) t. With the change D = last - first and its 95 % interval (lo, hi) (default: D itself), and rho the rank
    correlation of the quantity with t:
      holds          when D, the whole interval and rho (|rho| > 0.5) all point the claimed way;
      does not hold  when all three point the opposite way;
      mixed (None)   otherwise, or when the end points agree to 0.1 % (no change beyond rounding)."""
    if abs(first - last) <= 1e-3 * max(abs(first), abs(last)):
        return None
    e = -1 if falls else 1            # the sign of D the claim expects
    c = 1 if falls else -1            # the sign of rho the claim expects
    D = last - first
    lo, hi = interval if interval is not None else (D, D)
    side = hi < 0 if e < 0 else lo > 0              # the interval excludes 0 on the claimed side
    other = lo > 0 if e < 0 else hi < 0             # ... on the opposite side
    if e * D > 0 and c * rho > 0.5 and side:
        return True
    if e * D < 0 and c * rho < -0.5 and other:
        return False
    return None


def _interval(stat, n: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of stat(indices) over BOOTSTRAP resamples of n samples with replacement."""
    rng = np.random.default_rng(seed)
    vals = [stat(rng.integers(0, n, n)) for _ in range(BOOTSTRAP)]
    vals = [v for v in vals if np.isfinite(v)]
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))) if vals else (float("nan"),) * 2


def _pair_mean(mats_per_prompt, idx: np.ndarray) -> float:
    """Mean distance over the pairs of distinct resampled samples (by their original index), over prompts."""
    vals = [m[i][j] for m in mats_per_prompt for a, i in enumerate(idx) for j in idx[a + 1:] if i != j]
    return float(np.mean(vals)) if vals else float("nan")


def _evidence(n: dict) -> str | None:
    """Why a trend cannot be judged on these numbers (None when it can)."""
    ns, nt = len(n["seeds"]), len(n["timesteps"])
    if ns >= MIN_SAMPLES and nt >= MIN_TIMESTEPS:
        return None
    return (f"too few samples to judge: a trend needs at least {MIN_SAMPLES} samples and {MIN_TIMESTEPS} timesteps, "
            f"this report has {ns} x {nt} (run it with {max(ns, MIN_SAMPLES)} samples and "
            f"{max(nt, MIN_TIMESTEPS)} timesteps)")


def verdict_word(holds: bool | None, judged: bool = True) -> str:
    if not judged:
        return "too few samples to judge"
    return {True: "holds", False: "does not hold", None: "mixed (no clear trend)"}[holds]


def findings(n: dict) -> list[dict]:
    """The paper's claims checked on these numbers: each {'claim', 'holds' (True, False, or None: mixed or not
    judged), 'judged', 'verdict', 'evidence'}. Largest t is the first timestep, smallest the last. A trend claim is
    judged only with MIN_SAMPLES samples and MIN_TIMESTEPS timesteps, and holds only when the 95 % interval of its
    end-point change (resampling the samples) excludes 0 (_trend); the rule was fixed before any result was seen."""
    tf = n["t_fractions"]
    hi, lo = f"t = {tf[0]:.2f}", f"t = {tf[-1]:.2f}"
    ns = len(n["seeds"])
    too_few = _evidence(n)
    res = []

    def add(claim: str, holds, evidence: str):
        judged = too_few is None
        res.append({"claim": claim, "holds": holds if judged else None, "judged": judged,
                    "verdict": verdict_word(holds, judged), "evidence": evidence if judged else f"{too_few}; {evidence}"})

    d = n["sample_distance"]["tangent_mean"]
    b = n["random_baseline"]["tangent"]["geodesic_mean"]
    rho = _rank_correlation(tf, d)
    mats = n["sample_distance"].get("tangent_matrices")
    ci = _interval(lambda idx: _pair_mean(mats[-1], idx) - _pair_mean(mats[0], idx), ns) if mats and ns > 1 else None
    add("samples share more similar tangent spaces at large t than at small t (mean geodesic distance between "
        "samples lower at large t)", _trend(d[0], d[-1], rho, falls=False, interval=ci),
        f"mean distance {d[0]:.3f} at {hi} vs {d[-1]:.3f} at {lo} (random subspaces: {b:.3f}); change "
        f"{d[-1] - d[0]:+.3f}" + (f", 95 % interval {ci[0]:+.3f} to {ci[1]:+.3f}" if ci else "")
        + f"; rank correlation of distance with t: {rho:+.2f}")
    f = n["frequency"]["low_fraction_mean"]
    rho = _rank_correlation(tf, f)
    per = n["frequency"].get("low_fraction_per_sample")
    ci = (_interval(lambda idx: float(np.mean([np.asarray(p)[idx].mean() for p in per[-1]])
                                      - np.mean([np.asarray(p)[idx].mean() for p in per[0]])), ns)
          if per and ns > 1 else None)
    add(f"the low-frequency energy fraction (radial frequency <= {n['low_frequency_cutoff']} cycles/pixel) of the "
        "latent basis falls as t falls", _trend(f[0], f[-1], rho, falls=True, interval=ci),
        f"fraction {f[0]:.3f} at {hi} vs {f[-1]:.3f} at {lo}; change {f[-1] - f[0]:+.3f}"
        + (f", 95 % interval {ci[0]:+.3f} to {ci[1]:+.3f}" if ci else "") + f"; rank correlation with t: {rho:+.2f}")
    pd = n.get("prompt_distance")
    if pd and "same_group_mean" in pd:
        s, o = np.array(pd["same_group_mean"]), np.array(pd["different_group_mean"])
        add("prompts with the same meaning in different words give closer tangent spaces than prompts with "
            "different meanings", bool((s < o).sum() > len(s) / 2),
            f"same meaning {s.mean():.3f} vs different {o.mean():.3f} (mean over timesteps); closer at "
            f"{(s < o).sum()} of {len(s)} timesteps")
    if pd:
        m = pd["mean"]
        add("the tangent space depends less on the prompt as t falls",
            _trend(m[0], m[-1], _rank_correlation(tf, m), falls=True),
            f"mean distance between prompts {m[0]:.3f} at {hi} vs {m[-1]:.3f} at {lo}; rank correlation with t: "
            f"{_rank_correlation(tf, m):+.2f}")
    return res


def geometry_findings(g: dict) -> list[dict]:
    """The claims of the module docstring decided on measure_geometry's numbers (fixed rules)."""
    res = []

    def add(claim, holds, evidence):
        res.append({"claim": claim, "holds": holds, "judged": True, "verdict": verdict_word(holds),
                    "evidence": evidence})

    top2 = float(np.median(g["top2_share"]))
    add("sampling trajectories are low-dimensional (top 2 principal components hold them)",
        verdict3(top2, 0.90, 0.75), f"median variance share in the top 2 components {top2:.3f} (holds >= 0.90, does "
        f"not < 0.75); share in the plane of (x_T, x_0) {float(np.median(g['plane_share'])):.3f}")
    if "commit" in g:
        c = g["commit"]
        rho = spearman(c["data_variances"], c["measured_median"])
        gap = np.median(np.abs(np.array(c["measured_median"]) - np.array(c["predicted"])))
        add("high-variance features (data principal components) commit earlier than low-variance ones",
            verdict3(rho, 0.5, -0.5), f"Spearman correlation of variance with commit timestep {rho:+.2f} (holds > 0.5)"
            f"; measured commit timesteps {', '.join(f'{v:.0f}' for v in c['measured_median'])} against the "
            f"Gaussian's {', '.join(f'{v:.0f}' for v in c['predicted'])} (median gap {gap:.0f} steps)")
    b = g["bands"]
    rho_b = spearman([lo for lo, _ in b["bands"]], b["commit_timestep_median"])
    add("low frequencies commit earlier than high ones (frequency bands of x0_hat)", verdict3(-rho_b, 0.5, -0.5),
        f"commit timesteps of the bands {', '.join(f'{lo:g}-{hi:g}' for lo, hi in b['bands'])} cycles/px: "
        f"{', '.join(f'{v:.0f}' for v in b['commit_timestep_median'])}; Spearman with frequency {rho_b:+.2f}")
    p = g["perturbation"]
    imp, ts = p["random_mean"], p["timesteps"]
    rho_p = spearman(ts, imp)
    holds = True if (rho_p > 0.5 and imp[0] > imp[-1]) else False if (rho_p < -0.5 and imp[0] < imp[-1]) else None
    add("early perturbations change the final image more than late ones", holds,
        f"change per unit perturbation (random direction) {imp[0]:.3f} at t = {ts[0]} vs {imp[-1]:.3f} at t = "
        f"{ts[-1]}; Spearman with t {rho_p:+.2f}")
    if "gaussian" in g:
        e = g["gaussian"]["early_median"]
        add(f"the Gaussian closed form describes the early phase (t >= {EARLY} T)", verdict3(e, 0.1, 0.3, False),
            f"median relative distance of the real trajectory from the closed form {e:.3f} (holds <= 0.1, does not "
            ">= 0.3)")
    if "teleport" in g:
        rows = {r["fraction"]: r for r in g["teleport"]}
        base, at20 = rows[0.0]["score"], rows[0.2]["score"]
        ratio = at20 / base if base else float("nan")
        add("skipping the first 20 % of the steps with the Gaussian closed form keeps the quality (teleportation)",
            verdict3(ratio, 0.98, 0.90), f"quality judge {at20:.3f} at 20 % skipped vs {base:.3f} with none "
            f"(ratio {ratio:.3f}; holds >= 0.98, does not < 0.90); 20 % of the network evaluations saved")
    c = g["chromatography"]
    rho_c = spearman(c["m"], c["settle_timestep_median"])
    add("coarser resolutions settle earlier (measured resolution chromatography)", verdict3(rho_c, 0.5, -0.5),
        f"pooled x0_hat settles at timesteps {', '.join(f'{m}x{m}: {v:.0f}' for m, v in zip(c['m'], c['settle_timestep_median']))}"
        f" (theory, half signal: {', '.join(str(v) for v in c['theory_half_signal'])}); Spearman {rho_c:+.2f}")
    dev = float(np.median(g["chord_deviation"]["max_per_sample"]))
    add("the sampling trajectory is quasi-linear (close to the chord x_T -> x_0)", verdict3(dev, 0.2, 0.5, False),
        f"median over samples of the largest distance from the chord, relative to its length: {dev:.3f} (holds <= 0.2)")
    share = g["convergence"]["denoising_faster_share"]
    add("the denoising trajectory converges faster than the sampling trajectory", verdict3(share, 0.8, 0.5),
        f"x0_hat closer to the final image than x_t (normalised) at {100 * share:.0f} % of interior (sample, t) pairs")
    if "mean_shift" in g:
        m = g["mean_shift"]["late_median"]
        add("the learned denoiser deviates measurably from the training set's optimal (mean-shift) denoiser",
            verdict3(m, 0.05, 0.01), f"median relative distance at t <= 0.2 T {m:.3f} (holds >= 0.05)")
    return res
