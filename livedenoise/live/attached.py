"""Attached mode: follow a core that another program drives, without starting or popping anything.

See :mod:`livedenoise.live.sources` for the source contract. MDA frames come through
``mda.events.frameReady``; live and sequence acquisitions of the other program are followed by
peeking at the core's buffer by image number, and frames it pops first are counted as
``not-seen``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from livedenoise.live._unicore import newest_slot_metadata
from livedenoise.live.sources import CoreGeometry, FrameInfo, Sink, int_value, metadata_value
from livedenoise.live.types import DropReason, Roi

__all__ = ["AttachedSource"]

log = logging.getLogger("livedenoise")


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
    """

    def __init__(
        self,
        core: Any,
        *,
        poll_interval_ms: float = 1.0,
        include_snaps: bool = False,
        max_backfill: int = 64,
        truth: Callable[[int], np.ndarray | None] | None = None,
    ) -> None:
        self.core = core
        self.camera: str | None = core.getCameraDevice() or None
        self._poll_s = poll_interval_ms / 1e3
        self._include_snaps = include_snaps
        self._max_backfill = int(max_backfill)
        self._truth = truth
        self._geometry = CoreGeometry(core)
        self._roi: Roi = self._geometry.roi()
        self._paused = threading.Event()
        self._lock = threading.Lock()  # one producer at a time: MDA thread, snap thread or poller
        self._sink: Sink | None = None
        self._next_index = 0
        self._seq_base: int | None = None  # index of ImageNumber 0 of the sequence followed
        self._seq_last = -1  # last ImageNumber seen of that sequence
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

    def close(self) -> None:
        pass

    # -- delivery -----------------------------------------------------------------------

    def _deliver(
        self, img: np.ndarray, index: int, exposure_ms: float, truth_id: int | None, reason: DropReason
    ) -> None:
        sink = self._sink
        if sink is None or self._paused.is_set():
            return
        if img.ndim != 2 or img.dtype != np.uint16:
            log.warning(
                "attached source: skipping a %s %s image (livedenoise takes uint16 2D)", img.dtype, img.shape
            )
            return
        geo = self._roi
        if geo.shape != img.shape:
            geo = self._roi = self.geometry()
        info = FrameInfo(index, exposure_ms, time.time(), self.camera, geo, truth_id, reason)
        self.seen += 1
        sink(img, info)

    def _on_frame_ready(self, img: np.ndarray, event: Any, meta: Any = None) -> None:
        exposure = getattr(event, "exposure", None)
        if exposure is None and isinstance(meta, Mapping):
            exposure = meta.get("exposure_ms")
        if exposure is None:
            exposure = self.core.getExposure()
        with self._lock:
            index = self._next_index
            self._next_index += 1
            self._deliver(img, index, float(exposure), None, DropReason.NOT_SEEN)

    def _on_snap(self, *args: Any) -> None:
        if not self._include_snaps or self._active or self.core.mda.is_running():
            return
        img = self.core.getImage()
        with self._lock:
            index = self._next_index
            self._next_index += 1
            self._deliver(img, index, float(self.core.getExposure()), None, DropReason.NOT_SEEN)

    def _newest_number(self) -> int:
        """ImageNumber of the newest frame in the core's buffer (-1: none), without copying.

        UniMMCore: read from its SequenceBuffer's last slot (pymmcore-plus 0.18 internals).
        Other cores: ``getLastImageAndMD`` (copies one frame per poll).
        """
        md = newest_slot_metadata(self.core)
        if md is not None:
            return int_value(metadata_value(md, "ImageNumber"), -1)
        try:
            _, md = self.core.getLastImageAndMD()
        except (IndexError, RuntimeError):
            return -1
        return int_value(metadata_value(md, "ImageNumber"), -1)

    def _peek(self) -> None:
        core = self.core
        newest = self._newest_number()
        if newest < 0:
            return
        with self._lock:
            if self._seq_base is None or newest < self._seq_last:
                # a new sequence: its ImageNumber 0 gets the next frame number, so the
                # frames that left the buffer before the first peek count as not seen
                self._seq_base = self._next_index
                self._seq_last = -1
            if newest <= self._seq_last:
                return
            first = max(self._seq_last + 1, newest - self._max_backfill)
            for target in range(first, newest + 1):  # oldest first, while still in the buffer
                try:
                    img, md = core.getNBeforeLastImageAndMD(newest - target)
                except (IndexError, RuntimeError):
                    continue
                number = int_value(metadata_value(md, "ImageNumber"), -1)
                if number != target:
                    # the buffer moved on (new frames arrived or the program popped): re-aim once
                    try:
                        img, md = core.getNBeforeLastImageAndMD(newest - target + (number - target))
                    except (IndexError, RuntimeError):
                        continue
                    if int_value(metadata_value(md, "ImageNumber"), -1) != target:
                        continue  # gone: counted as not seen
                self._emit_peeked(img, md, target)

    def _emit_peeked(self, img: np.ndarray, md: Mapping[str, Any], number: int) -> None:
        assert self._seq_base is not None
        index = self._seq_base + number
        missed = index - self._next_index
        if missed > 0:
            self.not_seen += missed
        self._next_index = index + 1
        self._seq_last = number
        exposure = (
            metadata_value(md, "Exposure-ms") or metadata_value(md, "Exposure") or self.core.getExposure()
        )
        tid = metadata_value(md, "SimFrame")
        self._deliver(
            img, index, float(exposure), None if tid is None else int_value(tid, -1), DropReason.NOT_SEEN
        )

    def _on_sequence_started(self, *args: Any) -> None:
        with self._lock:
            self._active = True
            self._seq_base = None  # a new sequence: numbering starts afresh

    def _on_sequence_stopped(self, *args: Any) -> None:
        self._active = False

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Follow the core until ``stop`` is set; signals are disconnected on exit.

        The poller never calls ``isSequenceRunning`` (on UniMMCore that call, made from a
        second thread, can race the core's own start of a sequence and make an MDA see a
        finished sequence); it follows ``sequenceAcquisitionStarted`` /
        ``continuousSequenceAcquisitionStarted`` / ``sequenceAcquisitionStopped`` instead.
        """
        core = self.core
        ev = core.events
        self._sink = sink
        self._roi = self.geometry()
        # frames already in the buffer when we attach are the other program's past: start after them
        self._active = core.getRemainingImageCount() > 0
        if self._active:
            self._seq_base = self._next_index - self._newest_number() - 1
            self._seq_last = self._newest_number()
        connections = [
            (core.mda.events.frameReady, self._on_frame_ready),
            (ev.imageSnapped, self._on_snap),
            (ev.sequenceAcquisitionStarted, self._on_sequence_started),
            (ev.continuousSequenceAcquisitionStarted, self._on_sequence_started),
            (ev.sequenceAcquisitionStopped, self._on_sequence_stopped),
        ]
        for signal, slot in connections:
            signal.connect(slot)
        self.attached.set()
        try:
            while not stop.is_set():
                if self._active and not self._paused.is_set() and not core.mda.is_running():
                    self._peek()
                stop.wait(self._poll_s)
        finally:
            for signal, slot in connections:
                signal.disconnect(slot)
            self._sink = None
            self.attached.clear()
