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

from .errors import LatentBasisError

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
MAX_IMAGE_BYTES = 64 * 2**20
MAX_IMAGE_PIXELS = 40_000_000
MAX_X_ELEMENTS = 2**26       # numbers in x_t (3 x 4096 x 4096 pixels, or SDXL's 4 x 128 x 128 latent many times over)
MAX_TRAIN_TIMESTEPS = 100_000


def number(value: Any, name: str, *, lo: float | None = None, hi: float | None = None, integer: bool = False,
           lo_open: bool = False, hi_open: bool = False) -> float | int:
    """A finite number (an int when `integer`), inside [lo, hi] (open ends where asked); else one message.
    Booleans and strings are not numbers here (a JSON "3" is a mistake, not a 3)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LatentBasisError(f"{name} must be a {'whole ' if integer else ''}number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise LatentBasisError(f"{name} must be a finite number, got {value}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise LatentBasisError(f"{name} must be a whole number, got {value}")
        value = int(value)
    low = lo is not None and (value <= lo if lo_open else value < lo)
    high = hi is not None and (value >= hi if hi_open else value > hi)
    if low or high:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        bounds = f"{left}{'-inf' if lo is None else _fmt(lo)}, {'inf' if hi is None else _fmt(hi)}{right}"
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


def tolerance(value: Any, name: str = "tol") -> float:
    return float(number(value, name, lo=0.0, hi=1.0, lo_open=True, hi_open=True))


def guidance(value: Any, name: str = "guidance") -> float:
    return float(number(value, name, lo=0.0, hi=MAX_GUIDANCE))


def strength(value: Any, name: str = "strength") -> float:
    return float(number(value, name, lo=-MAX_STRENGTH, hi=MAX_STRENGTH))


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
    return value


def choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise LatentBasisError(f"{name} {value!r} is not one of {', '.join(options)}")
    return value


def finite_tensor(t, name: str):
    import torch

    if not isinstance(t, torch.Tensor):
        raise LatentBasisError(f"{name} is not a tensor")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise LatentBasisError(f"{name} holds NaN or infinite values")
    return t


def read_json_object(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from a file, strictly (no NaN / Infinity), at most max_bytes; one message otherwise."""
    import json

    p = Path(path)
    if not p.is_file():
        raise LatentBasisError(f"{what} {p} does not exist")
    size = p.stat().st_size
    if size > max_bytes:
        raise LatentBasisError(f"{what} {p} is {size:,} bytes; at most {max_bytes:,} are read")

    def no_constants(c):
        raise ValueError(f"{c} is not a JSON number")

    try:
        data = json.loads(p.read_bytes().decode("utf-8"), parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise LatentBasisError(f"{p} is not a readable {what} (not JSON: {str(e)[:120]})") from None
    if not isinstance(data, dict):
        raise LatentBasisError(f"{p} is not a readable {what}: a JSON object was expected, found a "
                               f"{type(data).__name__}")
    return data


# ---------------------------------------------------------------- paths

def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, str | os.PathLike | None]) -> None:
    """Before anything is written: no output is one of the inputs or another output, and every output's folder
    exists and can be written to. `outputs` / `inputs`: what the user calls them (e.g. "--out") -> path or None."""
    outs = {k: Path(v) for k, v in outputs.items() if v not in (None, "")}
    ins = {k: Path(v) for k, v in inputs.items() if v not in (None, "")}
    names = list(outs)
    for a in names:
        for k, p in ins.items():
            if _same(outs[a], p):
                raise LatentBasisError(f"{a} {outs[a]} is the input {k}: writing it would destroy the input; "
                                       "choose another output path")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _same(outs[a], outs[b]):
                raise LatentBasisError(f"{a} and {b} are the same file ({outs[a]}): give them different names")
    for k, p in outs.items():
        if p.is_dir():
            raise LatentBasisError(f"{k} {p} is a folder; give a file path")
        if p.exists() and not p.is_file():
            raise LatentBasisError(f"{k} {p} is not a regular file (a device or a pipe); give a file path")
        parent = p.parent
        if not parent.is_dir():
            raise LatentBasisError(f"cannot write {p}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise LatentBasisError(f"cannot write {p}: folder {parent} is not writable")
        if p.exists() and not os.access(p, os.W_OK) and not os.access(parent, os.W_OK):
            raise LatentBasisError(f"cannot write {p}: it is not writable")


def check_output_folder(path: str | os.PathLike, name: str, inputs: dict[str, str | os.PathLike | None] = ()) -> Path:
    """An output folder (created if missing, its parent must exist): not a file, not an input, writable."""
    p = Path(path)
    for k, v in dict(inputs).items():
        if v not in (None, "") and _same(p, Path(v)):
            raise LatentBasisError(f"{name} {p} is the input {k}; choose another folder")
    if p.exists() and not p.is_dir():
        raise LatentBasisError(f"{name} {p} is a file, not a folder")
    if not p.parent.is_dir():
        raise LatentBasisError(f"cannot write {p}: folder {p.parent} does not exist")
    target = p if p.exists() else p.parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise LatentBasisError(f"cannot write into {target}: it is not writable")
    return p
