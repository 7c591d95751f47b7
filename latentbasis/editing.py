"""Edits along the latent basis at (x_t, t), then DDIM from t down to 0 on the trajectory's own grid.

A direction is d = sum_i strength_i v_i (v_i rows of a latent basis at x_t). Two ways to move x_t along it:
- "guidance" (the published x-space guidance, Park et al. 2023): z_0 = x_t, then n times
      z <- z + scale * (eps(z + step * d, t) - eps(z, t))
  (step 1; scale 0.1 for pixel models, 1 for latent models). eps is the network's, converted from whatever it
  predicts (schedules.to_eps_x0). For a velocity (flow-matching) model eps = x + (1 - s_t) v, so the update reads
      z <- z + scale * (step * d + (1 - s_t) (v(z + step * d, t) - v(z, t)))
  the published eps update exactly, written in the velocity;
- "direct": x_t + d, optionally rescaled to keep ||x_t|| (x_t of a Gaussian sampler lives near a sphere).
Carrying directions to another point: latentbasis.transport; motions of a region's content: latentbasis.motion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import devices, validate
from .devices import format_bytes
from .errors import LatentBasisError
from .images import x_to_image
from .jacobian import SLACK, forward_peak_bytes
from .sampling import Trajectory, denoise, predict_eps

METHODS = ("guidance", "direct")


@dataclass
class EditSettings:
    method: str = "guidance"
    n_iter: int = 16          # guidance iterations (64 with an edit prompt in the paper)
    step: float = 1.0         # guidance: eps is probed at z + step * d
    scale: float | None = None  # guidance: None -> 0.1 for pixel models, 1.0 for latent (VAE) models
    keep_norm: bool = False   # direct: rescale to ||x_t||

    def resolved_scale(self, model) -> float:
        if self.scale is not None:
            return float(self.scale)
        return 1.0 if model.x_is_latent else 0.1


def guidance_edit(model, x_t: torch.Tensor, timestep: int, d: torch.Tensor, *, n_iter: int = 16, step: float = 1.0,
                  scale: float = 0.1, prompt: str | None = None, progress=None) -> torch.Tensor:
    """x-space guidance for a batch: x_t [*x_shape], d [B, *x_shape] -> z [B, *x_shape] (eq. in the module doc),
    run on the model's device (eps from any prediction type, latentbasis.schedules), returned on the CPU.
    Both eps evaluations of an iteration go in one batch of 2B."""
    d = d.to(model.device, torch.float32)
    z = x_t.to(model.device, torch.float32).expand_as(d).clone()
    B = d.shape[0]
    for _ in range(n_iter):
        eps = predict_eps(model, torch.cat([z + step * d, z]), timestep, prompt)
        z = z + scale * (eps[:B] - eps[B:])
        if progress:
            progress(1)
    return z.cpu()


def direct_edit(x_t: torch.Tensor, d: torch.Tensor, keep_norm: bool = False) -> torch.Tensor:
    """x_t + d for d [B, *x_shape]; with keep_norm each row is rescaled to ||x_t||."""
    z = x_t + d
    if keep_norm:
        z = z * (x_t.norm() / z.flatten(1).norm(dim=1)).view(-1, *[1] * x_t.dim())
    return z


def edit_images(model, traj: Trajectory, timestep: int, d: torch.Tensor, settings: EditSettings | None = None,
                clip_denoised: bool = True, progress=None) -> torch.Tensor:
    """Images x0 [B, *x_shape] for directions d [B, *x_shape] applied at `timestep` of a kept trajectory.

    Only the steps from `timestep` down to 0 are re-run, in one batch (in as many as the model's memory budget
    needs, edit_rows_at_once). A row of d that is exactly zero is the identity edit: with clip_denoised (as the
    trajectory's own image) it returns that image, bit for bit (for an inverted real image there is no single such
    image, and strength 0 is the reconstruction from t).
    progress: called with 1 after each batched network step (edit_steps(...) of them).
    """
    model = validate.model(model)
    settings = settings or EditSettings()
    if settings.method not in METHODS:
        raise LatentBasisError(f"unknown edit method {settings.method!r}; choose one of {', '.join(METHODS)}")
    d = validate.directions(d, tuple(traj.xs.shape[1:]), "the edit's directions d")
    i = traj.index(timestep)
    x_t = traj.xs[i]
    out = torch.empty_like(d)
    moving = d.flatten(1).abs().amax(dim=1) > 0
    if traj.x0 is None or not clip_denoised:
        moving = torch.ones_like(moving)
    else:
        out[~moving] = traj.x0
    if moving.any():
        dm = d[moving]
        rows = edit_rows_at_once(model, x_t, timestep, traj.prompt, traj.guidance, len(dm))
        advance = _per_chunk(progress, -(-len(dm) // rows))
        done = []
        for chunk in dm.split(rows):
            if settings.method == "guidance":
                z = guidance_edit(model, x_t, timestep, chunk, n_iter=settings.n_iter, step=settings.step,
                                  scale=settings.resolved_scale(model), prompt=traj.prompt, progress=advance)
            else:
                z = direct_edit(x_t, chunk, settings.keep_norm)
            done.append(denoise(model, z, traj.timesteps[i:], traj.prompt, traj.guidance, clip_denoised,
                                progress=advance))
        out[moving] = torch.cat(done)
    return out


def edit_pairs(model, traj: Trajectory, timestep: int, latent: torch.Tensor, strength: float,
               settings: EditSettings | None = None, progress=None) -> torch.Tensor:
    """Every direction of `latent` [k, *x_shape] edited at -strength and +strength (edit_images, one call):
    pixels [k, 2, C, H, W] in [-1, 1], [:, 0] at -strength, [:, 1] at +strength (the app's previews, and what
    registration.describe_by_edits registers)."""
    k = latent.shape[0]
    d = sweep_directions(latent, list(range(k)), [-float(strength), float(strength)])
    images = x_to_image(model, edit_images(model, traj, timestep, d, settings, progress=progress))
    return images.reshape(k, 2, *images.shape[1:])


# What one edit row holds at its peak, in plain forwards' live tensors at batch 1 (forward_peak_bytes): the guidance
# evaluates eps at z + step d and at z in one batch, and the rows' states, directions and outputs stay beside it.
# Measured on the resident set with the 25M-parameter U-Net at 64x64 of tests/test_devices.py: 16 rows at once
# held 35.5 MiB a row, 3.2 forward peaks (11.0 MiB). Rounded up:
EDIT_PEAKS = 4.0


def edit_row_bytes(model, x_t: torch.Tensor, timestep: int, prompt: str | None, guidance: float) -> int:
    """The memory one edit row holds at its peak: EDIT_PEAKS times the live tensors of one plain forward."""
    x = x_t.to(model.device, torch.float32)[None]
    return int(EDIT_PEAKS * forward_peak_bytes(lambda z: predict_eps(model, z, timestep, prompt, guidance), x))


def edit_rows_at_once(model, x_t: torch.Tensor, timestep: int, prompt: str | None, guidance: float,
                      n: int) -> int:
    """How many of n edit rows go through the network at once: all of them without a memory budget
    (model.max_memory None); under one, as many as it holds beside what the process holds now and the products'
    SLACK, at edit_row_bytes each. A budget too small for one row is one clear error."""
    budget = getattr(model, "max_memory", None)
    if budget is None or n <= 1:
        return max(n, 1)
    per_row = edit_row_bytes(model, x_t, timestep, prompt, guidance)
    free = budget - devices.memory_in_use(model.device) - SLACK
    if free < per_row:
        raise LatentBasisError(f"the memory budget {format_bytes(budget)} (max_memory) is too small for one edit "
                               f"of this model, which needs about {format_bytes(per_row)} beside the "
                               f"{format_bytes(budget - free - SLACK)} in use: raise max_memory")
    return int(max(1, min(n, free // max(per_row, 1))))


def _per_chunk(progress, chunks: int):
    """progress(k) for edit_images' steps when its rows run in `chunks` batches: every chunk makes all the steps,
    so they are counted in whole steps of the whole edit (edit_steps of them in all, as for one batch)."""
    if progress is None or chunks <= 1:
        return progress
    count = [0, 0]       # steps made by all chunks, whole steps reported

    def step(k: int = 1) -> None:
        count[0] += k
        whole = count[0] // chunks
        if whole > count[1]:
            progress(whole - count[1])
            count[1] = whole
    return step


def edit_steps(traj: Trajectory, timestep: int, settings: EditSettings) -> int:
    """How many batched network steps edit_images makes at `timestep` (for progress bars)."""
    return (settings.n_iter if settings.method == "guidance" else 0) + len(traj.timesteps) - traj.index(timestep)


def combine(latent: torch.Tensor, weights: dict[int, float]) -> torch.Tensor:
    """d = sum_i w_i v_i for {index: strength}; latent [k, *x_shape]. An index is a whole number 0..k-1, a
    strength a finite number within the library's bounds (validate.strength); else one message."""
    k = latent.shape[0]
    d = torch.zeros_like(latent[0])
    if not isinstance(weights, dict):
        raise LatentBasisError(f"the weights must be a dict {{direction index: strength}}, got {type(weights).__name__}")
    for i, w in weights.items():
        i = validate.number(i, "a direction index", integer=True)
        if not 0 <= i < k:
            raise LatentBasisError(f"direction index {i} is out of range: the basis has k = {k} (indices 0..{k - 1})")
        d = d + validate.strength(w, f"the strength of direction {i + 1}") * latent[i]
    return d


def sweep_directions(latent: torch.Tensor, indices: list[int], strengths: list[float]) -> torch.Tensor:
    """Rows strength * v_i for every (i, strength), i-major: [len(indices) * len(strengths), *x_shape]; indices
    and strengths as combine checks them, at least one of each."""
    if not list(indices) or not list(strengths):
        raise LatentBasisError("give at least one direction and one strength")
    rows = [combine(latent, {i: s}) for i in indices for s in strengths]
    return torch.stack(rows)


def preview_images(model, traj: Trajectory, timestep: int, d: torch.Tensor, settings: EditSettings | None = None,
                   steps: int = 6) -> torch.Tensor:
    """A quick look at edits (what a slider shows at once): the same edits at x_t as edit_images, then DDIM in
    `steps` steps from `timestep` to 0 (evenly spaced, rounded) instead of the trajectory's own grid. [B, *x_shape]"""
    i = traj.index(timestep)
    coarse = sorted({int(round(v)) for v in np.linspace(timestep, 0, steps + 1)}, reverse=True)
    quick = Trajectory(coarse, traj.xs[i][None].expand(len(coarse), *traj.xs.shape[1:]), None, traj.prompt,
                       traj.guidance)
    return edit_images(model, quick, timestep, d, settings)
