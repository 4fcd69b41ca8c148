"""The few pymmcore-plus internals the hot path relies on, in one place.

pymmcore-plus 0.18's ``UniMMCore`` keeps Python-camera frames in a ``SequenceBuffer``
(``core._seq_buffer``: a preallocated ``_pool`` array cut into ``_slots`` that each hold an
``array`` and its ``metadata``). Reading it directly lets the daemon pop a frame straight into
a ring slot, peek at the newest image number without copying a frame, and make the pool
resident before the camera starts. None of that is public API, so every accessor here returns
None (or False) when the core is not such a core or the internals have changed, and the
callers fall back to the public API.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "buffer_pool",
    "has_python_camera",
    "newest_slot_metadata",
    "oldest_slot_metadata",
    "sequence_buffer",
    "sequence_running",
    "slot_spec",
]


def sequence_buffer(core: Any) -> Any | None:
    """The core's ``SequenceBuffer`` (UniMMCore), else None."""
    try:
        return core._seq_buffer
    except AttributeError:
        return None


def has_python_camera(core: Any) -> bool:
    """Whether the current camera is a Python device of a UniMMCore."""
    try:
        return core._py_camera() is not None
    except (AttributeError, TypeError):
        return False


def buffer_pool(core: Any) -> np.ndarray | None:
    """The preallocated array behind the sequence buffer, else None."""
    try:
        pool = core._seq_buffer._pool
    except AttributeError:
        return None
    return pool if isinstance(pool, np.ndarray) else None


def slot_spec(core: Any) -> tuple[tuple[int, ...], np.dtype[Any]] | None:
    """``(shape, dtype)`` of the frames in the sequence buffer's slots, else None."""
    try:
        arr = core._seq_buffer._slots[0].array
    except (AttributeError, IndexError, TypeError):
        return None
    return tuple(arr.shape), arr.dtype


def newest_slot_metadata(core: Any) -> Any | None:
    """Metadata of the newest frame in the sequence buffer; ``{}`` when it is empty; None if unknown."""
    try:
        slots = core._seq_buffer._slots
    except AttributeError:
        return None
    try:
        return slots[-1].metadata or {}
    except IndexError:
        return {}
    except (AttributeError, TypeError):
        return None


def oldest_slot_metadata(core: Any) -> Any | None:
    """Metadata of the oldest frame in the sequence buffer (the next pop); ``{}`` when empty; None if unknown."""
    try:
        slots = core._seq_buffer._slots
    except AttributeError:
        return None
    try:
        return slots[0].metadata or {}
    except IndexError:
        return {}
    except (AttributeError, TypeError):
        return None


def sequence_running(core: Any) -> bool:
    """Whether the core's camera runs a sequence, asked without side effects.

    ``UniMMCore.isSequenceRunning`` with a Python camera clears the core's finished acquisition
    thread as it answers; called from a second thread, that can race the core's own start of a
    new sequence and lose it. Here the thread is only looked at. Other cores are asked normally.
    """
    if has_python_camera(core):
        try:
            thread = core._acquisition_thread
        except AttributeError:
            thread = None
        else:
            return thread is not None and bool(thread.is_alive())
    try:
        return bool(core.isSequenceRunning())
    except Exception:
        return False
