"""Atomic file writes: a temporary file in the same folder, renamed over the target only once complete."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path` (os.replace is atomic on one file
    system), on any error or interrupt it is removed and `path` is left as it was. Permissions follow the umask.
    A process killed mid-write cannot remove its temporary file; the next complete write of `path` does."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())   # some writers (safetensors) create 0600 files: every output alike
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp{glob_escape(path.suffix)}"):
        stale.unlink(missing_ok=True)   # left by a writer that was killed before it could clean up


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
