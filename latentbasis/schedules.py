"""Noise schedules and prediction types: pure functions, the one place where a network output becomes eps and x0_hat.

Every model's forward process is x_t = alpha_t x0 + sigma_t eps, at the integer timesteps t = 0..T-1 of its
training schedule:
    variance preserving (DDPM):   alpha = sqrt(abar_t),  sigma = sqrt(1 - abar_t)
    flow matching (rectified):    alpha = 1 - s_t,       sigma = s_t,  s_t = shift u / (1 + (shift - 1) u),
                                  u = (t + 1) / T  (the sigmas of diffusers' FlowMatchEulerDiscreteScheduler)
A network predicts one of (diffusers' `prediction_type`; "flow" for a velocity model):
    "epsilon":       o = eps                  ->  x0 = (x - sigma o) / alpha
    "v_prediction":  o = alpha eps - sigma x0 ->  x0 = alpha x - sigma o,  eps = sigma x + alpha o    (VP only;
                                                   Salimans & Ho 2022)
    "sample":        o = x0                   ->  eps = (x - alpha o) / sigma
    "flow":          o = v = eps - x0         ->  x0 = x - sigma o,  eps = x + (1 - sigma) o         (flow only)
Classifier-free guidance is linear in o, and every conversion above is affine in o at fixed x, so guiding o or
guiding eps gives the same step (diffusers' pipelines guide o).

One deterministic step from a level (alpha_a, sigma_a) to (alpha_b, sigma_b), with (eps, x0_hat) of the network at
x_a, is
    x_b = alpha_b x0_hat + sigma_b eps
DDIM with eta = 0 (Song et al. 2021, eq. 12) for a VP model; for a flow model it is exactly the Euler step of the
probability-flow ODE, x_b = x_a + (s_b - s_a) v, since x_a = (1 - s_a) x0 + s_a eps and v = eps - x0. Going up
(less signal) it is DDIM inversion. The image itself is the level (1, 0).
"""
from __future__ import annotations

import torch

from .errors import LatentBasisError
from .validate import MAX_TRAIN_TIMESTEPS, integer, number

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def check_prediction_type(prediction_type: str, flow: bool = False) -> str:
    allowed = ("flow",) if flow else ("epsilon", "v_prediction", "sample")
    if prediction_type not in allowed:
        raise LatentBasisError(f"prediction type {prediction_type!r} is not supported for a "
                               f"{'flow-matching' if flow else 'variance-preserving'} schedule; latentbasis reads "
                               f"{', '.join(allowed)}")
    return prediction_type


def to_eps_x0(output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
              prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, x0_hat) from a network output o at x (same shape) and the level (alpha, sigma) (scalar tensors)."""
    if prediction_type == "epsilon":
        return output, (x - sigma * output) / alpha
    if prediction_type == "v_prediction":
        return sigma * x + alpha * output, alpha * x - sigma * output
    if prediction_type == "sample":
        return (x - alpha * output) / sigma, output
    if prediction_type == "flow":
        return x + (1 - sigma) * output, x - sigma * output
    raise LatentBasisError(f"prediction type {prediction_type!r} is not supported")


def from_eps_x0(eps: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                prediction_type: str) -> torch.Tensor:
    """The network output o that a model of `prediction_type` gives for (eps, x0) at a level (inverse of to_eps_x0)."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return alpha * eps - sigma * x0
    if prediction_type == "sample":
        return x0
    if prediction_type == "flow":
        return eps - x0
    raise LatentBasisError(f"prediction type {prediction_type!r} is not supported")


