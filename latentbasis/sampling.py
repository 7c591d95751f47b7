"""Deterministic DDIM (eta = 0) on a timestep grid of our choosing, so x_t lands exactly on the t asked for.

    x0_hat = (x_a - sqrt(1 - abar_a) eps) / sqrt(abar_a)
    x_b    = sqrt(abar_b) x0_hat + sqrt(1 - abar_b) eps                 (Song et al. 2021, eq. 12, sigma = 0)
with eps = eps_theta(x_a, a) (classifier-free guided for text models: eps_u + w (eps_c - eps_u)).
Where the model's scheduler config asks for clip_sample (diffusers' DDPM default for pixel models), x0_hat is
clamped to [-r, r] and eps recomputed from it, as diffusers' DDIMScheduler does; the step stays deterministic.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .errors import LatentBasisError
from .models import resolve_timestep


def ddim_timesteps(start: int, stop: int, num_steps: int) -> list[int]:
    """The sampler's timesteps: round(linspace(start, stop, num_steps)) descending, repeats removed.

    num_steps counts model evaluations, as diffusers' num_inference_steps does: a 50-step sampler from T-1 to 0
    visits 50 timesteps and makes 49 transitions (theory.md's reference values use this grid).
    """
    grid = torch.linspace(float(start), float(stop), max(2, num_steps)).round().long().tolist()
    return sorted(set(grid), reverse=True)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_from: torch.Tensor, abar_to: torch.Tensor,
              clip: float | None = None) -> torch.Tensor:
    """One deterministic DDIM step from noise level abar_from to abar_to (either direction: also inversion).

    clip = r: x0_hat is clamped to [-r, r] and eps := (x - sqrt(abar_from) x0_hat) / sqrt(1 - abar_from), so the
    step stays on the line through x and the clamped x0_hat (no-op where x0_hat is inside the range)."""
    x0 = (x - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
    if clip is not None and abar_from < 1:
        x0 = x0.clamp(-clip, clip)
        eps = (x - abar_from.sqrt() * x0) / (1 - abar_from).sqrt()
    return abar_to.sqrt() * x0 + (1 - abar_to).sqrt() * eps


@torch.no_grad()
def predict_eps(model, x: torch.Tensor, timestep: int, prompt: str | None = None, guidance: float = 1.0):
    """eps_theta(x, t) for a batch x [B, *x_shape]; classifier-free guidance for text models when guidance != 1."""
    t = torch.full((x.shape[0],), int(timestep), dtype=torch.long)
    cond = model.encode_prompt(prompt)  # None for pixel models, which refuse a prompt
    if cond is None:
        return model.eps(x, t)
    eps_c = model.eps(x, t, cond.expand(x.shape[0], -1, -1))
    if guidance == 1.0:
        return eps_c
    eps_u = model.eps(x, t, model.encode_prompt("").expand(x.shape[0], -1, -1))
    return eps_u + guidance * (eps_c - eps_u)


def initial_noise(model, seed: int) -> torch.Tensor:
    """x_T ~ N(0, I) of the model's x shape from a seed (CPU generator: the same on every machine)."""
    return torch.randn(model.x_shape, generator=torch.Generator().manual_seed(int(seed)))


def sample_to(model, seed: int = 0, *, t: float | None = None, timestep: int | None = None, num_steps: int = 100,
              prompt: str | None = None, guidance: float = 1.0) -> torch.Tensor:
    """x_t on the DDIM trajectory of `seed`: x_T ~ N(0, I), then DDIM down to t over the part of
    trajectory_grid(T, num_steps, t) above t; the same x_t as sample_trajectory(..., through=t). [*x_shape]."""
    T = model.num_train_timesteps
    ts, _ = resolve_timestep(T, fraction=t, timestep=timestep)
    grid = [g for g in trajectory_grid(T, num_steps, ts) if g >= ts]
    return ddim_walk(model, initial_noise(model, seed)[None], grid, prompt, guidance)[-1][0]


def ddim_walk(model, x: torch.Tensor, grid: list[int], prompt: str | None = None,
              guidance: float = 1.0) -> list[torch.Tensor]:
    """DDIM (eta = 0) from x [B, *x_shape] at grid[0] through every timestep of `grid` (descending);
    returns the states at each, [x at grid[0], ..., x at grid[-1]]."""
    ab = model.alphas_cumprod.to(torch.float64)
    clip = model.clip_sample
    states = [x]
    for a, b in zip(grid[:-1], grid[1:]):
        eps = predict_eps(model, x, a, prompt, guidance).to(torch.float64)
        x = ddim_step(x.to(torch.float64), eps, ab[a], ab[b], clip).to(torch.float32)
        states.append(x)
    return states


@dataclass
class Trajectory:
    """A DDIM trajectory with every x_t kept: xs[i] is x at timesteps[i] (descending, T-1 ... 0); x0 the image.
    An edit at timesteps[i] re-runs only the steps from there down to 0."""

    timesteps: list[int]
    xs: torch.Tensor             # [len(timesteps), *x_shape]
    x0: torch.Tensor | None      # [*x_shape] the image the states lead to (None for an inversion: it depends on t)
    prompt: str | None = None
    guidance: float = 1.0

    def index(self, timestep: int) -> int:
        if timestep not in self.timesteps:
            raise LatentBasisError(f"timestep {timestep} is not on this trajectory's grid")
        return self.timesteps.index(timestep)

    def at(self, timestep: int) -> torch.Tensor:
        return self.xs[self.index(timestep)]


def trajectory_grid(T: int, num_steps: int, through: int | Iterable[int] | None = None) -> list[int]:
    """The num_steps grid over [T-1, 0] with `through` (one timestep or several) added, so a trajectory passes
    exactly through the timestep of an edit or a basis (sample_to and sample_trajectory then reach the same x_t
    bit for bit when `through` is the one timestep)."""
    grid = set(ddim_timesteps(T - 1, 0, num_steps))
    if through is not None:
        grid.update([int(through)] if isinstance(through, int) else (int(t) for t in through))
    return sorted(grid, reverse=True)


def denoise(model, x: torch.Tensor, grid: list[int], prompt: str | None = None, guidance: float = 1.0,
            clip_denoised: bool = True, keep: bool = False):
    """DDIM over `grid` (descending, ending at 0) from x [B, *x_shape] at grid[0], then the final step to x0:
    x0 = (x_0 - sqrt(1 - abar_0) eps) / sqrt(abar_0). Returns x0 [B, ...] (and the kept states [len(grid), B, ...])."""
    kept = ddim_walk(model, x, grid, prompt, guidance)
    x0 = predict_x0(model, kept[-1], grid[-1], prompt, guidance)
    x0 = x0.clamp(-1, 1) if clip_denoised else x0
    return (x0, torch.stack(kept)) if keep else x0


def predict_x0(model, x: torch.Tensor, timestep: int, prompt: str | None = None, guidance: float = 1.0):
    """The denoised estimate x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): a DDIM step to abar = 1."""
    ab = model.alphas_cumprod.to(torch.float64)[timestep]
    eps = predict_eps(model, x, timestep, prompt, guidance).to(torch.float64)
    return ddim_step(x.to(torch.float64), eps, ab, torch.tensor(1.0, dtype=torch.float64), model.clip_sample).float()


def sample_trajectory(model, seed: int = 0, *, num_steps: int = 100, prompt: str | None = None,
                      guidance: float = 1.0, through: int | Iterable[int] | None = None) -> Trajectory:
    """x_T ~ N(0, I) from the seed, DDIM (eta = 0) over trajectory_grid(T, num_steps, through), states kept."""
    grid = trajectory_grid(model.num_train_timesteps, num_steps, through)
    x0, kept = denoise(model, initial_noise(model, seed)[None], grid, prompt, guidance, keep=True)
    return Trajectory(grid, kept[:, 0], x0[0], prompt, guidance)


@torch.no_grad()
def invert(model, x0: torch.Tensor, *, num_steps: int = 100, prompt: str | None = None,
           through: int | None = None) -> Trajectory:
    """Deterministic DDIM inversion of an image x0 [*x_shape] to x_{T-1}, every state kept (as a Trajectory).

    Each step runs the DDIM update upwards with eps evaluated at the lower point (the usual approximation):
    x_b = sqrt(abar_b) x0_hat(x_a) + sqrt(1 - abar_b) eps(x_a, a), a < b; the first step goes from abar = 1 (the
    image) to timestep 0 with eps(x0, 0). No guidance (eps of the prompt alone), as inversion needs.
    """
    grid = trajectory_grid(model.num_train_timesteps, num_steps, through)
    up = grid[::-1]
    ab = model.alphas_cumprod.to(torch.float64)
    clip = model.clip_sample
    x = x0[None].to(torch.float64)
    eps = predict_eps(model, x.float(), up[0], prompt).to(torch.float64)
    x = ddim_step(x, eps, torch.tensor(1.0, dtype=torch.float64), ab[up[0]])
    kept = [x.float()]
    for a, b in zip(up[:-1], up[1:]):
        eps = predict_eps(model, x.float(), a, prompt).to(torch.float64)
        x = ddim_step(x, eps, ab[a], ab[b], clip)
        kept.append(x.float())
    return Trajectory(grid, torch.stack(kept[::-1])[:, 0], None, prompt, 1.0)


def generate(model, seeds: list[int], *, num_steps: int = 50, prompt: str | None = None, guidance: float = 1.0,
             clip_denoised: bool = True) -> torch.Tensor:
    """Images x0 [len(seeds), *x_shape] in one batch: DDIM over linspace(T-1, 0, num_steps), then the final
    denoising step x0 = (x_0 - sqrt(1 - abar_0) eps) / sqrt(abar_0). clip_denoised clamps x0 to [-1, 1]
    (pixel models). Seed i gives the same image alone or in a batch up to rounding (CPU kernels are not
    bit-identical across batch positions)."""
    x = torch.stack([initial_noise(model, s) for s in seeds])
    grid = ddim_timesteps(model.num_train_timesteps - 1, 0, num_steps)
    return denoise(model, x, grid, prompt, guidance, clip_denoised)
