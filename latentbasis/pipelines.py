"""The user's own diffusers pipelines: wrap one already in memory, and edit inside its call.

    model = from_pipeline(pipe)                   # the pipe's denoiser, scheduler config, encoders, VAE; nothing loaded
    basis = latent_basis(model, x_t, t=0.6, k=8)
    image = pipe(prompt, latents=x_T, callback_on_step_end=edit_callback(basis, 0, 3.0, prompt=prompt)).images[0]

from_pipeline reads the pipeline's components and wraps them with the family adapter of its denoiser (the same
adapter and the same numbers as load_model on the pipeline's folder), on the device and in the dtype the denoiser
is in. It moves, casts and copies nothing of the user's.

edit_callback gives a `callback_on_step_end` (or an old-style `callback(step, t, latents)`, as PixArt's pipelines
call it). Diffusers calls it after each scheduler step with the latents of the next state; at the state whose
level is the edit's timestep it replaces x_t by the edited z (latentbasis.editing: a guidance or a direct edit), and
the pipeline's own scheduler runs on from there. On a DDIM scheduler with the trajectory's steps, the image is
latentbasis' own sampler edit (edit_images) to rounding. Schedulers whose latents are x_t itself are supported
(DDIM, DDPM, PNDM, DPM-Solver, UniPC on a VP model; flow matching's Euler on a flow model); those that keep
sigma-scaled latents (init_noise_sigma > 1: Euler, Heun, LMS on a VP model) are refused with a message.
"""
from __future__ import annotations

import torch

from .devices import check_memory_budget
from .editing import METHODS, EditSettings, direct_edit, guidance_edit
from .errors import LatentBasisError
from .families import FAMILIES, adapter_for, supported_pipelines
from .loading import DENOISERS, TEXT_PARTS, weights_hash
from . import validate
from .validate import SCHEDULER_FIELDS, check_fields


def _unsupported(pipe) -> LatentBasisError:
    """What decides is the denoiser's class (families.FAMILIES); the pipeline classes are named for the reader."""
    return LatentBasisError(f"the pipeline class {type(pipe).__name__} is not supported; latentbasis takes "
                            f"{', '.join(supported_pipelines())} (pipelines whose denoiser is a "
                            f"{', '.join(sorted(FAMILIES))})")


def from_pipeline(pipe, *, name: str | None = None, max_memory: int | None = None):
    """The family adapter over a diffusers pipeline object's components (denoiser, scheduler config, text encoders
    and tokenizers, VAE), on the denoiser's device and in its dtype. Every API function takes the result as it
    takes load_model's; the basis equals load_model's on the pipeline's folder (same weights: same model_hash).

    name: the model's name in basis files and recipes (default: the pipeline's name_or_path, else its class).
    max_memory: bytes the Jacobian products may use (None: the device's default)."""
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise _unsupported(pipe)
    key = next((k for k in DENOISERS if components.get(k) is not None), None)
    if key is None or type(components[key]).__name__ not in FAMILIES:
        raise _unsupported(pipe)
    denoiser = components[key]
    scheduler = components.get("scheduler")
    if scheduler is None or not hasattr(scheduler, "config"):
        raise LatentBasisError(f"the {type(pipe).__name__} has no scheduler: latentbasis reads its schedule from it")
    scheduler_config = check_fields(dict(scheduler.config), SCHEDULER_FIELDS, f"the {type(pipe).__name__}'s scheduler")
    first = next(denoiser.parameters())
    device, dtype = first.device, first.dtype
    check_memory_budget(max_memory, device)
    parts = {k: v for k, v in components.items() if v is not None and (k == key or k in TEXT_PARTS or k == "vae")}
    where = str(getattr(pipe, "name_or_path", "") or getattr(getattr(pipe, "config", {}), "_name_or_path", "") or "")
    label = name or where or type(pipe).__name__
    return adapter_for(type(denoiser).__name__).from_components(
        parts, scheduler_config, dict(getattr(pipe, "config", {}) or {}), name=label, path=where or None,
        model_hash=weights_hash(denoiser), device=device, dtype=dtype, max_memory=max_memory)


