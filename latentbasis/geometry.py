"""Generation geometry: what the theory papers claim about how a diffusion model generates, measured on kept
trajectories of any model (pure functions first, then `measure_geometry`, which the report calls).

Notation: a trajectory is the states x_t (descending t, x_T first) and x0_hat(t), the network's denoised estimate
at each; levels x_t = alpha_t x0 + sigma_t eps (latentbasis.schedules). The Gaussian fitted to the training data is
N(mu, U diag(lam) U^T); v_i(t) = alpha_t^2 lam_i + sigma_t^2 is the variance of x_t along u_i (theory.md).

Claims and the rules that decide them (fixed before any result was looked at; each returns holds / does not hold /
mixed):
- trajectories are low-dimensional (Wang & Vastola): median share of a trajectory's variance in its top 2 principal
  components >= 0.90 holds, < 0.75 does not;
- high-variance features commit earlier: Spearman correlation of the data variance lam_i with the measured commit
  timestep > 0.5 holds, < -0.5 does not. A projection c(t) = u_i^T (x0_hat(t) - mu) has committed from the largest t
  after which |c - c_final| <= SETTLE |c_final| (median over samples); for a Gaussian this is exactly where
  sigma_t^2 / alpha_t^2 = lam_i (theory.md's commit time: x0_hat has come 1 / sqrt(2) of its way);
- early perturbations change the image more: change of the final image per unit perturbation of x_t, largest t
  against smallest, and Spearman correlation with t > 0.5 holds (both the other way: does not);
- the Gaussian closed form describes the early phase: median relative distance of the real x_t from the closed-form
  trajectory from the same x_T, over t >= 0.7 T, <= 0.1 holds, >= 0.3 does not;
- teleportation: skipping 20 % of the steps with the closed form keeps >= 98 % of the quality judge's score holds,
  < 90 % does not;
- resolution chromatography: pooled x0_hat settles (same rule, norms) earlier for coarser pooling: Spearman
  correlation of m with the settle timestep > 0.5 holds, < -0.5 does not;
- the sampling trajectory is quasi-linear (Chen et al.): median over samples of the largest distance from the chord
  x_T -> x_0, relative to the chord's length, <= 0.2 holds, >= 0.5 does not;
- the denoising trajectory converges faster than the sampling one: at >= 80 % of interior (sample, t) pairs the
  normalised distance of x0_hat(t) to the final image is below that of x_t, holds; <= 50 % does not;
- the learned denoiser deviates from the training set's optimal (mean-shift) denoiser: median relative distance at
  t <= 0.2 T >= 0.05 holds, <= 0.01 does not.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .sampling import ddim_timesteps, denoise, initial_noise
from .theory import data_pca, half_signal_timestep

SETTLE = 1 - 1 / math.sqrt(2)   # the share of its final value x0_hat still has to go at the Gaussian commit time
EARLY = 0.7                     # "the early phase": t >= EARLY T
TELEPORT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4)


# ---------------------------------------------------------------- pure functions on trajectories

def top2_variance_share(states: torch.Tensor) -> float:
    """Share of the variance of a trajectory's states [n, *x] (about their mean) in their top 2 principal
    components."""
    X = states.reshape(len(states), -1).double()
    s = torch.linalg.svdvals(X - X.mean(0))
    return float((s[:2] ** 2).sum() / (s ** 2).sum().clamp(min=1e-300))


def plane_share(states: torch.Tensor) -> float:
    """Mean over states of ||P x_t||^2 / ||x_t||^2, P the projection onto span(x_T, x_0) (the first and last
    states): how much of the trajectory the plane of its end points holds."""
    X = states.reshape(len(states), -1).double()
    Q = torch.linalg.qr(torch.stack([X[0], X[-1]], 1))[0]
    inside = ((X @ Q) ** 2).sum(1)
    return float((inside / (X ** 2).sum(1).clamp(min=1e-300)).mean())


def chord_deviation(states: torch.Tensor) -> np.ndarray:
    """Distance of each state from the straight line x_T -> x_0, divided by the chord's length, [n]."""
    X = states.reshape(len(states), -1).double()
    d = X[-1] - X[0]
    L = d.norm().clamp(min=1e-300)
    rel = X - X[0]
    along = (rel @ d / L ** 2)[:, None] * d
    return ((rel - along).norm(dim=1) / L).numpy()


