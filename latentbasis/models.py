"""Loading diffusion models from a bundled name, a local folder, or the local Hugging Face cache. Never the network.

Supported layouts (all diffusers format):
- a UNet2DModel folder (config.json + weights, scheduler_config.json beside it or in scheduler/), as
  google/ddpm-ema-celebahq-256 or assets/models/digits;
- a pipeline folder (model_index.json) with unet/, scheduler/ and optionally text_encoder/, tokenizer/, vae/:
  Stable-Diffusion-style (UNet2DConditionModel + AutoencoderKL + CLIP) or the same without a VAE.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import LatentBasisError

ASSETS = Path(os.environ.get("LATENTBASIS_ASSETS", Path(__file__).resolve().parent.parent / "assets"))
MODELS_DIR = ASSETS / "models"
DEFAULT_MODEL = "digits"


@dataclass
class DiffusionModel:
    """A loaded model: the U-Net, its noise schedule and, for text models, the prompt encoder (and VAE)."""

    unet: torch.nn.Module
    scheduler: Any
    name: str
    model_hash: str
    text_encoder: Any = None
    tokenizer: Any = None
    vae: Any = None
    path: str | None = None      # the folder it was loaded from
    _prompt_cache: dict = field(default_factory=dict, repr=False)
    _traced: dict = field(default_factory=dict, repr=False)

    @property
    def conditional(self) -> bool:
        return self.text_encoder is not None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    @property
    def clip_sample(self) -> float | None:
        """The x0_hat clamp range of the scheduler config (clip_sample, clip_sample_range) for pixel models; None
        when the config does not ask for it or x is a VAE latent (latents are not bounded)."""
        c = self.scheduler.config
        if self.vae is not None or not c.get("clip_sample", False):
            return None
        return float(c.get("clip_sample_range", 1.0))

    @property
    def x_shape(self) -> tuple[int, int, int]:
        """Shape of x_t (pixels for a pixel model, VAE latents for a latent model), without batch."""
        c = self.unet.config
        s = c.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return (int(c.in_channels), int(h), int(w))

    def encode_prompt(self, prompt: str | None) -> torch.Tensor | None:
        """encoder_hidden_states [1, L, D] for `prompt` ("" is the unconditional prompt); None for pixel models."""
        if not self.conditional:
            if prompt:
                raise LatentBasisError(f"model {self.name!r} is not text-conditioned; it takes no prompt")
            return None
        prompt = prompt or ""
        if prompt not in self._prompt_cache:
            tok = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt")
            with torch.no_grad():
                self._prompt_cache[prompt] = self.text_encoder(tok.input_ids)[0].float()
        return self._prompt_cache[prompt]

    def eps(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x [B, *x_shape], t [B]) (cond: encoder_hidden_states [B, L, D] for text models), for sampling.

        Runs a torch.jit trace of the U-Net (of a channels-last copy, see _trace_unet), made on first use: the same
        operations as the eager forward, equal up to rounding, without most of diffusers' per-module Python
        overhead, which dominates on small models (an edit on `digits` takes about half the time). If tracing fails
        the eager U-Net is used. Gradients and the feature map always use the eager U-Net.
        """
        key = "cond" if cond is not None else "uncond"
        with _TRACE_LOCK:
            if key not in self._traced:
                self._traced[key] = _trace_unet(self.unet, x, t, cond)
        net = self._traced[key]
        if net is None:
            return (self.unet(x, t) if cond is None else self.unet(x, t, encoder_hidden_states=cond)).sample
        return net(x, t) if cond is None else net(x, t, cond)

    def features(self, timestep: int, prompt: str | None = None, layer: str = "mid_block"):
        """The feature map f_t: x_t -> h at this timestep (see latentbasis.features.unet_feature_map)."""
        from .features import unet_feature_map

        return unet_feature_map(self, timestep, prompt=prompt, layer=layer)


_TRACE_LOCK = threading.Lock()


CHANNELS_LAST_MAX_BYTES = 512 * 2**20


def _trace_unet(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None):
    """A traced eps function of the U-Net for these input kinds, or None when tracing is not possible.

    The trace runs a copy of the U-Net with channels-last conv weights, so oneDNN convolves in NHWC: 10-25 % faster
    per call on the bundled models at batch 1-10 (benchmarks/bench_edit.py); outputs differ from the eager forward
    by rounding only (~1e-6). A copy, because the eager U-Net must stay as it is: torch.func's batched forward mode
    fails in group_norm on channels-last activations, and with in-place channels-last weights plus contiguous
    activations the basis ran slower. The copy doubles the weights in memory, so above CHANNELS_LAST_MAX_BYTES of
    parameters (where per-call overhead matters least) the U-Net is traced as it is.
    """
    import copy
    import warnings

    size = sum(p.numel() * p.element_size() for p in unet.parameters())
    if size <= CHANNELS_LAST_MAX_BYTES:
        unet = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if cond is None:
                return torch.jit.trace(lambda a, b: unet(a, b, return_dict=False)[0], (x, t), check_trace=False)
            return torch.jit.trace(lambda a, b, c: unet(a, b, encoder_hidden_states=c, return_dict=False)[0],
                                   (x, t, cond), check_trace=False)
    except Exception:  # any tracing failure: fall back to the eager forward, which is always correct
        return None


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of a module's parameters and buffers, in name order.

    Independent of the file format the weights came in, so a basis made from .bin and .safetensors copies of
    one model matches.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def bundled_models() -> list[str]:
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").exists() or (p / "model_index.json").exists())


