"""Noise schedules and prediction types: pure functions, the one place where a network output becomes eps and x0_hat.

Variance-preserving (DDPM) forward process, a = sqrt(abar_t), s = sqrt(1 - abar_t):
    x_t = a x0 + s eps.
A network predicts one of (diffusers' `prediction_type`):
    "epsilon":       o = eps                  ->  x0 = (x - s o) / a
    "v_prediction":  o = v = a eps - s x0     ->  x0 = a x - s o,   eps = s x + a o      (Salimans & Ho 2022)
    "sample":        o = x0                   ->  eps = (x - a o) / s
Classifier-free guidance is linear in o, and every conversion above is affine in o at fixed x, so guiding o or
guiding eps gives the same step (what diffusers' pipelines do: they guide o).

The deterministic DDIM step (eta = 0, Song et al. 2021 eq. 12) from noise level abar_a to abar_b:
    x_b = sqrt(abar_b) x0 + sqrt(1 - abar_b) eps
with (eps, x0) of the network at x_a; going up (abar_b < abar_a) it is DDIM inversion.
"""
from __future__ import annotations

import torch

from .errors import LatentBasisError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise LatentBasisError(f"prediction type {prediction_type!r} is not supported; latentbasis reads "
                               f"{', '.join(PREDICTION_TYPES)}")
    return prediction_type


def to_eps_x0(output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor,
              prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0_hat) from a network output o at x (same shape) and noise level abar (a scalar tensor)."""
    a, s = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        return output, (x - s * output) / a
    if prediction_type == "v_prediction":
        return s * x + a * output, a * x - s * output
    if prediction_type == "sample":
        return (x - a * output) / s, output
    raise LatentBasisError(f"prediction type {prediction_type!r} is not supported")


def from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The network output o that a model of `prediction_type` gives for (eps, x0) at abar (inverse of to_eps_x0)."""
    a, s = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return a * eps - s * x0
    if prediction_type == "sample":
        return x0
    raise LatentBasisError(f"prediction type {prediction_type!r} is not supported")


def clip_x0(x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor,
            clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp x0_hat to [-clip, clip] and recompute eps = (x - sqrt(abar) x0) / sqrt(1 - abar) from it, so the step
    stays on the line through x and the clamped x0_hat (a no-op where x0_hat is inside the range). diffusers'
    DDIMScheduler does the same with clip_sample and use_clipped_model_output=True."""
    if clip is None or not abar < 1:
        return eps, x0
    x0 = x0.clamp(-clip, clip)
    return (x - abar.sqrt() * x0) / (1 - abar).sqrt(), x0


def ddim_update(eps: torch.Tensor, x0: torch.Tensor, abar_to: torch.Tensor) -> torch.Tensor:
    """x at noise level abar_to on the DDIM line of (eps, x0): sqrt(abar_to) x0 + sqrt(1 - abar_to) eps."""
    return abar_to.sqrt() * x0 + (1 - abar_to).sqrt() * eps


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_from: torch.Tensor, abar_to: torch.Tensor,
              clip: float | None = None) -> torch.Tensor:
    """One deterministic DDIM step of an eps prediction from abar_from to abar_to (either direction)."""
    eps, x0 = clip_x0(x, *to_eps_x0(eps, x, abar_from, "epsilon"), abar_from, clip)
    return ddim_update(eps, x0, abar_to)


def vp_alphas_cumprod(config: dict) -> torch.Tensor:
    """abar_t [T] (float64) of a diffusers scheduler config: its own betas (linear, scaled_linear,
    squaredcos_cap_v2, or trained_betas), T = num_train_timesteps, rescale_betas_zero_snr honoured.

    Computed by diffusers' DDIMScheduler itself, so the schedule is the one the model was trained with; a config
    that gives a schedule DDIM cannot walk (abar not in (0, 1], not decreasing) is refused with one message."""
    from diffusers import DDIMScheduler

    from .validate import MAX_TRAIN_TIMESTEPS, integer

    integer(config.get("num_train_timesteps", 1000), "num_train_timesteps of the scheduler config", 2,
            MAX_TRAIN_TIMESTEPS)
    try:
        sched = DDIMScheduler.from_config(config)
    except (NotImplementedError, ValueError, TypeError, KeyError) as e:
        raise LatentBasisError(f"the scheduler config gives no usable noise schedule: {e}") from None
    ab = sched.alphas_cumprod.to(torch.float64)
    if len(ab) < 2 or not bool(torch.isfinite(ab).all()) or bool((ab > 1).any()) or bool((ab[:-1] <= 0).any()) \
            or bool(ab[-1] < 0) or not bool((ab[1:] <= ab[:-1]).all()):
        raise LatentBasisError("the scheduler config gives a degenerate noise schedule (alphas_cumprod must "
                               "decrease within (0, 1], reaching 0 at most at the last step)")
    return ab
