"""Preallocated ring buffer between acquisition (one producer) and restoration (one consumer).

Each slot holds the raw ``uint16`` frame, its float32 photoelectrons and the frame's
metadata. Nothing is allocated per frame: the producer claims a free slot, fills it in
place and commits it; the consumer gets the oldest committed slot, works on it and
releases it. When every slot is full the policy decides:

- ``drop-oldest``: the oldest committed (not yet taken) frame is overwritten; the drop is
  counted and reported through ``on_drop(frame, reason)``.
- ``block``: the producer waits for the consumer; nothing is lost.

Example
-------
>>> ring = RingBuffer(4, (64, 64))
>>> slot = ring.claim()
>>> slot.raw[:] = 100; slot.frame = 0
>>> ring.commit(slot)
>>> got = ring.get(timeout_s=1.0)
>>> got.frame
0
>>> ring.release(got)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from livedenoise.live.types import DropReason, RingPolicy
from livedenoise.util.memory import prefault

__all__ = ["RingBuffer", "RingClosed", "Slot"]


class RingClosed(RuntimeError):
    """The ring was closed while a thread waited on it."""


class Slot:
    """One preallocated frame slot; the metadata attributes are overwritten per frame.

    Attributes
    ----------
    raw : np.ndarray
        ``uint16`` ADU, ``(H, W)``.
    e : np.ndarray
        ``float32`` photoelectrons, ``(H, W)``.
    frame : int
        Frame number since acquisition start.
    exposure_ms, t_acquired : float
        Exposure and wall-clock time the frame left the core (s since the epoch).
    camera : str or None
        Camera device label.
    truth_id : int or None
        Simulator frame id (for the ``truth`` topic), else None.
    identity : dict or None
        Where the frame belongs (``index``, ``channel``, ``position_um`` of its MDA event), else None.
    converter : callable or None
        ``converter(raw, e)``: the photoelectron conversion for the frame's own geometry, when
        ``e`` is still to be filled (``converted`` False); the consumer then converts.
    converted : bool
        Whether ``e`` already holds the frame's photoelectrons.
    calibration : str or None
        Id of the calibration (crop) that converts this frame.
    t_pop, t_commit, acquire_s, convert_s : float
        Timing of the acquisition stages (``perf_counter`` seconds).
    """

    __slots__ = (
        "acquire_s",
        "calibration",
        "camera",
        "convert_s",
        "converted",
        "converter",
        "e",
        "exposure_ms",
        "frame",
        "identity",
        "index",
        "raw",
        "t_acquired",
        "t_commit",
        "t_pop",
        "truth_id",
    )

    def __init__(self, index: int, shape: tuple[int, int]) -> None:
        self.index = index
        self.raw = np.zeros(shape, np.uint16)
        self.e = np.zeros(shape, np.float32)
        # resident now, not when the first frames stream in (see livedenoise.util.memory)
        prefault(self.raw)
        prefault(self.e)
        self.frame = -1
        self.exposure_ms = 0.0
        self.t_acquired = 0.0
        self.camera: str | None = None
        self.truth_id: int | None = None
        self.identity: dict[str, Any] | None = None
        self.converter: Callable[[np.ndarray, np.ndarray], Any] | None = None
        self.converted = False
        self.calibration: str | None = None
        self.t_pop = 0.0
        self.t_commit = 0.0
        self.acquire_s = 0.0
        self.convert_s = 0.0

    def __repr__(self) -> str:
        return f"Slot({self.index}, frame={self.frame}, shape={self.raw.shape})"


class RingBuffer:
    """Single-producer / single-consumer ring of preallocated frame slots.

    Parameters
    ----------
    slots : int
        Number of slots (>= 2).
    shape : tuple of int
        Frame shape ``(H, W)``.
    policy : str
        ``"drop-oldest"`` or ``"block"``.
    on_drop : callable, optional
        ``on_drop(frame, reason)`` called (outside the lock, on the producer's thread)
        for every frame overwritten under ``drop-oldest``.
    """

    def __init__(
        self,
        slots: int,
        shape: tuple[int, int],
        policy: RingPolicy | str = RingPolicy.DROP_OLDEST,
        on_drop: Callable[[int, DropReason], Any] | None = None,
    ) -> None:
        if int(slots) < 2:
            raise ValueError(f"a ring buffer needs at least 2 slots, got {slots}")
        if policy not in tuple(RingPolicy):
            raise ValueError(f"ring policy must be 'drop-oldest' or 'block', got {policy!r}")
        self.policy = RingPolicy(policy)
        self.on_drop = on_drop
        self._n = int(slots)
        self._cond = threading.Condition()
        self._closed = False
        self._allocate(tuple(int(s) for s in shape))  # type: ignore[arg-type]
        self.pushed = 0
        self.popped = 0
        self.dropped = 0

    def _allocate(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self._slots = [Slot(i, shape) for i in range(self._n)]
        self._free: deque[int] = deque(range(self._n), maxlen=self._n)
        self._queue: deque[int] = deque(maxlen=self._n)
        self._claimed: int | None = None
        self._held: int | None = None

    # -- producer -------------------------------------------------------------------

    def claim(self, timeout_s: float | None = None) -> Slot | None:
        """A slot to fill; None if the ring closed (or ``timeout_s`` passed under ``block``).

        Under ``drop-oldest`` this never waits: with no free slot the oldest committed
        frame is dropped and its slot reused.
        """
        dropped_frame = -1
        with self._cond:
            if self._claimed is not None:
                raise RuntimeError("claim() twice without commit()/abort(): one producer only")
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not self._free:
                if self._closed:
                    return None
                if self.policy is RingPolicy.DROP_OLDEST and self._queue:
                    idx = self._queue.popleft()
                    dropped_frame = self._slots[idx].frame
                    self.dropped += 1
                    self._free.append(idx)
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closed:
                return None
            idx = self._free.popleft()
            self._claimed = idx
            slot = self._slots[idx]
        if dropped_frame >= 0 and self.on_drop is not None:
            self.on_drop(dropped_frame, DropReason.RING_FULL)
        return slot

    def commit(self, slot: Slot) -> None:
        """Hand a filled slot to the consumer."""
        with self._cond:
            self._check_claimed(slot)
            self._claimed = None
            slot.t_commit = time.perf_counter()
            self._queue.append(slot.index)
            self.pushed += 1
            self._cond.notify_all()

    def abort(self, slot: Slot) -> None:
        """Give a claimed slot back unused."""
        with self._cond:
            self._check_claimed(slot)
            self._claimed = None
            self._free.appendleft(slot.index)
            self._cond.notify_all()

    def _check_claimed(self, slot: Slot) -> None:
        if self._claimed != slot.index or self._slots[slot.index] is not slot:
            raise RuntimeError(f"{slot!r} is not the slot claimed from this ring")

    # -- consumer -------------------------------------------------------------------

    def get(self, timeout_s: float | None = None) -> Slot | None:
        """The oldest committed slot, or None on timeout or when closed and empty."""
        with self._cond:
            if self._held is not None:
                raise RuntimeError("get() twice without release(): one consumer only")
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while not self._queue:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            idx = self._queue.popleft()
            self._held = idx
            self.popped += 1
            return self._slots[idx]

    def release(self, slot: Slot) -> None:
        """Give a slot taken with :meth:`get` back to the producer."""
        with self._cond:
            if self._held != slot.index or self._slots[slot.index] is not slot:
                raise RuntimeError(f"{slot!r} is not the slot held by the consumer")
            self._held = None
            self._free.append(slot.index)
            self._cond.notify_all()

    # -- geometry and life cycle ------------------------------------------------------

    def __len__(self) -> int:
        """Committed frames waiting for the consumer."""
        with self._cond:
            return len(self._queue)

    @property
    def slots(self) -> int:
        return self._n

    def wait_empty(self, timeout_s: float | None = None) -> bool:
        """Wait until the consumer has taken and released every committed frame."""
        with self._cond:
            return (
                self._cond.wait_for(
                    lambda: self._closed or (not self._queue and self._held is None), timeout_s
                )
                and not self._queue
                and self._held is None
            )

    def resize(self, shape: tuple[int, int], timeout_s: float | None = 10.0) -> None:
        """Reallocate every slot for frames of ``shape`` (an ROI or binning change).

        Called by the producer between frames. Frames already committed are drained
        first (the consumer finishes them); raises ``TimeoutError`` if it does not.
        """
        shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
        with self._cond:
            if shape == self.shape:
                return
            if self._claimed is not None:
                raise RuntimeError("resize() with a claimed slot: commit or abort it first")
            ok = self._cond.wait_for(
                lambda: self._closed or (not self._queue and self._held is None), timeout_s
            )
            if self._closed:
                raise RingClosed("ring closed while resizing")
            if not ok:
                raise TimeoutError(f"the consumer did not drain the ring within {timeout_s} s; cannot resize")
            self._allocate(shape)
            self._cond.notify_all()

    def discard(self) -> list[int]:
        """Take every committed frame back unprocessed; returns their frame numbers (oldest first).

        For a consumer that cannot go on (a stop that gave up waiting for it): the caller
        accounts for these frames.
        """
        with self._cond:
            frames = [self._slots[i].frame for i in self._queue]
            self._free.extend(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            return frames

    def close(self) -> None:
        """Wake every waiting thread; ``claim`` returns None, ``get`` drains then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def counters(self) -> dict[str, int]:
        """``{"pushed", "popped", "dropped", "queued"}``."""
        with self._cond:
            return {
                "pushed": self.pushed,
                "popped": self.popped,
                "dropped": self.dropped,
                "queued": len(self._queue),
            }
