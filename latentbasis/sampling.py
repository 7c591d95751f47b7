"""Deterministic sampling (DDIM, eta = 0; Euler for flow models) on a timestep grid of our choosing, so x_t lands
exactly on the t asked for.

    (eps, x0_hat) = the network's output at (x_a, a), converted from its prediction type (schedules.to_eps_x0)
    x_b    = alpha_b x0_hat + sigma_b eps        (Song et al. 2021, eq. 12, eta = 0; the Euler step for flow models)
(classifier-free guided for text models: o_u + w (o_c - o_u) on the network output o).
Where the model's scheduler config asks for clip_sample (diffusers' DDPM default for pixel models), x0_hat is
clamped to [-r, r] and eps recomputed from it, as diffusers' DDIMScheduler does; the step stays deterministic.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .errors import LatentBasisError
from .images import image_to_x, pixel_size, read_image
from .loading import resolve_timestep
from .validate import integer, model as check_model, sampling_options
from .schedules import clip_x0, ddim_update, to_eps_x0


def ddim_timesteps(start: int, stop: int, num_steps: int) -> list[int]:
    """The sampler's timesteps: round(linspace(start, stop, num_steps)) descending, repeats removed.

    num_steps counts model evaluations, as diffusers' num_inference_steps does: a 50-step sampler from T-1 to 0
    visits 50 timesteps and makes 49 transitions (theory.md's reference values use this grid).
    """
    grid = torch.linspace(float(start), float(stop), max(2, num_steps)).round().long().tolist()
    return sorted(set(grid), reverse=True)


@torch.no_grad()
def predict(model, x: torch.Tensor, timestep: int, prompt: str | None = None,
            guidance: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0_hat) of the network at x [B, *x_shape] and an integer timestep, in the model's math dtype on its
    device, whatever its prediction type (schedules.to_eps_x0). Text models: classifier-free guidance
    o_u + w (o_c - o_u) on the network output when guidance != 1 (as diffusers' pipelines guide it)."""
    x = x.to(model.device, torch.float32)
    t = torch.full((x.shape[0],), int(timestep), dtype=torch.long, device=model.device)
    cond = model.encode_prompt(prompt)  # None for unconditional models, which refuse a prompt
    model.require_weights("the network's whole forward (sampling, editing)")
    out = model.network(x, t, cond).to(model.math_dtype)
    if cond is not None and guidance != 1.0:
        out_u = model.network(x, t, model.encode_prompt("")).to(model.math_dtype)
        out = out_u + guidance * (out - out_u)
    return to_eps_x0(out, x.to(model.math_dtype), *model.level(timestep), model.prediction_type)


def predict_eps(model, x: torch.Tensor, timestep: int, prompt: str | None = None, guidance: float = 1.0):
    """eps_theta(x, t) for a batch x [B, *x_shape] (any prediction type), float32 on the model's device."""
    return predict(model, x, timestep, prompt, guidance)[0].float()


def _step(model, x: torch.Tensor, a: int, to: tuple[torch.Tensor, torch.Tensor], prompt, guidance,
          clip) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic step of x (on the device) from timestep a to the level to = (alpha, sigma); x0_hat clamped
    where asked (schedules: DDIM for a VP model, Euler for a flow model). Returns (the next x, x0_hat at x)."""
    x = x.to(model.device)   # states may be kept on the CPU (trajectories); the step runs where the model is
    eps, x0 = predict(model, x, a, prompt, guidance)
    eps, x0 = clip_x0(x.to(model.math_dtype), eps, x0, *model.level(a), clip)
    return ddim_update(eps, x0, *to).float(), x0.float()


def initial_noise(model, seed: int) -> torch.Tensor:
    """x_T ~ N(0, I) of the model's x shape from a seed (CPU generator: the same on every machine)."""
    return torch.randn(model.x_shape, generator=torch.Generator().manual_seed(int(seed)))


def sample_to(model, seed: int = 0, *, t: float | None = None, timestep: int | None = None, num_steps: int = 100,
              prompt: str | None = None, guidance: float = 1.0, progress=None) -> torch.Tensor:
    """x_t on the DDIM trajectory of `seed`: x_T ~ N(0, I), then DDIM down to t over the part of
    trajectory_grid(T, num_steps, t) above t; the same x_t as sample_trajectory(..., through=t). [*x_shape]."""
    model = check_model(model)
    sampling_options(seed=seed, steps=num_steps, guidance=guidance)
    T = model.num_train_timesteps
    ts, _ = resolve_timestep(T, fraction=t, timestep=timestep)
    grid = [g for g in trajectory_grid(T, num_steps, ts) if g >= ts]
    return ddim_walk(model, initial_noise(model, seed)[None], grid, prompt, guidance, progress)[-1][0]


def ddim_walk(model, x: torch.Tensor, grid: list[int], prompt: str | None = None,
              guidance: float = 1.0, progress=None, denoised: list | None = None) -> list[torch.Tensor]:
    """DDIM (eta = 0) from x [B, *x_shape] at grid[0] through every timestep of `grid` (descending);
    returns the states at each, [x at grid[0], ..., x at grid[-1]] (float32, on the CPU; the walk itself runs on
    the model's device). progress: called with 1 after each network step (a progress bar's update). denoised: a
    list that receives x0_hat at each state but the last (float32, CPU), when given."""
    states = [x.float().cpu()]
    x = x.to(model.device, torch.float32)
    for a, b in zip(grid[:-1], grid[1:]):
        x, x0 = _step(model, x, a, model.level(b), prompt, guidance, model.clip_sample)
        states.append(x.cpu())
        if denoised is not None:
            denoised.append(x0.cpu())
        if progress:
            progress(1)
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
    x0_hats: torch.Tensor | None = None   # [len(timesteps), *x_shape] x0_hat at each state (sampled trajectories)

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
        wanted = [through] if not isinstance(through, Iterable) or isinstance(through, str) else list(through)
        grid.update(integer(t, "a timestep the trajectory passes through", 0, T - 1) for t in wanted)
    return sorted(grid, reverse=True)


def denoise(model, x: torch.Tensor, grid: list[int], prompt: str | None = None, guidance: float = 1.0,
            clip_denoised: bool = True, keep: bool = False, progress=None):
    """DDIM over `grid` (descending, ending at 0) from x [B, *x_shape] at grid[0], then the final step to x0:
    x0 = (x_0 - sqrt(1 - abar_0) eps) / sqrt(abar_0). Returns x0 [B, ...] (with keep: also the states and x0_hat at
    each, both [len(grid), B, ...])."""
    hats: list = []
    kept = ddim_walk(model, x, grid, prompt, guidance, progress, denoised=hats if keep else None)
    x0 = predict_x0(model, kept[-1], grid[-1], prompt, guidance)
    if progress:
        progress(1)
    if keep:
        hats.append(x0)
    x0 = x0.clamp(-1, 1) if clip_denoised else x0
    return (x0, torch.stack(kept), torch.stack(hats)) if keep else x0


def predict_x0(model, x: torch.Tensor, timestep: int, prompt: str | None = None, guidance: float = 1.0):
    """The denoised estimate x0_hat(x_t) of the network (clamped where the config asks): a DDIM step to abar = 1.
    [B, *x_shape] float32 on the CPU."""
    return _step(model, x, timestep, _image_level(model), prompt, guidance, model.clip_sample)[0].cpu()


def _image_level(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The level (alpha, sigma) = (1, 0) of the image itself."""
    one = torch.ones((), dtype=model.math_dtype, device=model.device)
    return one, torch.zeros_like(one)


def sample_trajectory(model, seed: int = 0, *, num_steps: int = 100, prompt: str | None = None,
                      guidance: float = 1.0, through: int | Iterable[int] | None = None, progress=None) -> Trajectory:
    """x_T ~ N(0, I) from the seed, DDIM (eta = 0) over trajectory_grid(T, num_steps, through), states kept
    (len(grid) network steps: progress(1) after each)."""
    model = check_model(model)
    sampling_options(seed=seed, steps=num_steps, guidance=guidance)
    grid = trajectory_grid(model.num_train_timesteps, num_steps, through)
    x0, kept, hats = denoise(model, initial_noise(model, seed)[None], grid, prompt, guidance, keep=True,
                             progress=progress)
    return Trajectory(grid, kept[:, 0], x0[0], prompt, guidance, hats[:, 0])


@torch.no_grad()
def invert(model, x0: torch.Tensor, *, num_steps: int = 100, prompt: str | None = None,
           through: int | None = None, progress=None) -> Trajectory:
    """Deterministic DDIM inversion of an image x0 [*x_shape] to x_{T-1}, every state kept (as a Trajectory).

    Each step runs the DDIM update upwards with (eps, x0_hat) evaluated at the lower point (the usual
    approximation): x_b = sqrt(abar_b) x0_hat(x_a) + sqrt(1 - abar_b) eps(x_a, a), a < b; the first step goes from
    the image (abar = 1) to the first timestep with eps(image, t). No guidance (the prompt alone), as inversion
    needs. States float32 on the CPU.
    """
    grid = trajectory_grid(model.num_train_timesteps, num_steps, through)
    up = grid[::-1]
    x = x0[None].to(model.device, torch.float32)
    eps, _ = predict(model, x, up[0], prompt)
    x = ddim_update(eps, x.to(model.math_dtype), *model.level(up[0])).float()
    kept = [x.cpu()]
    if progress:
        progress(1)
    for a, b in zip(up[:-1], up[1:]):
        x = _step(model, x, a, model.level(b), prompt, 1.0, model.clip_sample)[0]
        kept.append(x.cpu())
        if progress:
            progress(1)
    return Trajectory(grid, torch.stack(kept[::-1])[:, 0], None, prompt, 1.0)


def trajectory_for(model, *, timestep: int, seed: int | None = 0, image=None, num_steps: int = 100,
                   prompt: str | None = None, guidance: float = 1.0, stage=None) -> tuple[Trajectory, object, list]:
    """The trajectory a basis or an edit starts from, through `timestep` (trajectory_grid(T, num_steps, timestep)):
    the DDIM sample of `seed` (sample_trajectory, with prompt and guidance), or, given `image` (a path), the image
    read for the model (images.read_image) and DDIM-inverted (invert: the prompt, no guidance).

    stage(description, total steps) -> a step counter or None (the CLI's progress bars, the app's progress).
    Returns (trajectory, the image as read [C, H, W] in [-1, 1] or None, notes on what reading it converted)."""
    model = check_model(model)
    stage = stage or (lambda desc, total: None)
    n = len(trajectory_grid(model.num_train_timesteps, num_steps, timestep))
    if image is None:
        traj = sample_trajectory(model, seed or 0, num_steps=num_steps, prompt=prompt, guidance=guidance,
                                 through=timestep, progress=stage("sampling", n))
        return traj, None, []
    c, size = pixel_size(model)
    img, notes = read_image(image, c, size)
    traj = invert(model, image_to_x(model, img), num_steps=num_steps, prompt=prompt, through=timestep,
                  progress=stage("inversion", n))
    return traj, img, notes


def generate(model, seeds: list[int], *, num_steps: int = 50, prompt: str | None = None, guidance: float = 1.0,
             clip_denoised: bool = True) -> torch.Tensor:
    """Images x0 [len(seeds), *x_shape] in one batch: DDIM over linspace(T-1, 0, num_steps), then the final
    denoising step x0 = (x_0 - sqrt(1 - abar_0) eps) / sqrt(abar_0). clip_denoised clamps x0 to [-1, 1]
    (pixel models). Seed i gives the same image alone or in a batch up to rounding (CPU kernels are not
    bit-identical across batch positions)."""
    x = torch.stack([initial_noise(model, s) for s in seeds])
    grid = ddim_timesteps(model.num_train_timesteps - 1, 0, num_steps)
    return denoise(model, x, grid, prompt, guidance, clip_denoised)
