"""Files written safely: atomic writes (a temporary file in the same folder, renamed over the target only once
complete), and private working folders named after the process that made them (removed once it is gone)."""
from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import re
import shutil
import stat
import tempfile
import uuid
from pathlib import Path

from .errors import LatentBasisError, utf8_text

NAME_MAX = 255    # bytes in one file name on Linux, macOS and Windows file systems


def temporary_name(name: str, token: str) -> str:
    """The temporary file's name beside `name`: ".{name}.{token}.tmp{suffix}", the name shortened (on a character
    boundary) so that the whole fits NAME_MAX bytes however long `name` is."""
    suffix = Path(name).suffix if len(Path(name).suffix.encode()) <= 16 else ""
    room = NAME_MAX - len(f"..{token}.tmp{suffix}".encode())
    stem = name
    while len(stem.encode()) > room:
        stem = stem[:-1]
    return f".{stem}.{token}.tmp{suffix}"


def process_running(pid: int) -> bool:
    """Whether process pid still runs here (one we cannot ask about counts as running: its files are left alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True      # someone else's process, or one we cannot ask about: leave its file alone
    return True


def _write_error(path: Path, e: BaseException) -> LatentBasisError | None:
    """One line for a write that failed for the file system's reasons (a full disk, a quota, a read-only or
    failing device, a name too long), from an OSError or a library's error that wraps one (safetensors')."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG,
                                              errno.ENAMETOOLONG, errno.EACCES, errno.EPERM):
        return LatentBasisError(f"cannot write {path}: {e.strerror or os.strerror(e.errno)}; nothing was changed")
    text = str(e)
    if type(e).__name__ == "SafetensorError" and "os error" in text:
        reason = text.split(":")[-1].strip() if ":" in text else text
        return LatentBasisError(f"cannot write {path}: {reason[:120]}; nothing was changed")
    return None


def names_folder(path: str | os.PathLike) -> bool:
    """Whether a path given for a file names a folder instead: an existing folder, or a path ending in a
    separator, '.' or '..', or the root (no file name to write)."""
    text = os.fspath(path)
    if text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        return True
    try:
        return Path(text).is_dir()
    except OSError:          # a name too long to look up: no folder; the writer says what is wrong with it
        return False


def file_path(path: str | os.PathLike) -> Path:
    """The path of a file to write, as a Path; one that names a folder (names_folder) is refused, before the
    conversion to a Path drops a trailing separator."""
    utf8_text(path, "the path")
    if names_folder(path):
        raise LatentBasisError(f"{os.fspath(path)} is a folder; give a file path")
    return Path(path)


_PENDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("latentbasis_pending_writes", default=None)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success it replaces `path` (os.replace is atomic on one file
    system), on any error or interrupt it is removed and `path` is left as it was. Permissions follow the umask.
    Inside `all_or_nothing` the replacement waits for the end of that block.

    The temporary name carries this process's id and fits the file system's name limit (temporary_name). A
    process killed mid-write cannot remove its temporary file; the next complete write of `path` removes those of
    processes no longer running, never one another live writer is still writing. A full disk, a quota or a
    read-only folder is one LatentBasisError naming the file."""
    path = file_path(path)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = path.with_name(temporary_name(path.name, token))
    pending, deferred = _PENDING.get(), False
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())   # some writers (safetensors) create 0600 files: every output alike
        if pending is not None:
            pending.append((tmp, path))
            deferred = True
        else:
            os.replace(tmp, path)
    except Exception as e:
        err = _write_error(path, e)
        if err is not None:
            raise err from None
        raise
    finally:
        if not deferred and tmp.exists():
            tmp.unlink()
    if not deferred:
        _remove_stale(path)


@contextlib.contextmanager
def all_or_nothing():
    """The outputs written inside (each through atomic_path) appear together when the block ends without error,
    or none does: each one's complete temporary file waits beside its target and is renamed over it at the end; on
    any error or interrupt every temporary file is removed and every target left as it was. A block inside another
    belongs to the outer one."""
    if _PENDING.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _PENDING.reset(token)
    for i, (tmp, path) in enumerate(pending):
        try:
            os.replace(tmp, path)
        except Exception as e:
            for later, _ in pending[i:]:
                later.unlink(missing_ok=True)
            raise _write_error(path, e) or e
    for path in dict.fromkeys(p for _, p in pending):
        _remove_stale(path)


@contextlib.contextmanager
def atomic_folder_contents(folder: str | os.PathLike):
    """Yield an empty temporary folder inside `folder`: what is written there (any writer, subfolders too) is
    moved into `folder` by renames once the block ends without error, so the files appear complete; on any error
    or interrupt it is removed and `folder` is left as it was (one left by a killed process is removed by the next
    block on `folder`). A full disk is one LatentBasisError."""
    folder = Path(folder)
    remove_stale_workdirs(folder, _FOLDER_CONTENTS_NAME)
    tmp = folder / f".latentbasis-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        try:
            yield tmp
        except Exception as e:
            err = _write_error(folder, e)
            if err is not None:
                raise err from None
            raise
        for src in sorted(p for p in tmp.rglob("*") if not p.is_dir()):
            dest = folder / src.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(path: Path) -> None:
    """Temporary files of `path` left by writers that were killed: those whose process is gone."""
    import re

    pattern = re.compile(r"\.(\d+)-[0-9a-f]{8}\.tmp")
    for stale in path.parent.glob(".*.tmp*"):
        m = pattern.search(stale.name)
        if not m or temporary_name(path.name, m.group(0)[1:-4]) != stale.name:
            continue
        if not process_running(int(m.group(1))):
            stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def private_root(root: str | os.PathLike) -> Path:
    """`root` made a private folder of this user (created 0700; this user's own folder set to 0700), or, where that
    path is a link, not a folder, or another user's, a fresh private folder instead (tempfile.mkdtemp): such a
    path is never followed and never deleted."""
    root = Path(root)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return Path(tempfile.mkdtemp(prefix=f"{root.name}-"))
    st = os.lstat(root)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
        if st.st_mode & 0o077:
            os.chmod(root, 0o700)
        return root
    return Path(tempfile.mkdtemp(prefix=f"{root.name}-"))


_WORKDIR_NAME = re.compile(r"(\d+)-[0-9a-f]{12}")


def new_workdir(root: Path) -> Path:
    """A fresh folder (0700) in `root`, named after this process ("{pid}-{12 hex}"), so that remove_stale_workdirs
    can tell the folders of processes that are gone."""
    d = root / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.mkdir(d, 0o700)
    return d


_FOLDER_CONTENTS_NAME = re.compile(r"\.latentbasis-(\d+)-[0-9a-f]{8}\.tmp")   # atomic_folder_contents' folders


def remove_stale_workdirs(root: Path, name: re.Pattern = _WORKDIR_NAME) -> int:
    """Remove the folders in `root` that new_workdir made (or, with `name`, another maker whose names carry the
    process id first) for processes no longer running; returns how many. Only such folders: named so, real
    folders (not links), this user's."""
    removed = 0
    for d in root.iterdir():
        m = name.fullmatch(d.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        st = os.lstat(d)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not process_running(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


class WorkRoot:
    """A temporary root private to this user (private_root, resolved once: a planted link or another user's folder
    at `path` is left alone and one fresh private folder used instead) that holds a folder per session."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def root(self) -> Path:
        self.path = private_root(self.path)
        return self.path

    def new(self) -> Path:
        """A fresh session folder (new_workdir)."""
        return new_workdir(self.root())

    def remove_stale(self) -> int:
        """Remove the session folders of processes that are gone (remove_stale_workdirs); returns how many."""
        return remove_stale_workdirs(self.root())