def clip_x0(x: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
            clip: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp x0_hat to [-clip, clip] and recompute eps = (x - alpha x0) / sigma from it, so the step stays on the line
    through x and the clamped x0_hat (a no-op where x0_hat is inside the range). diffusers' DDIMScheduler does the
    same with clip_sample and use_clipped_model_output=True."""
    if clip is None or not sigma > 0:
        return eps, x0
    x0 = x0.clamp(-clip, clip)
    return (x - alpha * x0) / sigma, x0


def ddim_update(eps: torch.Tensor, x0: torch.Tensor, alpha_to: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """x at the level (alpha_to, sigma_to) on the line of (eps, x0): alpha_to x0 + sigma_to eps."""
    return alpha_to * x0 + sigma_to * eps


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_from: torch.Tensor, abar_to: torch.Tensor,
              clip: float | None = None) -> torch.Tensor:
    """One deterministic DDIM step of an eps prediction between VP noise levels abar_from -> abar_to."""
    a, s = abar_from.sqrt(), (1 - abar_from).sqrt()
    eps, x0 = clip_x0(x, *to_eps_x0(eps, x, a, s, "epsilon"), a, s, clip)
    return ddim_update(eps, x0, abar_to.sqrt(), (1 - abar_to).sqrt())


def vp_alphas_cumprod(config: dict) -> torch.Tensor:
    """abar_t [T] (float64) of a diffusers scheduler config: its own betas (linear, scaled_linear,
    squaredcos_cap_v2, or trained_betas), T = num_train_timesteps, rescale_betas_zero_snr honoured.

    Computed by diffusers' DDIMScheduler itself, so the schedule is the one the model was trained with; a config
    that gives a schedule DDIM cannot walk (abar not in (0, 1], not decreasing) is refused with one message."""
    from diffusers import DDIMScheduler

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


def vp_levels(alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha [T], sigma [T]) float64 of a VP schedule: sqrt(abar), sqrt(1 - abar)."""
    ab = alphas_cumprod.to(torch.float64)
    return ab.sqrt(), (1 - ab).sqrt()


def flow_sigmas(config: dict, image_seq_len: int | None = None) -> torch.Tensor:
    """s_t [T] (float64) of a flow-matching scheduler config (FlowMatchEulerDiscreteScheduler): the training sigmas
    shift u / (1 + (shift - 1) u) at u = (t + 1) / T, t = 0..T-1 (so the last timestep is pure noise, s = 1).

    Resolution-dependent (dynamic) shifting, as FLUX: mu = m * image_seq_len + b on the line through (base_image_seq_len,
    base_shift) and (max_image_seq_len, max_shift) (FluxPipeline's calculate_shift), and the scheduler's time shift
    exp(mu) / (exp(mu) + (1 / u - 1)) ("exponential"; "linear": mu / (mu + (1 / u - 1))), which is the fixed-shift
    formula with shift = exp(mu) (or mu). It needs the image's token count (image_seq_len)."""
    import math

    T = integer(config.get("num_train_timesteps", 1000), "num_train_timesteps of the scheduler config", 2,
                MAX_TRAIN_TIMESTEPS)
    shift = float(number(config.get("shift", 1.0), "shift of the scheduler config", lo=0.0, hi=1000.0, lo_open=True))
    if config.get("use_dynamic_shifting"):
        if image_seq_len is None:
            raise LatentBasisError("flow-matching schedules with use_dynamic_shifting (resolution-dependent shift) "
                                   "need the image's size: this family does not give it")
        lo_n, hi_n = (float(number(config.get(k, d), f"{k} of the scheduler config", lo=0.0, hi=1e9))
                      for k, d in (("base_image_seq_len", 256), ("max_image_seq_len", 4096)))
        lo_s, hi_s = (float(number(config.get(k, d), f"{k} of the scheduler config", lo=-100.0, hi=100.0))
                      for k, d in (("base_shift", 0.5), ("max_shift", 1.15)))
        if hi_n == lo_n:
            raise LatentBasisError("base_image_seq_len and max_image_seq_len of the scheduler config are equal")
        slope = (hi_s - lo_s) / (hi_n - lo_n)
        mu = image_seq_len * slope + lo_s - slope * lo_n
        shift = mu if config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)
        if not shift > 0:
            raise LatentBasisError(f"the scheduler config's dynamic shift gives {shift:.3g} at {image_seq_len} tokens")
    u = torch.arange(1, T + 1, dtype=torch.float64) / T
    return shift * u / (1 + (shift - 1) * u)


def vp_equivalent_alphas_cumprod(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """abar of the VP process with the same signal-to-noise ratio: alpha^2 / (alpha^2 + sigma^2). A flow model's
    x_t is that VP x_t times sqrt(alpha^2 + sigma^2), so SNR-based theory (chromatography, the Gaussian gains up to
    that per-timestep factor) reads the same."""
    return alpha ** 2 / (alpha ** 2 + sigma ** 2)