def settle_index(values: np.ndarray, final: np.ndarray, scale: np.ndarray | float) -> int:
    """The first index i (largest t, states in descending t) from which |values[j] - final| <= SETTLE * scale for
    every j >= i; values [n] or [n, d] (norms taken over d)."""
    dev = np.abs(values - final) if values.ndim == 1 else np.linalg.norm(values - final, axis=1)
    ok = dev <= SETTLE * np.asarray(scale) + 1e-12
    i = len(ok)
    while i > 0 and ok[i - 1]:
        i -= 1
    return i


def commit_timesteps(x0_hats: torch.Tensor, timesteps: list[int], mu: torch.Tensor, comps: torch.Tensor,
                     k: int) -> np.ndarray:
    """Measured commit timestep of the top-k data components for one trajectory: x0_hats [n, *x] (descending t),
    components comps [>= k, *x] (unit rows); [k] (the timestep where c_i(t) has settled to SETTLE |c_i(final)|)."""
    C = ((x0_hats.reshape(len(x0_hats), -1).double() - mu.reshape(-1).double())
         @ comps[:k].reshape(k, -1).double().T).numpy()                   # [n, k]
    out = []
    for i in range(k):
        j = settle_index(C[:, i], C[-1, i], abs(C[-1, i]))
        out.append(timesteps[min(j, len(timesteps) - 1)])
    return np.array(out, dtype=float)


def predicted_commit_timesteps(alphas: torch.Tensor, sigmas: torch.Tensor, lam: torch.Tensor) -> np.ndarray:
    """theory.md's commit time of a component of variance lam: the largest t with sigma_t^2 / alpha_t^2 <= lam
    ((1 - abar) / abar = lam for VP); -1 where no t qualifies."""
    ratio = (sigmas.double() ** 2 / alphas.double().clamp(min=1e-300) ** 2).numpy()
    out = []
    for v in lam.double().numpy():
        idx = np.nonzero(ratio <= v)[0]
        out.append(float(idx.max()) if len(idx) else -1.0)
    return np.array(out)


def pooled(x: torch.Tensor, m: int) -> torch.Tensor:
    """Average pooling over m x m pixels of images [n, C, H, W] -> [n, C*(H/m)*(W/m)]."""
    return torch.nn.functional.avg_pool2d(x.double(), m).reshape(len(x), -1)


def settle_timestep_pooled(x0_hats: torch.Tensor, timesteps: list[int], m: int) -> int:
    """When the m x m pooled x0_hat settles (norms, SETTLE of the final's norm); a timestep."""
    P = pooled(x0_hats, m).numpy()
    j = settle_index(P, P[-1], np.linalg.norm(P[-1]))
    return timesteps[min(j, len(timesteps) - 1)]


