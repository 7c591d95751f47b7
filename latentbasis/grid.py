"""The grid of bases over samples x timesteps (x prompts) that the report reads, kept in a cache on disk.

The grid is computed once into a cache of basis files (one per sample, timestep and prompt), so a report
re-renders without recomputing and an interrupted run resumes where it stopped. Under torch.distributed each
process takes its share of the (prompt, sample) pairs; all measurements are then read back from the cache.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path, write_text_atomic
from .basis import latent_basis
from .basisfile import load_basis, save_basis
from .describe import describe_basis
from .errors import LatentBasisError
from .sampling import Trajectory, sample_trajectory
from .validate import finite_tensor, parse_json, read_json_object, regular_file


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
        raise LatentBasisError(f"timesteps = {n}: at least 2 timesteps are needed to compare them")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise LatentBasisError(f"timestep fractions must satisfy 0 <= t_min < t_max <= 1 (got {t_min}, {t_max})")
    ts = sorted({int(round(f * (T - 1))) for f in np.linspace(t_max, t_min, n)}, reverse=True)
    return ts


def _basis_path(cache: Path, p: int, seed: int, ts: int) -> Path:
    return cache / f"p{p}" / f"s{seed}" / f"t{ts:04d}.safetensors"


def _trajectory_path(cache: Path, p: int, seed: int) -> Path:
    return cache / f"p{p}" / f"s{seed}" / "trajectory.safetensors"


TRAJECTORY_FORMAT = "latentbasis.trajectory/1"


def save_trajectory(traj, path: Path, model) -> None:
    """A kept trajectory (states and x0_hat at each, float32) as one safetensors file, written atomically after
    load_trajectory has read the temporary file back: one that a later run would refuse (a NaN from a broken model)
    is one message now and no file, not a cache that stops the next report."""
    from safetensors.torch import save_file

    meta = {"format": TRAJECTORY_FORMAT, "timesteps": json.dumps(list(traj.timesteps)), "prompt": traj.prompt or "",
            "guidance": repr(float(traj.guidance)), "model_hash": model.model_hash}
    tensors = {"xs": traj.xs.float().contiguous(), "x0_hats": traj.x0_hats.float().contiguous(),
               "x0": traj.x0.float().contiguous()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        try:
            load_trajectory(tmp, model)
        except LatentBasisError as e:
            raise LatentBasisError(f"{path} was not written: the trajectory would not load back "
                                   f"({str(e).replace(str(tmp), 'the file')})") from None


def load_trajectory(path: Path, model):
    """A trajectory file, checked (format, the model's weights, shapes, finite values)."""
    from safetensors import safe_open

    regular_file(path, "trajectory file")
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
                                   "use another output folder or remove it")
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
            save_trajectory(traj, tpath, model)
        prev = None
        for ts, path in zip(spec.timesteps, paths):
            if path.exists():
                b = cached_basis(path, model, spec, seed, ts, prompt, traj.at(ts))
            else:
                init = prev.latent if (spec.warm_start and prev is not None) else None
                b = latent_basis(model, traj.at(ts), timestep=ts, k=spec.k, prompt=prompt,
                                 algorithm=spec.algorithm, tol=spec.tol, init=init)
                describe_basis(model, b, conditions=False)    # what each direction does (k JVPs), cached
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
    b = load_basis(path, model=model, layer=model.default_layer)
    for name, have, want in (("timestep", b.timestep, ts), ("k", b.k, spec.k), ("prompt", b.prompt or None,
                                                                                  prompt or None)):
        if have != want:
            raise LatentBasisError(f"the report cache entry {path} is not the basis of sample {seed} at timestep "
                                   f"{ts}: its {name} is {have[:40] if isinstance(have, str) else have!r}, {want!r} was expected; remove the "
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
