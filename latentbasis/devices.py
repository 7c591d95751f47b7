"""Where the model runs and in what precision, and how much memory the Jacobian products may use.

- device: "cpu", "cuda", "cuda:N", "mps", or "auto" (the environment's LATENTBASIS_DEVICE where it is set, else a
  CUDA GPU when there is one, else Apple's MPS, else the CPU).
- dtype: the precision of the network's forward for sampling, inversion and editing: float32 (default), float16,
  bfloat16. The feature map, the Jacobian operator and the basis algorithms are float32 whatever the dtype
  (half-precision JVPs are off by about 1 %), their small linear algebra float64.
- memory budget (bytes): the most this process may hold while the Jacobian products run, the model's weights
  included (the resident set on the CPU, torch's allocations on a GPU); it sets their chunk size, and a budget too
  small for one product is refused before it runs. Default: what is in use plus 90 % of the GPU's free memory, or
  plus 75 % of the memory the system has available on the CPU.
Random draws never depend on the device: x_T comes from a CPU generator and is then moved.
"""
from __future__ import annotations

import os
import re

import torch

from .errors import LatentBasisError, printable

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
DTYPE_NAMES = ("float32", "float16", "bfloat16")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """A torch.device from a user's word, checked to exist here (one clear message otherwise)."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto" and os.environ.get("LATENTBASIS_DEVICE", "").strip():
        name = os.environ["LATENTBASIS_DEVICE"].strip().lower()   # e.g. the test suite on a GPU machine
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", name)
    if not m:
        raise LatentBasisError(f"device {name!r} is not one of cpu, cuda, cuda:N, mps, auto")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise LatentBasisError("device 'mps': Apple's MPS is not available here (use the device 'cpu')")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise LatentBasisError(f"device {name!r}: no CUDA GPU is available here (this torch "
                               f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}; "
                               "use the device 'cpu')")
    i = int(index) if index is not None else torch.cuda.current_device()
    if i >= torch.cuda.device_count():
        raise LatentBasisError(f"device {name!r}: there are {torch.cuda.device_count()} CUDA GPU(s), "
                               f"numbered 0..{torch.cuda.device_count() - 1}")
    return torch.device("cuda", i)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_dtype(name: str | torch.dtype | None = "float32") -> torch.dtype:
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise LatentBasisError(f"dtype {name} is not one of {', '.join(DTYPE_NAMES)}")
        return name
    key = (name or "float32").strip().lower()
    if key not in DTYPES:
        raise LatentBasisError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}


def parse_memory(text: str | int | float) -> int:
    """Bytes from '24GB', '512MiB', '8g', '1e9' (a bare number is bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z]*)\s*", str(text).lower())
        if not m or m.group(2) not in _UNITS:
            raise LatentBasisError(f"memory size {text!r} is not understood: give e.g. 24GB, 512MiB or 8g")
        value, unit = float(m.group(1)), m.group(2)
    out = value * _UNITS[unit]
    if not out >= 1 or out != out or out == float("inf"):
        raise LatentBasisError(f"memory size {text!r} must be a positive size")
    return int(out)


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def default_memory_budget(device: torch.device) -> int:
    """What the process holds now plus 90 % of a GPU's free memory (with what torch caches there unused), or plus
    75 % of the memory the system has
    available for the CPU (and MPS, which shares it)."""
    if device.type == "cuda":   # what torch's allocator caches but does not use is free to this process too
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return memory_in_use(device) + int(0.9 * (free + cached))
    return memory_in_use(device) + int(0.75 * _available_system_memory())


def memory_in_use(device: torch.device) -> int:
    """What this process holds now: the bytes torch has allocated on a GPU; the resident set (weights, the
    interpreter, everything) on the CPU and MPS (Linux; 0 where unknown), after freed heap is handed back."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    _release_freed_heap()
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def _release_freed_heap() -> None:
    """Hand memory that was freed but is still held by the C allocator back to the system (glibc's malloc_trim),
    so that the resident set counts what is in use, not what an earlier product left behind for reuse."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def total_memory(device: torch.device) -> int:
    """All the memory of the device: the GPU's, or the machine's physical memory for the CPU (0 where unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory_budget(budget: int | None, device: torch.device) -> int | None:
    """The budget itself, or one clear error when it is more than the device has (a budget the machine cannot give
    would only end in the system killing the process)."""
    total = total_memory(device)
    if budget is not None and total and budget > total:
        where = "this GPU" if device.type == "cuda" else "this machine"
        raise LatentBasisError(f"the memory budget (max_memory) {format_bytes(budget)} is more than {where} has "
                               f"({format_bytes(total)}): give at most that")
    return budget


def _available_system_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def is_out_of_memory(e: BaseException) -> bool:
    """A GPU out-of-memory error, or the CPU allocator refusing an allocation."""
    if isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, (RuntimeError, MemoryError)) and (
        isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text
        or "not enough memory" in text or "failed to allocate" in text)


def error_line(e: BaseException) -> str:
    """Any error as one line for the user: latentbasis' own message (LatentBasisError), running out of memory, a
    file system error, or, for a failure not foreseen, its kind and first line (never a traceback). Escaped
    (errors.printable): a path or value the message quotes cannot break the line or drive the terminal."""
    return printable(_error_text(e))


def _error_text(e: BaseException) -> str:
    if isinstance(e, LatentBasisError):
        return str(e)
    if is_out_of_memory(e):
        return "out of memory: lower the memory budget (max_memory), k or the dtype, or use a device with more memory"
    if isinstance(e, OSError):
        return f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}"
    return f"unexpected {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''} (please report this)"


def out_of_memory_error(budget: int | None, what: str) -> LatentBasisError:
    where = f" (memory budget {format_bytes(budget)})" if budget else ""
    return LatentBasisError(f"out of memory during {what}{where}: lower the memory budget max_memory so the "
                            "Jacobian products run in smaller chunks, or use a smaller dtype or k, or a device with "
                            "more memory")
