"""Everything that comes from outside, checked in one place: numbers, strings, tensors, JSON files and paths.

The CLI, the recipe reader, the basis-file reader, the report cache and the app all call these, so one bad value
gets the same one-sentence answer (a LatentBasisError) wherever it enters, and work is bounded: every count that
sets how long something runs has a ceiling, named in the message.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .atomic import NAME_MAX, names_folder
from .errors import LatentBasisError, printable, utf8_text

# Ceilings on work and sizes (a value above one is refused with the bound in the message).
MAX_K = 1024                 # directions of one basis
MAX_STEPS = 1000             # DDIM steps of a trajectory (a schedule has at most T = 1000 here)
MAX_N_ITER = 1000            # guidance iterations of one edit
MAX_ITERS = 10_000           # iterations of a basis algorithm
MAX_STRENGTH = 1000.0        # |strength| of an edit direction
MAX_STRENGTHS = 64           # strengths in one sweep
MAX_GUIDANCE = 100.0         # classifier-free guidance scale
MAX_SEED = 2**63 - 1         # torch.Generator.manual_seed takes a signed 64-bit integer
MAX_SAMPLES = 4096           # samples of a report
MAX_TIMESTEPS = 1000         # timesteps of a report
MAX_PROMPT_CHARS = 2000
MAX_JSON_BYTES = 4 * 2**20   # recipes, manifests, configs
MAX_JSON_AUX_BYTES = 64 * 2**20   # the other JSON files of a model folder (a tokenizer's vocabulary)
MAX_JSON_DEPTH = 32          # nesting of any JSON latentbasis reads (configs nest 2-3 deep)
MAX_IMAGE_BYTES = 64 * 2**20
MAX_IMAGE_PIXELS = 40_000_000
MAX_X_ELEMENTS = 2**26       # numbers in x_t (3 x 4096 x 4096 pixels, or SDXL's 4 x 128 x 128 latent many times over)
MAX_TRAIN_TIMESTEPS = 100_000


def number(value: Any, name: str, *, lo: float | None = None, hi: float | None = None, integer: bool = False,
           lo_open: bool = False, hi_open: bool = False) -> float | int:
    """A finite number (an int when `integer`), inside [lo, hi] (open ends where asked); else one message.
    Booleans and strings are not numbers here (a JSON "3" is a mistake, not a 3); a one-number array or tensor
    (numpy's int64, torch.tensor(3)) is its number."""
    if not isinstance(value, (bool, int, float)) and getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()      # numpy scalars and 0-d arrays or tensors (their bools stay bools: refused below)
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    bounds = f"{left}{'-inf' if lo is None else _fmt(lo)}, {'inf' if hi is None else _fmt(hi)}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LatentBasisError(f"{name} is not a {'whole ' if integer else ''}number: got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise LatentBasisError(f"{name} = {value} is not a finite number"
                               + (f" (out of range {bounds})" if lo is not None or hi is not None else ""))
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise LatentBasisError(f"{name} is not a whole number: got {value}")
        value = int(value)
    low = lo is not None and (value <= lo if lo_open else value < lo)
    high = hi is not None and (value >= hi if hi_open else value > hi)
    if low or high:
        raise LatentBasisError(f"{name} = {value} is out of range {bounds}")
    return value


def _fmt(v: float) -> str:
    return str(int(v)) if isinstance(v, int) or (float(v).is_integer() and abs(v) < 1e15) else f"{v:g}"


def integer(value: Any, name: str, lo: int = 0, hi: int | None = None) -> int:
    return int(number(value, name, lo=lo, hi=hi, integer=True))


def seed(value: Any, name: str = "seed") -> int:
    return integer(value, name, 0, MAX_SEED)


def count(value: Any, name: str, hi: int, lo: int = 1) -> int:
    """A count that sets how much work runs: lo..hi, with the ceiling in the message."""
    return integer(value, name, lo, hi)


def sampling_options(flag=str, **values) -> None:
    """The numbers the sampling actions take, each checked where given (not None): seed, guidance, steps (2 to
    MAX_STEPS), k (1 to MAX_K), t, t_max and t_min (in [0, 1]), samples and judge_samples (1 to MAX_SAMPLES) and
    timesteps (1 to MAX_TIMESTEPS); a message names each as flag(name)."""
    fraction, samples = (lambda x, n: number(x, n, lo=0, hi=1)), (lambda x, n: count(x, n, MAX_SAMPLES))
    checks = {"seed": seed, "guidance": guidance, "steps": lambda x, n: count(x, n, MAX_STEPS, lo=2),
              "k": lambda x, n: count(x, n, MAX_K), "t": fraction, "t_max": fraction, "t_min": fraction,
              "samples": samples, "judge_samples": samples, "timesteps": lambda x, n: count(x, n, MAX_TIMESTEPS)}
    for name, value in values.items():
        if value is not None:
            checks[name](value, flag(name))


def tolerance(value: Any, name: str = "tol") -> float:
    return float(number(value, name, lo=0.0, hi=1.0, lo_open=True, hi_open=True))


def guidance(value: Any, name: str = "guidance") -> float:
    return float(number(value, name, lo=0.0, hi=MAX_GUIDANCE))


def strength(value: Any, name: str = "strength") -> float:
    return float(number(value, name, lo=-MAX_STRENGTH, hi=MAX_STRENGTH))


def describing_strength(value: Any, name: str = "the describing strength") -> float:
    """The strength a basis is described at (its edits at -s and +s): positive, within the edits' bounds."""
    return float(number(value, name, lo=1e-6, hi=MAX_STRENGTH))


def strengths(values: Any, name: str = "strengths") -> list[float]:
    if not isinstance(values, (list, tuple)) or not values:
        raise LatentBasisError(f"{name} must be a non-empty list of numbers, got {values!r}")
    if len(values) > MAX_STRENGTHS:
        raise LatentBasisError(f"{name}: {len(values)} values, at most {MAX_STRENGTHS}")
    return [strength(v, name) for v in values]


def optional_string(value: Any, name: str, max_chars: int = MAX_PROMPT_CHARS) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LatentBasisError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise LatentBasisError(f"{name} has {len(value)} characters, at most {max_chars}")
    if "\x00" in value:
        raise LatentBasisError(f"{name} contains a NUL character")
    return utf8_text(value, name)


def choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise LatentBasisError(f"unknown {name} {value!r}: it is not one of {', '.join(options)}")
    return value


def condition(model, prompt, label, names: tuple[str, str] = ("prompt", "label")):
    """The condition as latentbasis passes it on: a text model's prompt, or a class-conditional model's label as
    the string "7" (a list of either, for a report); one clear message for the mix-ups, naming the two inputs by
    `names` (the CLI's --prompt and --label)."""
    p, lab = names
    if label is not None and label != []:
        if model.conditioning != "class":
            raise LatentBasisError(f"model {model.name!r} is not class-conditional: it takes no {lab}")
        if prompt:
            raise LatentBasisError(f"give {lab} or {p}, not both")
        return [str(x) for x in label] if isinstance(label, list) else str(label)
    if prompt and model.conditioning == "class":
        raise LatentBasisError(f"model {model.name!r} is class-conditional: give a class label with {lab} "
                               f"(0..{model.num_classes - 1}), not a {p.lstrip('-')}")
    return prompt


def finite_tensor(t, name: str):
    import torch

    if not isinstance(t, torch.Tensor):
        raise LatentBasisError(f"{name} is not a tensor")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise LatentBasisError(f"{name} holds NaN or infinite values")
    return t


def point(x: Any, shape: tuple[int, ...], name: str = "x_t"):
    """x as a point of x-space [*shape] (a leading batch of one is dropped): a torch.Tensor of floating point with
    every value finite; anything else (an array, integers, NaN, another shape) is one message naming it."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise LatentBasisError(f"{name} must be a torch.Tensor of shape {tuple(shape)}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise LatentBasisError(f"{name} must hold floating-point numbers, got {str(x.dtype).removeprefix('torch.')}")
    p = x[0] if x.dim() == len(shape) + 1 and x.shape[0] == 1 else x
    if tuple(p.shape) != tuple(shape):
        raise LatentBasisError(f"{name} has shape {tuple(x.shape)}, the model expects {tuple(shape)}")
    return finite_tensor(p, name)


def model(m: Any, name: str = "model"):
    """m, if it is a loaded model (latentbasis.load_model's or from_pipeline's result); a name or path given in its
    place, or anything else, is one message saying how to load it."""
    from .families.base import DiffusionModel

    if isinstance(m, DiffusionModel):
        return m
    if isinstance(m, (str, os.PathLike)):
        raise LatentBasisError(f"{name} must be a loaded model, got the name {printable(str(m))[:80]!r}: load it "
                               f"first, model = latentbasis.load_model({printable(str(m))[:80]!r})")
    raise LatentBasisError(f"{name} must be a loaded model (latentbasis.load_model or from_pipeline), got "
                           f"{type(m).__name__}")


def directions(d: Any, shape: tuple[int, ...], name: str = "d"):
    """d as rows of x-space directions [B, *shape], B >= 1: a torch.Tensor of floating point with every value
    finite; anything else (an array, integers, NaN, another shape) is one message naming it."""
    import torch

    if not isinstance(d, torch.Tensor):
        raise LatentBasisError(f"{name} must be a torch.Tensor of shape [B, {', '.join(map(str, shape))}], "
                               f"got {type(d).__name__}")
    if not d.is_floating_point():
        raise LatentBasisError(f"{name} must hold floating-point numbers, got {str(d.dtype).removeprefix('torch.')}")
    if d.dim() != len(shape) + 1 or tuple(d.shape[1:]) != tuple(shape) or d.shape[0] == 0:
        raise LatentBasisError(f"{name} has shape {tuple(d.shape)}: directions are rows [B, "
                               f"{', '.join(map(str, shape))}] of x, which has {tuple(shape)}")
    return finite_tensor(d, name)


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """The path, if it is a regular file (a link to one is fine); a folder, device, FIFO or socket is refused
    without being opened (opening a FIFO waits for a writer; a device can be endless)."""
    import stat

    p = Path(utf8_text(path, what))
    try:
        st = p.stat()
    except OSError:
        raise LatentBasisError(f"{what} {p} does not exist") from None
    if stat.S_ISDIR(st.st_mode):
        raise LatentBasisError(f"{what} {p} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise LatentBasisError(f"{what} {p} is not a regular file (a device, pipe or socket)")
    return p


def parent_folder(path: str | os.PathLike) -> Path:
    """The folder a file is to be written into, if it is an existing folder; otherwise one message saying what it
    is instead (missing, or a file)."""
    parent = Path(path).parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise LatentBasisError(f"cannot write {path}: {parent} {what}")
    return parent


def json_depth_ok(data: Any, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether data nests at most max_depth lists and objects deep (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > max_depth:
                return False
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def parse_json(text: str | bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON text, strictly: no NaN / Infinity nor a number too large to be finite (1e400), no key twice in one
    object (which of two values is meant?), at most max_depth deep; one message otherwise. Bytes are UTF-8, a
    leading byte-order mark allowed (editors on Windows write one)."""
    import json

    def no_constants(c):
        raise ValueError(f"{c} is not a JSON number")

    def finite(s):
        x = float(s)
        if not math.isfinite(x):
            raise ValueError(f"{s[:40]} is too large for a number")
        return x

    def one_value_per_key(pairs):
        d = dict(pairs)
        if len(d) < len(pairs):
            seen = set()
            for k, _ in pairs:
                if k in seen:
                    raise ValueError(f"the key {printable(k)[:60]!r} appears twice in one object")
                seen.add(k)
        return d

    try:
        data = json.loads(text.decode("utf-8-sig") if isinstance(text, bytes) else text, parse_constant=no_constants,
                          parse_float=finite, object_pairs_hook=one_value_per_key)
    except RecursionError:
        data = None
        deep = True
    except (ValueError, UnicodeDecodeError) as e:
        raise LatentBasisError(f"{what} is not readable (not JSON: {str(e)[:120]})") from None
    else:
        deep = not json_depth_ok(data, max_depth)
    if deep:
        raise LatentBasisError(f"{what} is not readable: its JSON nests more than {max_depth} levels deep")
    return data


def read_json_object(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """The one reader of JSON files (configs, model_index, scheduler configs, recipes, caches): read_json, and the
    value an object; one message otherwise."""
    data = read_json(path, what, max_bytes)
    if not isinstance(data, dict):
        raise LatentBasisError(f"{what} {path} is not a JSON object: found a {type(data).__name__}")
    return data


def read_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file's value: a regular file, at most max_bytes, strict JSON (no NaN / Infinity) at most
    MAX_JSON_DEPTH deep; one message otherwise."""
    p = regular_file(path, what)
    size = p.stat().st_size
    if size > max_bytes:
        raise LatentBasisError(f"{what} {p} is {size:,} bytes; at most {max_bytes:,} are read")
    with open(p, "rb") as fh:       # read at most max_bytes + 1 whatever the size said (a file still growing)
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise LatentBasisError(f"{what} {p} is more than {max_bytes:,} bytes; at most {max_bytes:,} are read")
    return parse_json(raw, f"{what} {p}")


# ---------------------------------------------------------------- config fields
# The fields of a model folder's configs that latentbasis reads itself, and what each must be: checked before
# diffusers sees the folder, so a wrong type is one message naming the field, not an error deep inside a library.

def _positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


FIELD_KINDS = {
    "positive whole number": _positive_int,
    "whole number >= 0": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "positive whole number or a pair of them": lambda v: _positive_int(v) or (
        isinstance(v, list) and len(v) == 2 and all(_positive_int(a) for a in v)),
    "positive whole number, or null": lambda v: v is None or _positive_int(v),
    "list of positive whole numbers": lambda v: isinstance(v, list) and len(v) > 0 and all(
        _positive_int(a) for a in v),
    "positive whole number or a list of them, or null": lambda v: v is None or _positive_int(v) or (
        isinstance(v, list) and all(_positive_int(a) for a in v)),
    "finite number": _number,
    "positive number": lambda v: _number(v) and v > 0,
    "true or false": lambda v: isinstance(v, bool),
    "text": lambda v: isinstance(v, str),
    "text, or null": lambda v: v is None or isinstance(v, str),
    "flat list of finite numbers, or null": lambda v: v is None or (
        isinstance(v, list) and len(v) > 0 and all(_number(a) for a in v)),
}

DENOISER_FIELDS = {
    "_class_name": "text", "sample_size": "positive whole number or a pair of them",
    "in_channels": "positive whole number", "out_channels": "positive whole number, or null",
    "patch_size": "positive whole number, or null", "block_out_channels": "list of positive whole numbers",
    "cross_attention_dim": "positive whole number or a list of them, or null",
    "num_class_embeds": "positive whole number, or null", "class_embed_type": "text, or null",
    "addition_embed_type": "text, or null", "joint_attention_dim": "positive whole number, or null",
}

SCHEDULER_FIELDS = {
    "_class_name": "text", "num_train_timesteps": "positive whole number", "beta_start": "positive number",
    "beta_end": "positive number", "beta_schedule": "text", "trained_betas": "flat list of finite numbers, or null",
    "prediction_type": "text", "clip_sample": "true or false", "clip_sample_range": "positive number",
    "shift": "positive number", "use_dynamic_shifting": "true or false", "steps_offset": "whole number >= 0",
    "set_alpha_to_one": "true or false", "rescale_betas_zero_snr": "true or false", "timestep_spacing": "text",
}


def check_fields(cfg: dict, fields: dict[str, str], where: str) -> dict:
    """cfg, if each of `fields` it has is of its kind (FIELD_KINDS); one message naming the first that is not."""
    for name, kind in fields.items():
        if name in cfg and not FIELD_KINDS[kind](cfg[name]):
            raise LatentBasisError(f"{where}: the field {name!r} is {str(cfg[name])[:60]!r} "
                                   f"({type(cfg[name]).__name__}); latentbasis needs a {kind} there")
    return cfg


# ---------------------------------------------------------------- paths

def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _model_file(f: Path) -> bool:
    """Whether a file of a model folder is one loading reads: configs, weights, a tokenizer's files."""
    import fnmatch

    return any(fnmatch.fnmatch(f.name, pat) for pat in (
        "*.json", "diffusion_pytorch_model*", "model.*", "model-*", "pytorch_model*", "*.bin", "*.model", "*.txt",
        "*.ckpt", "*.pt"))


def nonempty(value, name: str) -> str:
    """A path argument that is not empty (an empty one would mean the current folder, or nothing)."""
    if value is None or (isinstance(value, (str, os.PathLike)) and not str(value).strip()):
        raise LatentBasisError(f"{name} is empty: give a path")
    return utf8_text(value, name)


def output_file(value, name: str) -> Path:
    """An output file's path: not empty, and not a path that names a folder (an existing folder, one ending in a
    separator, '.', '..' or the root), where a file name would otherwise be made up or the write would fail late."""
    text = nonempty(value, name)
    if names_folder(text):
        raise LatentBasisError(f"{name} {text} is a folder; give a file path")
    return Path(text)


def _inside(f: Path, folder: Path) -> bool:
    try:
        f.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None]) -> None:
    """Before anything is written: no output is one of the inputs (nor a file a model folder among them is read
    from: its configs, weights and tokenizer) or another output, and every output's folder exists and can be written to. `outputs` / `inputs`:
    what the user calls them (e.g. "--out") -> path or None; the inputs are every path the command reads
    (cli.read_paths)."""
    outs = {k: output_file(v, k) for k, v in outputs.items() if v is not None}
    for k, p in outs.items():
        if len(p.name.encode()) > NAME_MAX:
            raise LatentBasisError(f"{k}: the file name is {len(p.name.encode())} bytes long; file systems take at "
                                   f"most {NAME_MAX}")
    ins = {k: Path(v) for k, v in inputs.items() if v not in (None, "")}
    names = list(outs)
    for a in names:
        for k, p in ins.items():
            if _same(outs[a], p):
                raise LatentBasisError(f"{a} {outs[a]} is the input {k}: writing it would destroy the input; "
                                       "choose another output path")
            if p.is_dir() and _inside(outs[a], p) and _model_file(outs[a]):   # a file a model folder is read from
                raise LatentBasisError(f"{a} {outs[a]} is a file of the input {k}: writing it would change the "
                                       "input; choose another output path")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _same(outs[a], outs[b]):
                raise LatentBasisError(f"{a} and {b} are the same file ({outs[a]}): give them different names")
    for k, p in outs.items():
        if p.exists() and not p.is_file():
            raise LatentBasisError(f"{k} {p} is not a regular file (a device or a pipe); give a file path")
        parent = parent_folder(p)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise LatentBasisError(f"cannot write {p}: folder {parent} is not writable")
        if p.exists() and not os.access(p, os.W_OK) and not os.access(parent, os.W_OK):
            raise LatentBasisError(f"cannot write {p}: it is not writable")


