"""Deterministic DDIM (eta = 0) on a timestep grid of our choosing, so x_t lands exactly on the t asked for.

    x0_hat = (x_a - sqrt(1 - abar_a) eps) / sqrt(abar_a)
    x_b    = sqrt(abar_b) x0_hat + sqrt(1 - abar_b) eps                 (Song et al. 2021, eq. 12, sigma = 0)
with eps = eps_theta(x_a, a) (classifier-free guided for text models: eps_u + w (eps_c - eps_u)).
"""
from __future__ import annotations

import torch

from .models import resolve_timestep


def ddim_timesteps(start: int, stop: int, num_steps: int) -> list[int]:
    """The sampler's timesteps: round(linspace(start, stop, num_steps)) descending, repeats removed.

    num_steps counts model evaluations, as diffusers' num_inference_steps does: a 50-step sampler from T-1 to 0
    visits 50 timesteps and makes 49 transitions (theory.md's reference values use this grid).
    """
    grid = torch.linspace(float(start), float(stop), max(2, num_steps)).round().long().tolist()
    return sorted(set(grid), reverse=True)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_from: torch.Tensor, abar_to: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step from noise level abar_from to abar_to (either direction: also inversion)."""
    x0 = (x - (1 - abar_from).sqrt() * eps) / abar_from.sqrt()
    return abar_to.sqrt() * x0 + (1 - abar_to).sqrt() * eps


@torch.no_grad()
def predict_eps(model, x: torch.Tensor, timestep: int, prompt: str | None = None, guidance: float = 1.0):
    """eps_theta(x, t) for a batch x [B, *x_shape]; classifier-free guidance for text models when guidance != 1."""
    t = torch.full((x.shape[0],), int(timestep), dtype=torch.long)
    if not model.conditional:
        return model.unet(x, t).sample
    cond = model.encode_prompt(prompt).expand(x.shape[0], -1, -1)
    eps_c = model.unet(x, t, encoder_hidden_states=cond).sample
    if guidance == 1.0:
        return eps_c
    uncond = model.encode_prompt("").expand(x.shape[0], -1, -1)
    eps_u = model.unet(x, t, encoder_hidden_states=uncond).sample
    return eps_u + guidance * (eps_c - eps_u)


def initial_noise(model, seed: int) -> torch.Tensor:
    """x_T ~ N(0, I) of the model's x shape from a seed (CPU generator: the same on every machine)."""
    return torch.randn(model.x_shape, generator=torch.Generator().manual_seed(int(seed)))


def sample_to(model, seed: int = 0, *, t: float | None = None, timestep: int | None = None, num_steps: int = 50,
              prompt: str | None = None, guidance: float = 1.0) -> torch.Tensor:
    """x_t on the DDIM trajectory of `seed`: x_T ~ N(0, I), then DDIM from T-1 down to t.

    The part from T-1 to t gets the density of a num_steps-step sampler over the whole range:
    round((num_steps - 1) * (T-1-t) / (T-1)) transitions. Returns [*x_shape].
    """
    T = model.num_train_timesteps
    ts, _ = resolve_timestep(T, fraction=t, timestep=timestep)
    x = initial_noise(model, seed)[None]
    ab = model.alphas_cumprod.to(torch.float64)
    n = round((num_steps - 1) * (T - 1 - ts) / (T - 1))
    grid = ddim_timesteps(T - 1, ts, n + 1) if n > 0 else [ts]
    for a, b in zip(grid[:-1], grid[1:]):
        eps = predict_eps(model, x, a, prompt, guidance).to(torch.float64)
        x = ddim_step(x.to(torch.float64), eps, ab[a], ab[b]).to(torch.float32)
    return x[0]


def generate(model, seeds: list[int], *, num_steps: int = 50, prompt: str | None = None, guidance: float = 1.0,
             clip_denoised: bool = True) -> torch.Tensor:
    """Images x0 [len(seeds), *x_shape] in one batch: DDIM over linspace(T-1, 0, num_steps), then the final
    denoising step x0 = (x_0 - sqrt(1 - abar_0) eps) / sqrt(abar_0). clip_denoised clamps x0 to [-1, 1]
    (pixel models). Seed i gives the same image alone or in a batch."""
    T = model.num_train_timesteps
    x = torch.stack([initial_noise(model, s) for s in seeds])
    ab = model.alphas_cumprod.to(torch.float64)
    grid = ddim_timesteps(T - 1, 0, num_steps)
    for a, b in zip(grid[:-1], grid[1:]):
        eps = predict_eps(model, x, a, prompt, guidance).to(torch.float64)
        x = ddim_step(x.to(torch.float64), eps, ab[a], ab[b]).to(torch.float32)
    eps = predict_eps(model, x, grid[-1], prompt, guidance).to(torch.float64)
    x0 = ddim_step(x.to(torch.float64), eps, ab[grid[-1]], torch.tensor(1.0, dtype=torch.float64)).float()
    return x0.clamp(-1, 1) if clip_denoised else x0