class EditCallback:
    """A diffusers step-end callback that edits x_t along a basis direction at one timestep (see edit_callback).
    Called as callback_on_step_end(pipe, step, timestep, callback_kwargs) -> callback_kwargs, or as the old-style
    callback(step, timestep, latents) (then `model` must be given). `fired` says whether the edit was applied."""

    def __init__(self, basis, direction, strength: float, timestep: int, settings, prompt, model=None):
        self.basis, self.direction, self.strength = basis, direction, float(strength)
        self.timestep, self.settings, self.prompt = int(timestep), settings, prompt
        self.model, self.fired, self._steps = model, False, None

    def _model_for(self, pipe):
        if self.model is None:
            self.model = from_pipeline(pipe)
        if self.basis.model_hash and self.basis.model_hash != self.model.model_hash:
            raise LatentBasisError(f"the basis was computed on another model (model hash {self.basis.model_hash}; "
                                   f"this pipeline's denoiser is {self.model.model_hash}): compute the basis with "
                                   "from_pipeline(pipe)")
        return self.model

    def _next_levels(self, scheduler) -> list[float]:
        """The level (sigma of x_t) of the state after each step of this call, from the scheduler's own grid."""
        model = self.model
        if model.flow:
            sig = getattr(scheduler, "sigmas", None)
            if sig is None:
                raise LatentBasisError(f"{type(scheduler).__name__} keeps no sigmas: edit_callback cannot place the edit")
            return [float(s) for s in torch.as_tensor(sig).flatten()[1:]]
        if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
            raise LatentBasisError(f"{type(scheduler).__name__} keeps sigma-scaled latents (init_noise_sigma "
                                   f"{float(scheduler.init_noise_sigma):.3g}): edit_callback needs a scheduler whose "
                                   "latents are x_t itself (DDIM, DDPM, PNDM, DPM-Solver, UniPC)")
        ts = [int(t) for t in torch.as_tensor(scheduler.timesteps).flatten()]
        return [float(model.sigmas[t]) for t in ts[1:]]

    def _edit(self, scheduler, step: int, latents: torch.Tensor) -> torch.Tensor | None:
        """The edited latents when the state after `step` is at the edit's level, else None."""
        if self._steps is None:
            levels = self._next_levels(scheduler)
            want = float(self.model.sigmas[self.timestep])
            hits = [i for i, s in enumerate(levels) if abs(s - want) <= 1e-6 * max(1.0, abs(want))]
            if not hits:
                raise LatentBasisError(f"timestep {self.timestep} is not a state of this pipeline call's "
                                       f"{len(levels) + 1} steps: choose num_inference_steps (or timesteps) that "
                                       "pass through it, or a basis at one of them")
            self._steps = hits[0]
        if step != self._steps:
            return None
        d = self.strength * self.basis.latent[self.direction].float()
        x_t = self.model.x_from_pipeline_latents(latents.float().cpu())
        s = self.settings
        if s.method == "guidance":
            z = torch.cat([guidance_edit(self.model, x, self.timestep, d[None], n_iter=s.n_iter, step=s.step,
                                         scale=s.resolved_scale(self.model), prompt=self.prompt) for x in x_t])
        else:
            z = direct_edit(x_t, d[None].expand_as(x_t), s.keep_norm)
        self.fired = True
        return self.model.x_to_pipeline_latents(z).to(latents.device, latents.dtype)

    def __call__(self, *args):
        if len(args) == 4:   # callback_on_step_end(pipe, step, timestep, callback_kwargs)
            pipe, step, _, kwargs = args
            self._model_for(pipe)
            z = self._edit(pipe.scheduler, int(step), kwargs["latents"])
            if z is not None:
                kwargs["latents"] = z
            return kwargs
        if len(args) == 3:   # callback(step, timestep, latents): the latents are edited in place
            if self.model is None:
                raise LatentBasisError("an old-style callback(step, t, latents) does not see the pipeline: give "
                                       "edit_callback(..., pipe=pipe)")
            step, _, latents = args
            z = self._edit(self._scheduler, int(step), latents)
            if z is not None:
                latents.copy_(z)
            return None
        raise LatentBasisError("edit_callback's result is called by diffusers as callback_on_step_end(pipe, step, "
                               "timestep, callback_kwargs) or callback(step, timestep, latents)")


def edit_callback(basis, direction: int = 0, strength: float = 1.0, t: int | None = None, *,
                  method: str = "guidance", prompt: str | None = None, n_iter: int = 16, step: float = 1.0,
                  scale: float | None = None, keep_norm: bool = False, pipe=None) -> EditCallback:
    """A callback for the user's own `pipe(...)` call that edits along basis.latent[direction] (times strength) at
    the basis' timestep (t: another integer timestep, where the call passes through it).

    method: "guidance" (x-space guidance, n_iter iterations of step / scale, as latentbasis.editing) or "direct"
    (x_t + strength v). prompt: the call's prompt, which the guidance edit conditions on (as latentbasis' own edit
    does). pipe: needed only for an old-style callback(step, t, latents), whose caller does not pass the pipeline.
    The basis must come from this pipeline's model (checked by its model hash when the edit is placed); the call
    must pass through the timestep (checked at its first step). Returns an EditCallback; its `fired` is True once
    the edit was applied."""
    if method not in METHODS:
        raise LatentBasisError(f"unknown edit method {method!r}; choose one of {', '.join(METHODS)}")
    k = int(basis.latent.shape[0])
    direction = validate.integer(direction, "direction", 0, k - 1)
    strength = float(validate.number(strength, "strength"))
    timestep = basis.timestep if t is None else t
    if timestep is None:
        raise LatentBasisError("the basis does not record its timestep: give t")
    settings = EditSettings(method=method, n_iter=int(n_iter), step=float(step), scale=scale, keep_norm=keep_norm)
    cb = EditCallback(basis, direction, strength, int(timestep), settings, prompt)
    if pipe is not None:
        cb._model_for(pipe)
        cb._scheduler = pipe.scheduler
    return cb
