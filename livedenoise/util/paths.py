"""Paths that come from outside (control requests): checked, and confined to named folders.

The daemon's operator names folders when starting it (``--data-dir``, ``--model-dir``); a
path in a control request must resolve inside one of them. :func:`confine` checks the
text first (a string, no NUL byte, no control characters, encodable for the file system,
of a sane length), then the path lexically (``..`` may not climb out; nothing outside the
folders is looked at), then with symbolic links resolved (a link inside may not lead
outside). Errors name the folders and the option that widens them, never anything found
at the path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MAX_PATH_CHARS", "PathError", "check_path_text", "confine", "is_inside"]

MAX_PATH_CHARS = 4096


class PathError(ValueError):
    """A path from a request that is invalid or leads outside the allowed folders."""


def check_path_text(value: object, what: str = "path") -> str:
    """Return ``value`` if it is usable path text, else raise :class:`PathError` (nothing is touched)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise PathError(f"{what} must be a path string, got a {type(value).__name__}")
    if not value.strip():
        raise PathError(f"{what} is empty; give a path")
    if len(value) > MAX_PATH_CHARS:
        raise PathError(f"{what} is {len(value)} characters long; paths are at most {MAX_PATH_CHARS}")
    if "\x00" in value:
        raise PathError(f"{what} contains a NUL byte; give a plain path")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise PathError(f"{what} contains control characters; give a plain path")
    try:
        os.fsencode(value)
    except UnicodeError:
        raise PathError(f"{what} cannot be encoded as a file name on this system") from None
    return value


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True if ``path`` is ``folder`` or below it (both taken as given: normalise them first)."""
    try:
        return os.path.commonpath([os.fspath(path), os.fspath(folder)]) == os.fspath(folder)
    except ValueError:  # different drives, or one relative and one absolute
        return False


def confine(
    value: object,
    roots: Sequence[str | os.PathLike[str]],
    *,
    what: str = "path",
    option: str = "",
) -> Path:
    """Resolve ``value`` inside one of ``roots``; return the resolved absolute path.

    A relative ``value`` is taken inside each root in turn (the first where it exists,
    else the first root); an absolute one must lie inside a root. The path need not
    exist. Raises :class:`PathError` for invalid text or a path that leads outside.

    Parameters
    ----------
    value
        The path text from the request.
    roots
        The allowed folders (need not be resolved).
    what
        What the path is, for messages (``"output"``, ``"model"``).
    option
        The daemon option that names the folders (``"--data-dir"``), for messages.
    """
    text = check_path_text(value, what)
    folders = [Path(os.path.abspath(os.fspath(r))) for r in roots]
    if not folders:
        raise PathError(f"{what}: no folder is allowed for paths here")
    where = ", ".join(str(f) for f in folders)
    hint = f"; start the daemon with {option} DIR to allow another folder" if option else ""
    p = Path(text)
    if p.is_absolute():
        candidates = [Path(os.path.normpath(p))]
    else:
        candidates = [Path(os.path.normpath(f / p)) for f in folders]
    inside = [c for c in candidates if any(is_inside(c, f) for f in folders)]
    if not inside:
        raise PathError(f"{what} {text!r} is outside the allowed folder(s) {where}{hint}")
    real_roots = [os.path.realpath(r) for r in folders]
    first_ok: Path | None = None
    escapes = False
    for c in inside:
        real = Path(os.path.realpath(c))
        ok = any(is_inside(real, r) for r in real_roots)
        if ok and os.path.lexists(real):
            return real
        if ok and first_ok is None:
            first_ok = real
        escapes = escapes or not ok
    if escapes and (first_ok is None or any(os.path.lexists(c) for c in inside)):
        raise PathError(
            f"{what} {text!r} leads outside the allowed folder(s) {where} through a symbolic link{hint}"
        )
    assert first_ok is not None
    return first_ok