def gaussian_trajectory(x_T: torch.Tensor, timesteps: list[int], alphas: torch.Tensor, sigmas: torch.Tensor,
                        mu: torch.Tensor, U: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """theory.md's probability-flow solution for the Gaussian N(mu, U diag(lam) U^T) from x_T at timesteps[0]:
    x_t = alpha_t mu + sum_i sqrt(v_i(t) / v_i(T)) c_i(T) u_i + (sigma_t / sigma_T) r_perp, c_i = u_i^T (x_T -
    alpha_T mu), r_perp the rest; [len(timesteps), *x] float64. U [D, r] orthonormal columns, lam [r]."""
    shape = x_T.shape
    a, s = alphas.double(), sigmas.double()
    T0 = timesteps[0]
    r0 = x_T.reshape(-1).double() - a[T0] * mu.reshape(-1).double()
    c = U.T.double() @ r0
    perp = r0 - U.double() @ c
    v = lambda t: a[t] ** 2 * lam.double() + s[t] ** 2  # noqa: E731
    out = [a[t] * mu.reshape(-1).double() + U.double() @ (torch.sqrt(v(t) / v(T0)) * c) + (s[t] / s[T0]) * perp
           for t in timesteps]
    return torch.stack(out).reshape(len(timesteps), *shape)


def optimal_denoiser(x: torch.Tensor, alpha: float, sigma: float, data: torch.Tensor) -> torch.Tensor:
    """The training set's optimal denoiser E[x0 | x_t] for the empirical data distribution (a mean shift):
    sum_n w_n x_n, w = softmax(-||x_t - alpha x_n||^2 / (2 sigma^2)). x [*x], data [N, *x]."""
    X = data.reshape(len(data), -1).double()
    d2 = ((x.reshape(-1).double()[None] - alpha * X) ** 2).sum(1)
    w = torch.softmax(-d2 / (2 * max(sigma, 1e-12) ** 2), 0)
    return (w @ X).reshape(x.shape)


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if len(a) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def verdict3(value: float, holds_at: float, fails_at: float, higher_holds: bool = True) -> bool | None:
    """True / False / None (mixed) for a value against the rule's two thresholds."""
    if value != value:
        return None
    if higher_holds:
        return True if value >= holds_at else False if value < fails_at else None
    return True if value <= holds_at else False if value >= fails_at else None


# ---------------------------------------------------------------- with the model

@torch.no_grad()
def perturbation_impact(model, traj, timesteps: list[int], directions: dict[int, torch.Tensor],
                        delta: float = 0.1, seed: int = 0, prompt=None, guidance: float = 1.0) -> dict:
    """Change of the final image per unit perturbation of x_t: ||x0(x_t + delta d) - x0(x_t)|| / delta for a random
    unit direction and, where given, a latent-basis direction (directions {timestep: unit vector}), by re-running
    the trajectory's own steps from t. Returns {"random": [..], "basis": [..]} over timesteps (nan where no basis
    direction is given)."""
    return perturbation_impacts(model, [traj], timesteps, [directions], delta, [seed], prompt, guidance)[0]


@torch.no_grad()
def perturbation_impacts(model, trajectories: list, timesteps: list[int], directions: list[dict],
                         delta: float = 0.1, seeds: list[int] | None = None, prompt=None,
                         guidance: float = 1.0, max_batch: int = 24) -> list[dict]:
    """perturbation_impact for several trajectories on one timestep grid at once: per timestep, the perturbed rows
    (x_t + delta r, x_t + delta v; at most max_batch rows a batch) are re-run to x_0, so a report's samples share
    the network calls. The unperturbed x0(x_t) is the trajectory's own final x0_hat (the same deterministic steps
    from x_t: equal up to rounding), where it was kept; else x_t is re-run too. seeds[j] seeds trajectory j's
    random directions (drawn in timestep order)."""
    grid = trajectories[0].timesteps
    if any(list(tr.timesteps) != list(grid) for tr in trajectories):
        raise ValueError("perturbation_impacts needs trajectories on one timestep grid")
    seeds = list(range(len(trajectories))) if seeds is None else seeds
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    kept = all(tr.x0_hats is not None and len(tr.x0_hats) == len(grid) for tr in trajectories)
    out = [{"random": [], "basis": []} for _ in trajectories]
    for ts in timesteps:
        i = trajectories[0].index(ts)
        rows = []
        for tr, g, dirs in zip(trajectories, gens, directions):
            x = tr.xs[i]
            r = torch.randn(x.shape, generator=g)
            if not kept:
                rows.append(x)
            rows.append(x + delta * r / r.norm())
            if ts in dirs:
                rows.append(x + delta * (dirs[ts] / dirs[ts].norm()).to(x.dtype))
        x0 = iter(torch.cat([denoise(model, torch.stack(rows[a:a + max_batch]), grid[i:], prompt, guidance,
                                     clip_denoised=False) for a in range(0, len(rows), max_batch)]).flatten(1))
        for j, (tr, dirs) in enumerate(zip(trajectories, directions)):      # the rows in the order they were made
            base = tr.x0_hats[-1].flatten() if kept else next(x0)
            out[j]["random"].append(float((next(x0) - base).norm() / delta))
            out[j]["basis"].append(float((next(x0) - base).norm() / delta) if ts in dirs else float("nan"))
    return out


def gaussian_fit(data: torch.Tensor, rank: int | None = None, pca=None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """(mu [*x], U [D, r] orthonormal columns, lam [r]) of the training data's Gaussian fit (top r components;
    pca: theory.data_pca's result when already computed)."""
    lam, comps = pca if pca is not None else data_pca(data)
    r = rank or len(lam)
    return data.mean(0).double(), comps[:r].reshape(r, -1).double().T, lam[:r].double()


@torch.no_grad()
def teleport(model, seeds: list[int], fraction: float, fit, num_steps: int = 50, prompt=None,
             guidance: float = 1.0) -> torch.Tensor:
    """Images [len(seeds), *x] sampled with the first `fraction` of the steps replaced by the Gaussian closed form
    (Gaussian teleportation): x_T from the seed, jumped to the grid point at that fraction, then the model."""
    grid = ddim_timesteps(model.num_train_timesteps - 1, 0, num_steps)
    skip = int(round(fraction * (len(grid) - 1)))
    x = torch.stack([initial_noise(model, s) for s in seeds])
    if skip:
        mu, U, lam = fit
        x = torch.stack([gaussian_trajectory(xi, [grid[0], grid[skip]], model.alphas, model.sigmas, mu, U, lam)[-1]
                         for xi in x]).float()
    return denoise(model, x, grid[skip:], prompt, guidance)


# ---------------------------------------------------------------- the report's part

BANDS = ((0.0, 0.125), (0.125, 0.25), (0.25, 0.71))   # radial frequency bands, cycles per pixel


def band_pass(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Images [n, C, H, W] keeping only radial frequencies in [lo, hi) (cycles per pixel), flattened [n, ...]."""
    H, W = x.shape[-2:]
    fy, fx = torch.fft.fftfreq(H, dtype=torch.float64), torch.fft.fftfreq(W, dtype=torch.float64)
    r = (fy[:, None] ** 2 + fx[None] ** 2).sqrt()
    mask = ((r >= lo) & (r < hi)).to(torch.complex128)
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * mask).real.reshape(len(x), -1)


def measure_geometry(model, trajectories: list, *, data: torch.Tensor | None = None, pca=None, judge=None,
                     directions: dict | None = None, impact_timesteps: list[int] | None = None, k: int = 8,
                     judge_samples: int = 64, prompt=None, guidance: float = 1.0, progress=None) -> dict:
    """Every generation-geometry measurement of the module docstring for kept trajectories (sampled ones, with
    x0_hats), JSON-ready. data: the training images (commit times of data components, the Gaussian closed form,
    teleportation, the mean-shift denoiser need it); judge(images) -> score (teleportation's quality); directions
    {seed: {timestep: v1}} for the perturbation impact along a latent-basis direction."""
    T = model.num_train_timesteps
    steps = trajectories[0].timesteps
    tf = [t / (T - 1) for t in steps]
    out: dict = {"timesteps": steps, "t_fractions": tf}
    # trajectory dimensionality and linearity
    out["top2_share"] = [top2_variance_share(tr.xs) for tr in trajectories]
    out["plane_share"] = [plane_share(tr.xs) for tr in trajectories]
    dev = np.stack([chord_deviation(tr.xs) for tr in trajectories])
    out["chord_deviation"] = {"mean": dev.mean(0).tolist(), "max_per_sample": dev.max(1).tolist()}
    # denoising against sampling convergence (normalised distances to the final image)
    d_s, d_d = [], []
    for tr in trajectories:
        X, H = tr.xs.reshape(len(steps), -1).double(), tr.x0_hats.reshape(len(steps), -1).double()
        final = H[-1]
        d_s.append(((X - final).norm(dim=1) / (X[0] - final).norm().clamp(min=1e-300)).numpy())
        d_d.append(((H - final).norm(dim=1) / (H[0] - final).norm().clamp(min=1e-300)).numpy())
    d_s, d_d = np.stack(d_s), np.stack(d_d)
    inner = slice(1, len(steps) - 1)
    out["convergence"] = {"sampling_mean": d_s.mean(0).tolist(), "denoising_mean": d_d.mean(0).tolist(),
                          "denoising_faster_share": float((d_d[:, inner] < d_s[:, inner]).mean())}
    # measured chromatography: pooled x0_hat settling, against the schedule's half-signal timesteps

    R = model.x_shape[-1]
    ms = [2 ** i for i in range(int(np.log2(R)) + 1) if R % 2 ** i == 0]
    settle = [[settle_timestep_pooled(tr.x0_hats, steps, m) for tr in trajectories] for m in ms]
    out["chromatography"] = {"m": ms, "settle_timestep_median": [float(np.median(s)) for s in settle],
                             "theory_half_signal": [half_signal_timestep(model.alphas_cumprod, m) for m in ms]}
    # frequency bands (any model)
    band_t = [[steps[min(settle_index(band_pass(tr.x0_hats, lo, hi).numpy(),
                                            band_pass(tr.x0_hats[-1:], lo, hi).numpy()[0],
                                            float(band_pass(tr.x0_hats[-1:], lo, hi).norm())), len(steps) - 1)]
               for tr in trajectories] for lo, hi in BANDS]
    out["bands"] = {"bands": [list(b) for b in BANDS], "commit_timestep_median": [float(np.median(b)) for b in band_t]}
    # perturbation impact (random directions; latent-basis v1 where given), at the report's timesteps
    its = [t for t in (impact_timesteps or steps[:-1]) if t != steps[-1]]
    imp = perturbation_impacts(model, trajectories, its, [(directions or {}).get(i, {}) for i in
                                                          range(len(trajectories))], prompt=prompt, guidance=guidance)
    out["perturbation"] = {"timesteps": its,
                           "random_mean": np.mean([p["random"] for p in imp], 0).tolist(),
                           "basis_mean": np.nanmean([p["basis"] for p in imp], 0).tolist() if directions else None}
    if progress:
        progress()
    if data is not None and not model.x_is_latent:
        mu, U, lam = gaussian_fit(data, pca=pca)
        kk = min(k, len(lam))
        comps = U.T[:kk].reshape(kk, *data.shape[1:])
        meas = np.stack([commit_timesteps(tr.x0_hats, steps, mu, comps, kk) for tr in trajectories])
        pred = predicted_commit_timesteps(model.alphas, model.sigmas, lam[:kk])
        out["commit"] = {"data_variances": lam[:kk].tolist(), "measured_median": np.median(meas, 0).tolist(),
                         "predicted": pred.tolist()}
        # the Gaussian closed form against the real trajectory, and the theory's perturbation gains
        rel = []
        for tr in trajectories:
            G = gaussian_trajectory(tr.xs[0], steps, model.alphas, model.sigmas, mu, U, lam).float()
            rel.append(((tr.xs - G).flatten(1).norm(dim=1) / tr.xs.flatten(1).norm(dim=1).clamp(min=1e-12)).numpy())
        out["gaussian"] = {"relative_distance_mean": np.mean(rel, 0).tolist(),
                           "early_median": float(np.median(np.stack(rel)[:, np.array(tf) >= EARLY]))}
        a, s = model.alphas.double(), model.sigmas.double()
        v = a[its][:, None] ** 2 * lam[None] + s[its][:, None] ** 2
        out["perturbation"]["gaussian_random"] = torch.sqrt((lam[None] / v).mean(1)).tolist()
        # the optimal (mean-shift) denoiser of the training set against the model's x0_hat
        dist = []
        for tr in trajectories[: min(4, len(trajectories))]:
            row = []
            for i, t in enumerate(steps):
                opt = optimal_denoiser(tr.xs[i], float(a[t]), float(s[t]), data)
                row.append(float((tr.x0_hats[i].double() - opt).norm() / opt.norm().clamp(min=1e-12)))
            dist.append(row)
        out["mean_shift"] = {"relative_distance_mean": np.mean(dist, 0).tolist(),
                             "late_median": float(np.median(np.array(dist)[:, np.array(tf) <= 0.2]))
                             if any(np.array(tf) <= 0.2) else float("nan")}
        if judge is not None:
            import time

            seeds = list(range(1000, 1000 + judge_samples))
            rows = []
            for f in TELEPORT_FRACTIONS:
                t0 = time.perf_counter()
                imgs = teleport(model, seeds, f, (mu, U, lam), prompt=prompt, guidance=guidance)
                rows.append({"fraction": f, "score": float(judge(imgs)), "seconds": time.perf_counter() - t0})
            out["teleport"] = rows
    return out
