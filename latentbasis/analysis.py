"""Geometry of the latent space over a grid of samples x timesteps (x prompts): bases, measurements, theory.

The grid is computed once into a cache of basis files (one per sample, timestep and prompt), so a report
re-renders without recomputing and an interrupted run resumes where it stopped. Under torch.distributed each
process takes its share of the (prompt, sample) pairs; all measurements are then read back from the cache.

Measurements (per timestep t, method.md "Analysis the paper reports"):
    spectrum            s_1(t) >= ... >= s_k(t), mean and spread over samples
    sample distances    d(A, B) = sqrt(sum_i theta_i^2) between samples' tangent (and latent) spaces,
                        beside the random-subspace baseline of the same dimensions
    timestep distances  d(T_a, T_b) between one sample's tangent spaces at timesteps a, b (a t x t matrix)
    frequency content   radial power spectrum of the latent basis vectors; fraction of energy with radial
                        frequency <= cutoff (cycles per pixel; Nyquist is 0.5)
    prompt distances    d between the tangent spaces of two prompts for the same seed and t (text models)
Theory (theory.md): g_i(t) = sqrt(abar_t) lam_i / (abar_t lam_i + 1 - abar_t) from the data's principal components,
and resolution chromatography rho_m(t) = SNR_m / (1 + SNR_m), SNR_m = m^2 abar_t / (1 - abar_t).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .atomic import write_text_atomic
from .describe import GROUPS, describe_basis, group_shares
from .errors import LatentBasisError
from .grassmann import geodesic_distance, random_subspace_distances

LOW_FREQUENCY_CUTOFF = 0.25  # cycles per pixel: half the Nyquist frequency


@dataclass
class GridSpec:
    """What to compute: bases at every (prompt, seed, timestep); timesteps descending."""

    seeds: list[int]
    timesteps: list[int]
    k: int = 8
    prompts: list[str | None] = field(default_factory=lambda: [None])
    guidance: float = 1.0
    num_steps: int = 100          # the DDIM grid of the trajectories (the timesteps are added to it)
    algorithm: str = "krylov"
    tol: float = 1e-3
    warm_start: bool = True       # start each timestep from the previous (larger) timestep's latent basis
    # text models: "own" samples x_t on each prompt's own guided trajectory; "shared" takes x_t from the
    # unconditional trajectory of the seed for every prompt, so prompts are compared at the very same point
    prompt_points: str = "own"

    def units(self) -> list[tuple[int, int]]:
        """(prompt index, seed) pairs: the unit of work (one trajectory, its timesteps in order)."""
        return [(p, s) for p in range(len(self.prompts)) for s in self.seeds]


def report_timesteps(T: int, n: int, t_max: float = 1.0, t_min: float = 0.1) -> list[int]:
    """n timesteps round(f (T - 1)) for fractions f evenly spaced from t_max down to t_min, descending."""
    if n < 2:
        raise LatentBasisError(f"--timesteps {n}: at least 2 timesteps are needed to compare them")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise LatentBasisError(f"timestep fractions must satisfy 0 <= t_min < t_max <= 1 (got {t_min}, {t_max})")
    ts = sorted({int(round(f * (T - 1))) for f in np.linspace(t_max, t_min, n)}, reverse=True)
    return ts


def _basis_path(cache: Path, p: int, seed: int, ts: int) -> Path:
    return cache / f"p{p}" / f"s{seed}" / f"t{ts:04d}.safetensors"


def _trajectory_path(cache: Path, p: int, seed: int) -> Path:
    return cache / f"p{p}" / f"s{seed}" / "trajectory.safetensors"


TRAJECTORY_FORMAT = "latentbasis.trajectory/1"


def save_trajectory(traj, path: Path, model_hash: str) -> None:
    """A kept trajectory (states and x0_hat at each, float32) as one safetensors file, written atomically."""
    from safetensors.torch import save_file

    from .atomic import atomic_path

    meta = {"format": TRAJECTORY_FORMAT, "timesteps": json.dumps(list(traj.timesteps)), "prompt": traj.prompt or "",
            "guidance": repr(float(traj.guidance)), "model_hash": model_hash}
    tensors = {"xs": traj.xs.float().contiguous(), "x0_hats": traj.x0_hats.float().contiguous(),
               "x0": traj.x0.float().contiguous()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_trajectory(path: Path, model):
    """A trajectory file, checked (format, the model's weights, shapes, finite values)."""
    from safetensors import safe_open

    from .sampling import Trajectory
    from .validate import finite_tensor, parse_json

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            t = {n: fh.get_tensor(n) for n in ("xs", "x0_hats", "x0")}
        steps = parse_json(meta.get("timesteps", "[]"), "timesteps")
    except Exception as e:
        raise LatentBasisError(f"{path} is not a readable trajectory file ({type(e).__name__}); remove the cache "
                               "folder") from None
    if meta.get("format") != TRAJECTORY_FORMAT or meta.get("model_hash") != model.model_hash:
        raise LatentBasisError(f"{path} is not a trajectory of this model; remove the cache folder")
    n = len(steps)
    if (not all(isinstance(v, int) and 0 <= v < model.num_train_timesteps for v in steps)
            or tuple(t["xs"].shape) != (n, *model.x_shape) or t["x0_hats"].shape != t["xs"].shape
            or tuple(t["x0"].shape) != tuple(model.x_shape)):
        raise LatentBasisError(f"{path} is inconsistent; remove the cache folder")
    for name, v in t.items():
        finite_tensor(v, f"{path}: {name}")
    return Trajectory(steps, t["xs"], t["x0"], meta.get("prompt") or None, float(meta.get("guidance", 1.0)),
                      t["x0_hats"])


def load_trajectories(model, spec: GridSpec, cache: str | os.PathLike, p: int = 0) -> list:
    """The kept trajectories of condition p, one per seed (in seed order)."""
    return [load_trajectory(_trajectory_path(Path(cache), p, s), model) for s in spec.seeds]


def _manifest(model, spec: GridSpec) -> dict:
    return {"format": "latentbasis.grid/1", "model": model.name, "model_hash": model.model_hash, **asdict(spec)}


def check_cache(model, spec: GridSpec, cache: str | os.PathLike) -> Path:
    """Create the cache folder, or check that an existing one was made with these settings."""
    cache = Path(cache)
    want = _manifest(model, spec)
    mpath = cache / "manifest.json"
    if mpath.exists():
        from .validate import read_json_object

        try:
            have = read_json_object(mpath, "report cache manifest")
        except LatentBasisError as e:
            raise LatentBasisError(f"{e}; remove the cache folder {cache}") from None
        keys = ("model_hash", "k", "prompts", "guidance", "num_steps", "algorithm", "tol", "warm_start",
                "prompt_points")
        have.setdefault("prompt_points", "own")  # caches from before the setting existed
        diff = [key for key in keys if have.get(key) != want[key]]
        if diff:
            raise LatentBasisError(f"the cache {cache} was made with other settings ({', '.join(diff)}); "
                                   "use another --out or remove it")
    cache.mkdir(parents=True, exist_ok=True)
    write_text_atomic(mpath, json.dumps(want, indent=1))
    return cache


def compute_grid(model, spec: GridSpec, cache: str | os.PathLike, *, rank: int = 0, world: int = 1,
                 progress: bool = True, callback=None) -> int:
    """Compute the bases of this process's share of the grid (units rank, rank + world, ...) into `cache`.

    Bases already in the cache are read, not recomputed (and still serve as the next timestep's warm start).
    Each file is written atomically, so an interrupted run leaves only whole files. Returns the number computed.
    callback(done, total): called after each basis of the share (the app's progress).
    """
    from tqdm.auto import tqdm

    from .basis import latent_basis
    from .basisfile import load_basis, save_basis
    from .sampling import sample_trajectory

    cache = Path(cache)
    mine = spec.units()[rank::world]
    total = len(mine) * len(spec.timesteps)
    bar = tqdm(total=total, desc="bases", disable=True if (not progress or rank != 0) else None, leave=False)
    computed, done = 0, [0]

    def advance(n: int) -> None:
        bar.update(n)
        done[0] += n
        if callback:
            callback(done[0], total)

    for p, seed in mine:
        prompt = spec.prompts[p]
        paths = [_basis_path(cache, p, seed, ts) for ts in spec.timesteps]
        tpath = _trajectory_path(cache, p, seed)
        if all(path.exists() for path in paths) and tpath.exists():
            advance(len(paths))
            continue
        if tpath.exists():
            traj = load_trajectory(tpath, model)
        elif spec.prompt_points == "shared" and prompt is not None:
            traj = sample_trajectory(model, seed, num_steps=spec.num_steps, prompt=None, through=spec.timesteps)
        else:
            traj = sample_trajectory(model, seed, num_steps=spec.num_steps, prompt=prompt, guidance=spec.guidance,
                                     through=spec.timesteps)
        if not tpath.exists():   # kept: the generation-geometry part of the report reads the states again
            save_trajectory(traj, tpath, model.model_hash)
        prev = None
        for ts, path in zip(spec.timesteps, paths):
            if path.exists():
                b = cached_basis(path, model, spec, seed, ts, prompt, traj.at(ts))
            else:
                init = prev.latent if (spec.warm_start and prev is not None) else None
                b = latent_basis(model, traj.at(ts), timestep=ts, k=spec.k, prompt=prompt,
                                 algorithm=spec.algorithm, tol=spec.tol, init=init)
                describe_basis(model, b)    # what each direction does (k JVPs), kept in the cached file
                b.extra = {"sample_seed": str(seed), "guidance": str(spec.guidance)}
                path.parent.mkdir(parents=True, exist_ok=True)
                save_basis(b, path)
                computed += 1
            prev = b
            advance(1)
    bar.close()
    return computed


def load_grid(model, spec: GridSpec, cache: str | os.PathLike) -> dict[tuple[int, int, int], object]:
    """Every basis of the grid from the cache, keyed (prompt index, seed, timestep)."""
    from .basisfile import load_basis

    cache = Path(cache)
    out = {}
    for p, seed in spec.units():
        tpath = _trajectory_path(cache, p, seed)
        traj = load_trajectory(tpath, model) if tpath.exists() else None
        for ts in spec.timesteps:
            path = _basis_path(cache, p, seed, ts)
            if not path.exists():
                raise LatentBasisError(f"{path} is missing: the grid is not complete (run the report again)")
            point = traj.at(ts) if traj is not None and ts in traj.timesteps else None
            out[p, seed, ts] = cached_basis(path, model, spec, seed, ts, spec.prompts[p], point)
    return out


def cached_basis(path: Path, model, spec: GridSpec, seed: int, ts: int, prompt: str | None, point=None):
    """A basis of the report cache, held to its key: this model and its default layer (load_basis), the entry's
    timestep, k and prompt, and, where the sample's trajectory is known, the x_t it was computed at. An entry that
    is not the one its place in the cache says (swapped, copied from another report) is refused, naming the field:
    the numbers of a report are never silently another sample's or timestep's."""
    from .basisfile import load_basis

    b = load_basis(path, model=model, layer=model.default_layer)
    for field, have, want in (("timestep", b.timestep, ts), ("k", b.k, spec.k), ("prompt", b.prompt or None,
                                                                                   prompt or None)):
        if have != want:
            raise LatentBasisError(f"the report cache entry {path} is not the basis of sample {seed} at timestep "
                                   f"{ts}: its {field} is {have[:40] if isinstance(have, str) else have!r}, {want!r} was expected; remove the "
                                   "cache folder to compute it again")
    if point is not None and not torch.allclose(b.point.float().cpu(), point.float().cpu(), rtol=1e-5, atol=1e-6):
        raise LatentBasisError(f"the report cache entry {path} was computed at another x_t than sample {seed}'s "
                               f"state at timestep {ts}; remove the cache folder to compute it again")
    return b


@contextlib.contextmanager
def distributed():
    """(rank, world): a gloo process group when launched by torchrun / accelerate (WORLD_SIZE > 1), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, 1
        return
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------- measurements (pure functions)

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


def data_pca(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of data [N, *x_shape]: (variances lam [r] descending, components [r, *x_shape]),
    r = min(N, D). From the eigendecomposition of the D x D covariance when N > D (8x faster than the SVD of the
    data for `shapes`: 9 s against 77 s on one core), else from the SVD."""
    X = images.reshape(len(images), -1).double()
    X = X - X.mean(0)
    if len(X) > X.shape[1]:
        lam, V = torch.linalg.eigh(X.T @ X / (len(X) - 1))
        lam, V = lam.flip(0).clamp(min=0), V.flip(1)
        return lam, V.T.reshape(len(lam), *images.shape[1:])
    _, S, Vh = torch.linalg.svd(X, full_matrices=False)
    lam = S ** 2 / (len(X) - 1)
    return lam, Vh.reshape(len(Vh), *images.shape[1:])


def gaussian_gains(alphas_cumprod: torch.Tensor, lam: torch.Tensor, timesteps: list[int]) -> np.ndarray:
    """g_i(t) = sqrt(abar_t) lam_i / (abar_t lam_i + 1 - abar_t) (theory.md), [len(timesteps), len(lam)]."""
    ab = alphas_cumprod.double()[torch.tensor(timesteps)][:, None]
    return (ab.sqrt() * lam[None].double() / (ab * lam[None].double() + 1 - ab)).numpy()


def signal_fraction(alphas_cumprod: torch.Tensor, m: int) -> np.ndarray:
    """rho_m(t) = SNR_m / (1 + SNR_m), SNR_m = m^2 abar_t / (1 - abar_t): the signal share of x_t average-pooled
    by m x m (pooling divides the noise variance by m^2), [T]."""
    ab = alphas_cumprod.double()
    snr = m ** 2 * ab / (1 - ab)
    return (snr / (1 + snr)).numpy()


def half_signal_timestep(alphas_cumprod: torch.Tensor, m: int) -> int | None:
    """The first timestep at which rho_m(t) < 1/2: where resolution m x m stops being mostly signal
    (None when it never does, e.g. coarse resolutions under Stable Diffusion's schedule)."""
    rho = signal_fraction(alphas_cumprod, m)
    below = np.nonzero(rho < 0.5)[0]
    return None if len(below) == 0 else int(below[0])


def generation_rate(alphas_cumprod: torch.Tensor, m: int) -> np.ndarray:
    """r_m(t) = -d rho_m / dt (per timestep, central differences), [T]."""
    return -np.gradient(signal_fraction(alphas_cumprod, m))


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
            f"this report has {ns} x {nt} (run it with --samples {max(ns, MIN_SAMPLES)} --timesteps "
            f"{max(nt, MIN_TIMESTEPS)})")


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


