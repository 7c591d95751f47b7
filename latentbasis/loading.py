"""Loading diffusion models from a bundled name, a local folder, or the local Hugging Face cache. Never the network.

Supported layouts (diffusers format):
- a single-model folder (config.json + weights, scheduler_config.json beside it or in scheduler/), as
  google/ddpm-ema-celebahq-256 or the bundled `digits`;
- a pipeline folder (model_index.json) with the denoiser (unet/), scheduler/ and optionally text_encoder/,
  tokenizer/, text_encoder_2/, tokenizer_2/ (SDXL) and vae/.
Which family adapter wraps the denoiser is decided in latentbasis.families (one table); this module only finds and
reads folders. Nothing a folder says is imported or executed unless it is on the allow-list below: model folders
are data, and users download them and share them.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
from pathlib import Path

import torch

from .devices import check_memory_budget, resolve_device, resolve_dtype
from .errors import LatentBasisError
from .families import FAMILIES, adapter_for
from .validate import (DENOISER_FIELDS, MAX_JSON_AUX_BYTES, SCHEDULER_FIELDS, check_fields, nonempty, number,
                       read_json, read_json_object, regular_file)


def _models_dir() -> Path:
    """Where the bundled models are: $LATENTBASIS_ASSETS/models if set; inside the installed package
    (latentbasis/bundled_models, where the wheel puts assets/models); else assets/models of a source tree."""
    if os.environ.get("LATENTBASIS_ASSETS"):
        return Path(os.environ["LATENTBASIS_ASSETS"]) / "models"
    here = Path(__file__).resolve().parent
    installed = here / "bundled_models"
    return installed if installed.is_dir() else here.parent / "assets" / "models"


MODELS_DIR = _models_dir()
DEFAULT_MODEL = "digits"

# The only classes a model folder may name (library -> class names). Schedulers are never instantiated from a
# folder: only their scheduler_config.json is read.
ALLOWED_CLASSES = {
    "diffusers": {*FAMILIES, "AutoencoderKL"},    # the denoisers of latentbasis.families, and the VAE
    "transformers": {"CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel", "CLIPTokenizer",
                     "CLIPTokenizerFast", "T5Tokenizer", "T5TokenizerFast", "PreTrainedTokenizerFast"},
}
TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
DENOISERS = ("unet", "transformer")


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of a module's parameters and buffers, in name order, as float32.

    Independent of the file format the weights came in, so a basis made from .bin and .safetensors copies of
    one model matches (a float16 copy of float32 weights is other weights, and hashes differently)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def bundled_models() -> list[str]:
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir()
                  if (p / "config.json").exists() or (p / "model_index.json").exists())


def resolve_model_path(name_or_path: str) -> Path:
    """The folder of a bundled name, a local path, or a hub id already in the local cache (offline only). A local
    folder named like a bundled model (a report's output folder `shapes/`, say) is taken only when it is a model
    folder (it has model_index.json or config.json); otherwise the name means the bundled model."""
    name_or_path = nonempty(name_or_path, "model")      # text or a path, not empty, valid UTF-8
    p = Path(name_or_path).expanduser()
    bundled = MODELS_DIR / name_or_path if name_or_path and "/" not in name_or_path else None
    if p.is_dir() and (bundled is None or not bundled.is_dir() or (p / "model_index.json").is_file()
                       or (p / "config.json").is_file()):
        return p
    if bundled is not None and bundled.is_dir():
        return bundled
    if "/" in name_or_path and not p.exists() and name_or_path.count("/") == 1:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name_or_path, local_files_only=True))
        except Exception:
            pass
    known = ", ".join(bundled_models()) or "none installed"
    raise LatentBasisError(
        f"model {name_or_path!r} not found: not a folder, not a bundled model ({known}), "
        "and not in the local Hugging Face cache (no download is attempted)")


def _read_json(path: Path, fields: dict[str, str] | None = None) -> dict:
    """A JSON object of a model folder through the one reader (validate.read_json_object), its fields checked."""
    data = read_json_object(path, path.name)
    return check_fields(data, fields, str(path)) if fields else data


def _check_part_files(folder: Path) -> None:
    """Every file of a component folder before a library reads it: a regular file (a FIFO would make the reader
    wait for a writer, a device could be endless); a JSON file (configs, a tokenizer's vocabulary) within
    MAX_JSON_AUX_BYTES and no deeper than MAX_JSON_DEPTH."""
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.is_dir():
            continue
        if f.suffix == ".json":
            read_json(f, f.name, MAX_JSON_AUX_BYTES)
        else:
            regular_file(f, f"{folder.name}/{f.name}" if folder.name else f.name)


def check_allowed(library, class_name) -> None:
    """Refuse, without importing anything, a class that is not on the allow-list."""
    if not isinstance(library, str) or not isinstance(class_name, str) \
            or class_name not in ALLOWED_CLASSES.get(library, ()):
        raise LatentBasisError(f"the model folder names the class {str(library)[:60]}.{str(class_name)[:60]}, which "
                               "latentbasis does not load (it only loads known diffusers and transformers model, "
                               "tokenizer and text-encoder classes)")


def allowed_class(library: str, class_name: str):
    """The class a folder names, if it is on the allow-list; anything else is refused, never imported."""
    check_allowed(library, class_name)
    return getattr(importlib.import_module(library), class_name)


def _short(e: Exception) -> str:
    """An exception's first line, at most 300 characters (library messages can run to hundreds of lines)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:300]}"


def load_component(folder: Path, library: str, class_name: str, dtype: torch.dtype | None = torch.float32):
    """One component of a model folder, in `dtype` (None: float32, as read; tokenizers have none), eval mode,
    gradients off."""
    cls = allowed_class(library, class_name)
    if not folder.is_dir():
        raise LatentBasisError(f"{folder} is missing")
    try:
        with libraries_quiet():
            if library == "diffusers":  # accelerate is not a dependency: plain loading (float32, as the file's values)
                obj = cls.from_pretrained(str(folder), low_cpu_mem_usage=False)
            else:
                obj = cls.from_pretrained(str(folder), local_files_only=True)
    except LatentBasisError:
        raise
    except Exception as e:  # corrupt weights, mismatched configs, ...
        raise LatentBasisError(f"could not load {folder}: {_short(e)}") from None
    if isinstance(obj, torch.nn.Module):
        _check_finite(obj, folder)
        obj = (obj if dtype is None else obj.to(dtype)).eval().requires_grad_(False)
    return obj


def _check_finite(module: torch.nn.Module, folder: Path) -> None:
    """Weights with NaN or infinite values are a broken checkpoint: one message naming the first such tensor,
    before anything samples or reaches an SVD with them."""
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise LatentBasisError(f"{folder}: the weights {name[:80]} hold NaN or infinite values; the checkpoint "
                                       "is broken")


def quiet_libraries() -> None:
    """diffusers' and transformers' notices and progress bars off for good (a command's stderr is for its own
    one-line errors)."""
    import diffusers
    import transformers

    for mod in (diffusers.utils.logging, transformers.utils.logging):
        mod.set_verbosity_error()
        if hasattr(mod, "disable_progress_bar"):
            mod.disable_progress_bar()


@contextlib.contextmanager
def libraries_quiet():
    """diffusers' and transformers' own log lines held back while they load (e.g. "An error occurred while trying
    to fetch ...: no file named ...safetensors" before a .bin checkpoint loads): latentbasis says what went wrong,
    in one line of its own. Their loggers are silenced outright (errors included) and their handlers pointed at the
    current stderr (a handler made under another stream, e.g. a closed test capture, would print "Logging error");
    levels are restored after."""
    import logging

    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.stream = sys.stderr   # not setStream: it flushes the old stream, which may be closed
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def cast_weights(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The module in `dtype`, except the submodules its class keeps in float32 (diffusers' _keep_in_fp32_modules),
    as from_pretrained(torch_dtype=...) would load it."""
    torch.nn.Module.to(module, dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    if dtype != torch.float32 and keep:
        for name, sub in module.named_modules():
            if any(k in name.split(".") for k in keep):
                torch.nn.Module.to(sub, torch.float32)
    return module


def _scheduler_config(folder: Path) -> dict:
    cfg = folder / "scheduler_config.json"
    if not cfg.exists() and not cfg.is_symlink():
        raise LatentBasisError(f"no scheduler_config.json in {folder}")
    return _read_json(cfg, SCHEDULER_FIELDS)


def read_folder(root: Path) -> tuple[dict, dict, dict]:
    """(components {part: (folder, library, class name)}, scheduler config, pipeline config) of a model folder."""
    if (root / "model_index.json").exists():
        index = _read_json(root / "model_index.json")
        parts = {}
        for key, value in index.items():
            if key.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
                continue
            if (root / key).is_dir() and key != "scheduler":
                check_allowed(value[0], value[1])
                _check_part_files(root / key)
                if key in ("unet", "transformer") and (root / key / "config.json").exists():
                    _read_json(root / key / "config.json", DENOISER_FIELDS)
                parts[key] = (root / key, value[0], value[1])
        return parts, _scheduler_config(root / "scheduler"), index
    for folder in (root, root / "unet", root / "transformer"):
        if (folder / "config.json").exists():
            _check_part_files(folder)
            cfg = _read_json(folder / "config.json", DENOISER_FIELDS)
            sched = folder if (folder / "scheduler_config.json").exists() else root / "scheduler"
            cls = cfg.get("_class_name", "UNet2DModel")
            check_allowed("diffusers", cls)
            key = "transformer" if "Transformer" in str(cls) else "unet"
            return {key: (folder, "diffusers", cls)}, _scheduler_config(sched), {}
    raise LatentBasisError(f"{root} is not a diffusers model folder (no model_index.json or config.json)")


def stored_dtype(folder: Path) -> torch.dtype | None:
    """The floating-point type most of a folder's safetensors weights are stored in (from the files' headers, no
    tensor read), or None when it has none."""
    from collections import Counter

    from safetensors import safe_open

    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    count: Counter = Counter()
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as fh:
                for key in fh.keys():
                    sl = fh.get_slice(key)
                    if sl.get_dtype() in names:
                        count[names[sl.get_dtype()]] += int(torch.Size(sl.get_shape()).numel())
        except Exception:  # a corrupt file: from_pretrained says so with its own message
            continue
    return count.most_common(1)[0][0] if count else None


def load_model(name_or_path: str = DEFAULT_MODEL, *, device: str | torch.device | None = "auto",
               dtype: str | torch.dtype | None = None, max_memory: int | None = None):
    """Load a model by bundled name, local path or locally cached hub id, wrapped by its family's adapter.

    device: "auto" (a GPU when there is one, else the CPU), "cpu", "cuda", "cuda:N", "mps".
    dtype: the sampling forward's precision (float32, float16, bfloat16; None: the precision the denoiser's weights
        are stored in). Half-precision weights are not run in float32: that only upcasts them, at twice the memory,
        and is refused with one message. Features and bases stay float32, the VAE float32.
    max_memory: bytes the process may hold while the Jacobian products run (None: the device's default); more than
        the device has is refused.
    """
    dev = resolve_device(device)
    check_memory_budget(max_memory, dev)
    root = resolve_model_path(name_or_path)
    parts, scheduler_config, pipeline_config = read_folder(root)
    denoiser = next((k for k in DENOISERS if k in parts), None)
    if denoiser is None:
        raise LatentBasisError(f"{root} has a model_index.json but no unet/ or transformer/ folder")
    stored = stored_dtype(parts[denoiser][0])
    if dtype is None:
        dt = stored if stored in (torch.float16, torch.bfloat16) else torch.float32
    else:
        dt = resolve_dtype(dtype)
        if dt == torch.float32 and stored in (torch.float16, torch.bfloat16):
            raise LatentBasisError(f"{parts[denoiser][0]} holds {str(stored).removeprefix('torch.')} weights: "
                                   "float32 sampling would only upcast them, at twice the memory: give dtype "
                                   f"{str(stored).removeprefix('torch.')}, or leave dtype unset (bases are float32 "
                                   "either way)")
    adapter = adapter_for(parts[denoiser][2])
    loaded = {}
    for key, (folder, library, class_name) in parts.items():
        if key == denoiser or key in TEXT_PARTS or key == "vae":
            loaded[key] = load_component(folder, library, class_name, None if key in (denoiser, "vae") else dt)
    name = name_or_path if (MODELS_DIR / name_or_path).resolve() == root.resolve() else str(root)
    model_hash = weights_hash(loaded[denoiser])  # of the checkpoint's values, whatever dtype it then runs in
    loaded[denoiser] = cast_weights(loaded[denoiser], dt)
    for key, part in loaded.items():
        if isinstance(part, torch.nn.Module):
            loaded[key] = part.to(dev)
    return adapter.from_components(loaded, scheduler_config, pipeline_config, name=name, path=str(root),
                                   model_hash=model_hash, device=dev, dtype=dt, max_memory=max_memory)


def resolve_timestep(num_train_timesteps: int, *, fraction: float | None = None,
                     timestep: int | None = None) -> tuple[int, float]:
    """(integer timestep, fraction of T) from a fraction in [0, 1] or an integer timestep in [0, T-1].

    The fraction maps to round(fraction * (T - 1)), so 1.0 is the noisiest step T-1 and 0.0 is step 0.
    """
    T = num_train_timesteps
    if fraction is not None and timestep is not None:
        raise LatentBasisError(f"give t (a fraction of T) or timestep, not both (t = {fraction}, timestep = {timestep})")
    if fraction is not None:
        fraction = number(fraction, "t")
        if not (0.0 <= float(fraction) <= 1.0):
            raise LatentBasisError(f"t = {fraction} is outside the schedule: give a fraction of T in [0, 1]")
        ts = int(round(float(fraction) * (T - 1)))
        return ts, float(fraction)
    if timestep is not None:
        timestep = number(timestep, "timestep", integer=True)
        if int(timestep) != timestep or not (0 <= int(timestep) <= T - 1):
            raise LatentBasisError(f"timestep {timestep} is outside the schedule [0, {T - 1}]")
        return int(timestep), int(timestep) / (T - 1)
    raise LatentBasisError("give a timestep: a fraction of T in [0, 1] or an integer step")
