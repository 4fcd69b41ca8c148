"""Write files completely or not at all, with the user's umask, and say so when the disk is full."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "check_writable_dir", "current_umask", "disk_full_error", "file_mode", "free_bytes"]

_umask_lock = threading.Lock()
_umask: int | None = None


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    global _umask
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii", errors="replace") as fh,
    ):
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:  # elsewhere: set and restore it once (os.umask has no read-only form)
        if _umask is None:
            _umask = os.umask(0o022)
            os.umask(_umask)
        return _umask


def file_mode() -> int:
    """The mode a new file gets from ``open()``: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def disk_full_error(
    what: str,
    where: str | os.PathLike[str],
    need_bytes: int | None,
    *,
    at_least: bool = False,
    note: str = "",
) -> OSError:
    """An ``ENOSPC`` error that says how much was needed, how much is free and where."""
    free = free_bytes(where)
    need = f"it needs {'more than' if at_least else 'about'} {_mb(need_bytes)}, " if need_bytes else ""
    tail = f"; {note}" if note else ""
    return OSError(
        errno.ENOSPC,
        f"disk full while writing the {what}: {need}{_mb(free)} free at {where}; free space there "
        f"or choose another place{tail}",
    )


def check_writable_dir(folder: Path, what: str = "output") -> None:
    """Raise ``OSError`` with a clear message if ``folder`` cannot take new files."""
    if not folder.is_dir():
        raise OSError(f"cannot write the {what}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"cannot write the {what}: folder {folder} is not writable; choose another -o")


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], what: str = "output", *, need_bytes: int | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success, fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. The
    file gets the mode a plain ``open()`` would give it (``0o666`` less the umask), not
    the private ``0o600`` of a temporary file. ``need_bytes`` (the expected size) is
    checked against the free space first; a full disk raises ``OSError(ENOSPC)`` saying
    how much was needed, how much is free and where.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    check_writable_dir(parent, what)
    if need_bytes is not None and free_bytes(parent) < need_bytes:
        raise disk_full_error(f"{what} {path}", parent, need_bytes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            written = tmp.stat().st_size if tmp.exists() else 0
            tmp.unlink(missing_ok=True)
            if need_bytes:
                raise disk_full_error(f"{what} {path}", parent, need_bytes) from exc
            raise disk_full_error(f"{what} {path}", parent, written or None, at_least=True) from exc
        if tmp.exists() and not os.path.islink(tmp):
            os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename durable where possible
            dfd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