def _training_config(model) -> dict | None:
    """The training config of a model latentbasis trained (its training_log.json), or None."""
    if not getattr(model, "path", None):
        return None
    log = Path(model.path) / "training_log.json"
    if not log.exists():
        return None
    from .validate import read_json_object

    try:
        cfg = read_json_object(log, "training log")["config"]
    except (LatentBasisError, KeyError):
        return None
    return cfg if isinstance(cfg, dict) else None


def dataset_of(model) -> str | None:
    """The name of the bundled dataset a model was trained on (digits, shapes, ...), or None."""
    from .train import PRESETS

    cfg = _training_config(model)
    return cfg.get("dataset") if cfg and cfg.get("dataset") in PRESETS else None


def training_data(model) -> torch.Tensor | None:
    """The images a bundled model was trained on ([N, *x_shape] in [-1, 1]), from its training_log.json, or None
    (a user's checkpoint, or a latent model: the data PCA overlay then is left out)."""
    if model.x_is_latent or dataset_of(model) is None:
        return None
    from .train import PRESETS, load_dataset

    cfg = _training_config(model)
    settings = {"dataset": cfg["dataset"], "seed": int(cfg.get("seed", 0)), "resolution": model.x_shape[-1]}
    return load_dataset(replace(PRESETS[cfg["dataset"]], **settings))[0]