def check_output_folder(path: str | os.PathLike, name: str, inputs: dict[str, str | os.PathLike | None] = (),
                        earlier: tuple[str, ...] = (), what: str = "output") -> Path:
    """An output folder (created if missing, its parent must exist): not a file, not an input, writable. With
    `earlier` (name patterns of what the command writes there, e.g. "report.html"), an existing folder must be
    empty or hold an earlier run's output, so that no file of the user's is overwritten: the file system's root, a
    home folder or a model folder is refused. Hidden entries are not counted: no output's name starts with '.'."""
    import fnmatch

    p = Path(nonempty(path, name))
    for k, v in dict(inputs).items():
        if v not in (None, "") and _same(p, Path(v)):
            raise LatentBasisError(f"{name} {p} is the input {k}; choose another folder")
    if p.exists() and not p.is_dir():
        raise LatentBasisError(f"{name} {p} is a file, not a folder")
    parent_folder(p)
    target = p if p.exists() else p.parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise LatentBasisError(f"cannot write into {target}: it is not writable")
    if earlier and p.is_dir():
        try:
            names = sorted(e.name for e in p.iterdir() if not e.name.startswith("."))
        except OSError as e:
            raise LatentBasisError(f"cannot read {p}: {e.strerror or e}") from None
        if names and not any(fnmatch.fnmatch(n, pat) for n in names for pat in earlier):
            raise LatentBasisError(f"{name} {p} already holds other files ({printable(names[0])[:60]}"
                                   f"{', ...' if len(names) > 1 else ''}) and no earlier {what}: writing there could "
                                   "overwrite them; give a new or empty folder")
    return p
