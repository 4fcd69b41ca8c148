"""Attached mode: follow a core that another program drives, without starting or popping anything.

See :mod:`livedenoise.live.sources` for the source contract. Three ways a frame of the other
program reaches the pipeline, each with exactly one copy (into a ring slot; the conversion to
photoelectrons runs later on the pipeline's worker thread, so the other program's threads pay
only for that copy):

- MDA frames through ``mda.events.frameReady`` (on the MDA's thread), with the event's
  ``index``, channel and stage position as the frame's identity;
- frames the other program pops from the core's buffer (``popNextImage``, ``popNextImageMD``,
  ``popNextImageAndMD``): while attached, those methods of the core instance are wrapped so that
  the popped frame is also copied into the ring on the popping thread; the caller gets exactly
  what it would have got;
- frames left in the buffer (a viewer that only looks at the newest image): peeked by image
  number on the pipeline's acquisition thread.

Frames are placed by the core's ``ImageNumber``; a number that is skipped (the core's buffer
overwrote it before anybody looked, or it was popped through a reference to the method taken
before livedenoise attached) is counted as ``not-seen``. So, for the frames the core produced
while attached, ``seen + not_seen`` is their number.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from livedenoise.live._unicore import newest_slot_metadata, oldest_slot_metadata, sequence_running
from livedenoise.live.sources import CoreGeometry, FrameInfo, Sink, int_value, metadata_value
from livedenoise.live.types import DropReason, Roi

__all__ = ["IDLE_CHECK_S", "AttachedSource", "event_identity"]

log = logging.getLogger("livedenoise")

# with nothing to peek, how often the poller looks again (a sequence start wakes it at once)
IDLE_CHECK_S = 0.02


def event_identity(event: Any, meta: Any = None) -> dict[str, Any] | None:
    """``index``, ``channel`` and ``position_um`` of a useq ``MDAEvent`` (the keys known), else None.

    ``position_um`` is ``{"x": .., "y": .., "z": ..}`` (the keys known), from the frame metadata's
    measured ``position`` when the MDA recorded one, else from the event's requested position.
    """
    if event is None:
        return None
    out: dict[str, Any] = {}
    index = getattr(event, "index", None)
    if index:
        with contextlib.suppress(TypeError, ValueError):
            out["index"] = {str(k): int(v) for k, v in dict(index).items()}
    channel = getattr(event, "channel", None)
    if channel is not None:
        out["channel"] = str(getattr(channel, "config", None) or channel)
    position: dict[str, float] = {}
    measured = meta.get("position") if isinstance(meta, Mapping) else None
    for axis in ("x", "y", "z"):
        value = measured.get(axis) if isinstance(measured, Mapping) else None
        if value is None:
            value = getattr(event, f"{axis}_pos", None)
        if value is not None:
            with contextlib.suppress(TypeError, ValueError):
                position[axis] = float(value)
    if position:
        out["position_um"] = position
    return out or None


class AttachedSource:
    """Follow a ``CMMCorePlus`` that another program drives, without taking its frames.

    Parameters
    ----------
    core : CMMCorePlus
        The core the other program uses.
    poll_interval_ms : float
        How often live/sequence acquisitions are peeked.
    include_snaps : bool
        Also take single snapped images (``imageSnapped``).
    max_backfill : int
        At most this many older frames are fetched per poll with
        ``getNBeforeLastImageAndMD`` when the poll fell behind.
    tap_pops : bool
        Copy the frames the other program pops, as it pops them (see the module docstring).
    """

    #: the pipeline converts this source's frames on its own worker thread (see module docstring)
    delivers_on_foreign_threads = True

    def __init__(
        self,
        core: Any,
        *,
        poll_interval_ms: float = 1.0,
        include_snaps: bool = False,
        max_backfill: int = 64,
        truth: Callable[[int], np.ndarray | None] | None = None,
        tap_pops: bool = True,
    ) -> None:
        self.core = core
        self.camera: str | None = core.getCameraDevice() or None
        self._poll_s = poll_interval_ms / 1e3
        self._include_snaps = include_snaps
        self._max_backfill = int(max_backfill)
        self._truth = truth
        self._tap_pops = tap_pops
        self._geometry = CoreGeometry(core)
        self._roi: Roi = self._geometry.roi()
        self._paused = threading.Event()
        self._wake = threading.Event()  # a sequence started or resume(): look at once
        self._lock = threading.RLock()  # one producer at a time: MDA thread, popping thread or poller
        self._sink: Sink | None = None
        self._roi = Roi(0, 0, 0, 0)
        self._next_index = 0
        self._seq_base: int | None = None  # index of ImageNumber 0 of the sequence followed
        self._seq_last = -1  # highest ImageNumber of that sequence delivered or counted
        self._from_start = False  # the followed sequence started while attached (all its frames count)
        self._taps: dict[str, Callable[..., Any]] = {}
        self._stopped_pending = False
        self._in_tap = threading.local()
        self.seen = 0
        self.not_seen = 0
        self.attached = threading.Event()  # set while run() has its handlers connected
        self._active = False  # a live/sequence acquisition of the other program is on

    def geometry(self) -> Roi:
        return self._geometry.roi()

    def truth(self, truth_id: int) -> np.ndarray | None:
        return None if self._truth is None else self._truth(truth_id)

    def describe(self) -> dict[str, Any]:
        return {"kind": "attached", "camera": self.camera, "seen": self.seen, "not_seen": self.not_seen}

    def pause(self, timeout_s: float = 5.0) -> None:
        """Stop taking frames (the other program's acquisition goes on)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self._wake.set()

    def close(self) -> None:
        pass

    # -- delivery -----------------------------------------------------------------------

    def _deliver(
        self,
        img: np.ndarray,
        index: int,
        exposure_ms: float,
        truth_id: int | None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        """Hand one frame to the sink (called with the lock held)."""
        sink = self._sink
        if sink is None:
            return
        if img.ndim != 2 or img.dtype != np.uint16:
            log.warning(
                "attached source: skipping a %s %s image (livedenoise takes uint16 2D)", img.dtype, img.shape
            )
            return
        geo = self._roi
        if geo.shape != img.shape:
            geo = self._roi = self.geometry()
        info = FrameInfo(
            index, exposure_ms, time.time(), self.camera, geo, truth_id, DropReason.NOT_SEEN, identity
        )
        self.seen += 1
        sink(img, info)

    def _exposure(self, md: Any) -> float:
        value = metadata_value(md, "Exposure-ms") or metadata_value(md, "Exposure")
        try:
            return float(value) if value is not None else float(self.core.getExposure())
        except (TypeError, ValueError):
            return float(self.core.getExposure())

    def _on_frame_ready(self, img: np.ndarray, event: Any, meta: Any = None) -> None:
        if self._sink is None or self._paused.is_set():
            return
        exposure = getattr(event, "exposure", None)
        if exposure is None and isinstance(meta, Mapping):
            exposure = meta.get("exposure_ms")
        if exposure is None:
            exposure = self.core.getExposure()
        identity = event_identity(event, meta)
        with self._lock:
            index = self._next_index
            self._next_index += 1
            self._deliver(img, index, float(exposure), None, identity)

    def _on_snap(self, *args: Any) -> None:
        if not self._include_snaps or self._active or self.core.mda.is_running():
            return
        if self._sink is None or self._paused.is_set():
            return
        img = self.core.getImage()
        with self._lock:
            index = self._next_index
            self._next_index += 1
            self._deliver(img, index, float(self.core.getExposure()), None)

    # -- numbered frames (live / sequence acquisitions of the other program) -------------

    def _place(self, number: int) -> int | None:
        """Frame index of ImageNumber ``number`` of the followed sequence; None if already handled.

        Numbers skipped since the last one placed are counted as not seen. Call with the lock held.
        """
        if self._seq_base is None:
            if self._from_start:  # the sequence began while attached: ImageNumber 0 is ours
                self._seq_base, self._seq_last = self._next_index, -1
            else:  # attached mid-sequence: earlier numbers are the other program's past
                self._seq_base, self._seq_last = self._next_index - number, number - 1
        if number <= self._seq_last:
            return None
        index = self._seq_base + number
        missed = index - self._next_index
        if missed > 0:
            self.not_seen += missed
        self._next_index = index + 1
        self._seq_last = number
        return index

    def _offer(self, img: np.ndarray, md: Any) -> None:
        """A numbered frame (peeked or popped by the other program): deliver it unless already handled."""
        number = int_value(metadata_value(md, "ImageNumber"), -1)
        if number < 0:
            return
        with self._lock:
            if self._sink is None:
                return
            index = self._place(number)
            if index is None:
                return
            tid = metadata_value(md, "SimFrame")
            self._deliver(img, index, self._exposure(md), None if tid is None else int_value(tid, -1))

    def _newest_number(self) -> int:
        """ImageNumber of the newest frame in the core's buffer (-1: none), without copying.

        UniMMCore: read from its SequenceBuffer's last slot (pymmcore-plus 0.18 internals).
        Other cores: ``getLastImageAndMD`` (copies one frame per poll).
        """
        md = newest_slot_metadata(self.core)
        if md is not None:
            return int_value(metadata_value(md, "ImageNumber"), -1)
        if self.core.getRemainingImageCount() <= 0:
            return -1
        try:
            _, md = self.core.getLastImageAndMD()
        except (IndexError, RuntimeError):
            return -1
        return int_value(metadata_value(md, "ImageNumber"), -1)

    def _peek(self) -> None:
        """Deliver the frames in the core's buffer that were not handled yet (oldest first)."""
        core = self.core
        newest = self._newest_number()
        if newest < 0:
            return
        with self._lock:
            if self._seq_base is not None and newest < self._seq_last:
                # the numbering restarted (a sequence we did not hear start), or the look is stale:
                # the other program popped newer frames through the tap since it. Look again now
                # that no pop can place one (a stale look taken for a restart once counted every
                # frame of the sequence so far as not seen, on a busy machine)
                newest = self._newest_number()
                if newest < 0:
                    return
                if newest < self._seq_last:
                    self._seq_base, self._from_start = None, True
            if self._seq_base is None:
                first = 0 if self._from_start else newest
            else:
                first = self._seq_last + 1
        first = max(first, newest - self._max_backfill)
        for target in range(first, newest + 1):  # oldest first, while still in the buffer
            if self._sink is None or self._paused.is_set():
                return
            with self._lock:
                if self._seq_base is not None and target <= self._seq_last:
                    continue  # popped through the tap meanwhile
            back = newest - target
            for _ in range(4):  # the buffer moves on as frames arrive: re-aim by the number found
                try:
                    img, md = core.getNBeforeLastImageAndMD(back)
                except (IndexError, RuntimeError):
                    md = None
                    break
                number = int_value(metadata_value(md, "ImageNumber"), -1)
                if number == target or number < 0 or number < target:
                    break  # found, or the frame is gone (popped, or overwritten)
                back += number - target
            if md is None or int_value(metadata_value(md, "ImageNumber"), -1) != target:
                continue  # gone: popped through the tap (placed), or counted as not seen later
            self._offer(img, md)

    # -- the pop tap -------------------------------------------------------------------------

    def _taking(self) -> bool:
        """Whether a frame the other program pops now is ours to take (and not re-entered)."""
        return (
            self._sink is not None
            and not self._paused.is_set()
            and not getattr(self._in_tap, "busy", False)
            and not self.core.mda.is_running()  # MDA frames come through frameReady
        )

    def _install_tap(self) -> None:
        core = self.core
        pop_md: Callable[..., Any] | None = getattr(core, "popNextImageMD", None)
        pop: Callable[..., Any] | None = getattr(core, "popNextImage", None)

        def pop_next_image_md(*args: Any) -> Any:
            assert pop_md is not None
            if not self._taking():
                return pop_md(*args)
            with self._lock:  # pop and placement together: a peek in between would see a gap
                self._in_tap.busy = True
                try:
                    img = pop_md(*args)
                finally:
                    self._in_tap.busy = False
                if args:
                    self._offer(np.asarray(img), args[-1])
            return img

        def pop_next_image(*args: Any, **kwargs: Any) -> Any:
            assert pop is not None
            if not self._taking():
                return pop(*args, **kwargs)
            with self._lock:  # pop and placement together: a peek in between would see a gap
                md = oldest_slot_metadata(core)
                if md is None and core.getRemainingImageCount() > 0:
                    try:  # not a UniMMCore: read the next frame's number before it leaves
                        _, md = core.getNBeforeLastImageAndMD(core.getRemainingImageCount() - 1)
                    except (IndexError, RuntimeError):
                        md = None
                self._in_tap.busy = True
                try:
                    img = pop(*args, **kwargs)
                finally:
                    self._in_tap.busy = False
                if md:
                    self._offer(np.asarray(img), md)
            return img

        for name, original, wrapper in (
            ("popNextImageMD", pop_md, pop_next_image_md),
            ("popNextImage", pop, pop_next_image),
        ):
            if original is None:
                continue
            try:
                setattr(core, name, wrapper)  # an instance attribute shadows the class's method
            except (AttributeError, TypeError):
                log.info("attached source: cannot follow %s of this core; its pops count as not seen", name)
                continue
            self._taps[name] = wrapper

    def _remove_tap(self) -> None:
        inst = getattr(self.core, "__dict__", {})
        for name, wrapper in self._taps.items():
            if inst.get(name) is wrapper:
                delattr(self.core, name)
        self._taps.clear()

    # -- sequence signals ----------------------------------------------------------------------

    def _on_sequence_started(self, *args: Any) -> None:
        with self._lock:
            self._active = True
            self._stopped_pending = False
            self._seq_base, self._from_start = None, True  # a new sequence: numbering starts afresh
        self._wake.set()

    def _on_sequence_stopped(self, *args: Any) -> None:
        self._stopped_pending = True

    def _attach_baseline(self) -> None:
        """Start after the frames the other program already had (call with the lock held)."""
        newest = self._newest_number()
        self._active = newest >= 0 or sequence_running(self.core)
        self._from_start = False
        self._seq_base = None
        if newest >= 0:
            self._seq_base = self._next_index - newest - 1
            self._seq_last = newest

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Follow the core until ``stop`` is set; signals and the pop tap are removed on exit.

        The poller never calls ``isSequenceRunning`` while following (on UniMMCore that call,
        made from a second thread, can race the core's own start of a sequence and make an MDA
        see a finished sequence); it follows ``sequenceAcquisitionStarted`` /
        ``continuousSequenceAcquisitionStarted`` / ``sequenceAcquisitionStopped`` instead. On
        stop, the frames still in the core's buffer are peeked once more.
        """
        core = self.core
        ev = core.events
        self._roi = self.geometry()
        self._stopped_pending = False
        connections = [
            (core.mda.events.frameReady, self._on_frame_ready),
            (ev.imageSnapped, self._on_snap),
            (ev.sequenceAcquisitionStarted, self._on_sequence_started),
            (ev.continuousSequenceAcquisitionStarted, self._on_sequence_started),
            (ev.sequenceAcquisitionStopped, self._on_sequence_stopped),
        ]
        with self._lock:
            self._sink = sink
            if self._tap_pops:
                self._install_tap()
            self._attach_baseline()
        for signal, slot in connections:
            signal.connect(slot)
        self.attached.set()
        try:
            while not stop.is_set():
                if self._active and not self._paused.is_set() and not core.mda.is_running():
                    self._peek()
                    if self._stopped_pending:  # the sequence stopped: what is left was just peeked
                        self._stopped_pending = False
                        self._active = False
                    stop.wait(self._poll_s)
                    continue
                # nothing to peek (no sequence, paused, or an MDA, whose frames come by signal):
                # no fast polling inside the other program's process; a sequence start wakes it
                self._wake.wait(max(IDLE_CHECK_S, self._poll_s))
                self._wake.clear()
            if self._active and not self._paused.is_set() and not core.mda.is_running():
                self._peek()  # the frames still in the buffer at stop
        finally:
            for signal, slot in connections:
                signal.disconnect(slot)
            with self._lock:
                self._remove_tap()
                self._sink = None
            self.attached.clear()