def _resolve(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if (MODELS_DIR / name_or_path).is_dir():
        return MODELS_DIR / name_or_path
    if "/" in name_or_path and not p.exists() and name_or_path.count("/") == 1:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception:
            pass
    known = ", ".join(bundled_models()) or "none installed"
    raise LatentBasisError(
        f"model {name_or_path!r} not found: not a folder, not a bundled model in {MODELS_DIR} ({known}), "
        "and not in the local Hugging Face cache (no download is attempted)")


def _load_component(folder: Path, library: str, class_name: str):
    cls = getattr(importlib.import_module(library), class_name)
    if library == "diffusers" and hasattr(cls, "config_name"):  # models; accelerate is not a dependency
        return cls.from_pretrained(str(folder), low_cpu_mem_usage=False)
    return cls.from_pretrained(str(folder))


def _ddim_from(folder: Path):
    from diffusers import DDIMScheduler

    cfg = folder / "scheduler_config.json"
    if not cfg.exists():
        raise LatentBasisError(f"no scheduler_config.json in {folder}")
    return DDIMScheduler.from_config(json.loads(cfg.read_text()))


def load_model(name_or_path: str = DEFAULT_MODEL) -> DiffusionModel:
    """Load a model by bundled name, local path or locally cached hub id. The scheduler is always DDIM
    (from the model's own noise-schedule config), the weights float32 in eval mode with gradients off."""
    root = _resolve(name_or_path)
    try:
        if (root / "model_index.json").exists():
            index = json.loads((root / "model_index.json").read_text())
            parts = {}
            for key in ("unet", "text_encoder", "tokenizer", "vae"):
                if key in index and index[key] and index[key][0] and (root / key).is_dir():
                    lib, cls = index[key]
                    parts[key] = _load_component(root / key, lib, cls)
            if "unet" not in parts:
                raise LatentBasisError(f"{root} has a model_index.json but no unet/ folder")
            scheduler = _ddim_from(root / "scheduler")
        elif (root / "config.json").exists():
            cfg = json.loads((root / "config.json").read_text())
            cls = cfg.get("_class_name", "UNet2DModel")
            parts = {"unet": _load_component(root, "diffusers", cls)}
            sched_dir = root if (root / "scheduler_config.json").exists() else root / "scheduler"
            scheduler = _ddim_from(sched_dir)
        elif (root / "unet" / "config.json").exists():
            cfg = json.loads((root / "unet" / "config.json").read_text())
            parts = {"unet": _load_component(root / "unet", "diffusers", cfg.get("_class_name", "UNet2DModel"))}
            scheduler = _ddim_from(root / "scheduler")
        else:
            raise LatentBasisError(f"{root} is not a diffusers model folder (no model_index.json or config.json)")
    except LatentBasisError:
        raise
    except Exception as e:  # corrupt weights, unknown classes, ...
        raise LatentBasisError(f"could not load the model in {root}: {type(e).__name__}: {e}") from e
    for key in ("unet", "text_encoder", "vae"):
        if key in parts:
            m = parts[key]
            if any(p.dtype != torch.float32 for p in m.parameters()):
                m = m.to(torch.float32)
            parts[key] = m.eval().requires_grad_(False)
    name = name_or_path if (MODELS_DIR / name_or_path).resolve() == root.resolve() else str(root)
    return DiffusionModel(unet=parts["unet"], scheduler=scheduler, name=name,
                          model_hash=weights_hash(parts["unet"]), text_encoder=parts.get("text_encoder"),
                          tokenizer=parts.get("tokenizer"), vae=parts.get("vae"), path=str(root))


def resolve_timestep(num_train_timesteps: int, *, fraction: float | None = None, timestep: int | None = None) -> tuple[int, float]:
    """(integer timestep, fraction of T) from a fraction in [0, 1] or an integer timestep in [0, T-1].

    The fraction maps to round(fraction * (T - 1)), so 1.0 is the noisiest step T-1 and 0.0 is step 0.
    """
    T = num_train_timesteps
    if fraction is not None:
        if not (0.0 <= float(fraction) <= 1.0):
            raise LatentBasisError(f"t = {fraction} is outside the schedule: give a fraction of T in [0, 1]")
        ts = int(round(float(fraction) * (T - 1)))
        return ts, float(fraction)
    if timestep is not None:
        if int(timestep) != timestep or not (0 <= int(timestep) <= T - 1):
            raise LatentBasisError(f"timestep {timestep} is outside the schedule [0, {T - 1}]")
        return int(timestep), int(timestep) / (T - 1)
    raise LatentBasisError("give a timestep: a fraction of T in [0, 1] or an integer step")
