"""The acquisition side of the pipeline: each frame from the source into a ring slot, or counted.

:class:`Intake` is the :class:`~livedenoise.live.sources.Sink` a pipeline hands its source. Per
frame it counts the frames the source missed (core overflow, not seen), follows geometry changes
(the calibration re-cropped, the ring resized), copies the frame into a claimed slot (or takes
it popped there in place), converts it to photoelectrons unless the source delivers on another
program's threads (then the worker converts), and commits it. A frame it cannot take is counted
as dropped with its reason; none leaves without being counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from livedenoise.calibration.maps import Calibration, CalibrationError, PhotonConverter
from livedenoise.live.config import PipelineConfig
from livedenoise.live.events import PipelineEvents
from livedenoise.live.ringbuffer import RingBuffer, RingClosed, Slot
from livedenoise.live.sources import FrameInfo, SourceError
from livedenoise.live.stats import PipelineStats
from livedenoise.live.types import DropReason, RingPolicy, Roi

__all__ = ["Intake"]

log = logging.getLogger("livedenoise")


class Intake:
    """Frames from a source into the ring (the pipeline's acquisition thread, or the source's own).

    Parameters
    ----------
    calibration : Calibration
        Full-sensor maps, cropped to each geometry (a nominal one is rebuilt for any shape).
    config : PipelineConfig
    stats, events
        The pipeline's counters and signals.
    fail : callable
        ``fail(where, message)``: stop the pipeline with a failure.
    past_deadline : callable
        True once a stop's time to finish is up (a ``block`` claim then gives up).
    convert_on_worker : bool
        Leave the conversion to the worker (frames delivered on another program's threads).
    """

    def __init__(
        self,
        calibration: Calibration,
        config: PipelineConfig,
        stats: PipelineStats,
        events: PipelineEvents,
        *,
        fail: Callable[[str, str], None],
        past_deadline: Callable[[], bool],
        convert_on_worker: bool = False,
    ) -> None:
        self.calibration = calibration
        self.config = config
        self.stats = stats
        self.events = events
        self._fail = fail
        self._past_deadline = past_deadline
        self.convert_on_worker = convert_on_worker
        self.ring: RingBuffer | None = None
        self.roi: Roi | None = None
        self.cal_roi: Calibration | None = None
        self._converter: PhotonConverter | None = None
        self._expected_index = 0  # frame numbers run on across restarts
        self._reserved: Slot | None = None
        self._t_reserve = 0.0

    def drop(self, frame: int, reason: DropReason) -> None:
        """Count one frame as dropped for ``reason`` (and emit ``frameDropped``)."""
        total = self.stats.add_drop(reason)
        self.events.frameDropped.emit(frame, reason, total)

    # -- geometry ---------------------------------------------------------------------------

    def calibration_for(self, roi: Roi, shape: tuple[int, int]) -> Calibration:
        """The calibration cropped to ``roi``; CalibrationError (saying what to do) if it cannot be."""
        cal = self.calibration
        if cal.meta.get("source") == "nominal":
            if cal.shape == shape:
                return cal
            return Calibration(
                np.full(shape, cal.offset_adu.flat[0] * roi.binning**2, np.float32),
                np.full(shape, cal.gain_adu_per_e.flat[0], np.float32),
                np.full(shape, cal.read_var_e2.flat[0], np.float32),
                meta=dict(cal.meta),
            )
        if roi.shape != shape:
            raise CalibrationError(
                f"the camera reports ROI {roi.width}×{roi.height} but delivers {shape[1]}×{shape[0]} frames"
            )
        return cal.for_roi(roi.x, roi.y, roi.width, roi.height, roi.binning)

    def new_ring(self, roi: Roi) -> RingBuffer:
        """Crop the calibration for ``roi`` and allocate a fresh ring (at each start)."""
        self._use_calibration(roi, roi.shape)
        self.ring = RingBuffer(self.config.ring_slots, roi.shape, self.config.ring_policy, on_drop=self.drop)
        return self.ring

    def _use_calibration(self, roi: Roi, shape: tuple[int, int]) -> None:
        cal = self.calibration_for(roi, shape)
        self._converter = PhotonConverter(cal)
        self.cal_roi = cal
        if self.roi is not None and self.roi != roi:
            log.info("camera geometry changed %s -> %s; calibration re-cropped", self.roi, roi)
        self.roi = roi

    def _reconfigure(self, roi: Roi, shape: tuple[int, int], moved_only: bool) -> None:
        """A new geometry mid-stream: re-crop the maps (and resize the ring for a new shape)."""
        try:
            self._use_calibration(roi, shape)
        except CalibrationError as exc:
            raise SourceError(str(exc)) from exc
        if not moved_only:
            assert self.ring is not None
            self.ring.resize(shape)

    # -- the Sink protocol --------------------------------------------------------------------

    def _claim(self) -> Slot | None:
        ring = self.ring
        assert ring is not None
        if self.config.ring_policy is RingPolicy.BLOCK:
            slot = None
            while slot is None and not ring.closed and not self._past_deadline():
                slot = ring.claim(timeout_s=0.2)
            return slot
        return ring.claim()

    def reserve(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
        """A claimed slot's raw array for the next frame (None: the source uses its own)."""
        ring = self.ring
        if ring is None or tuple(shape) != ring.shape or np.dtype(dtype) != np.uint16 or self._reserved:
            return None
        slot = self._claim()
        if slot is None:
            return None
        self._reserved = slot
        self._t_reserve = time.perf_counter()
        return slot.raw

    def unreserve(self) -> None:
        slot, self._reserved = self._reserved, None
        if slot is not None and self.ring is not None:
            self.ring.abort(slot)

    def __call__(self, raw: np.ndarray, info: FrameInfo) -> None:
        """Take one frame: it ends committed to the ring or counted as dropped."""
        t0 = time.perf_counter()
        ring = self.ring
        assert ring is not None
        acquired = self.stats.rates["acquired"]
        slot = self._reserved
        if slot is not None:
            self._reserved = None
            if raw is slot.raw:
                t0 = self._t_reserve
            else:  # not the reserved array after all: give it back, take the normal path
                ring.abort(slot)
                slot = None
        if info.index > self._expected_index:  # frames the core or the other program lost
            acquired.tick(info.index - self._expected_index)
            for frame in range(self._expected_index, info.index):
                self.drop(frame, info.missed_reason)
        self._expected_index = max(self._expected_index, info.index + 1)
        acquired.tick()
        reason = None
        if ring.closed:  # stopping or failed: the frames the camera still gives are counted
            reason = DropReason.STOPPED
        elif raw.dtype != np.uint16 or raw.ndim != 2:
            reason = DropReason.BAD_FRAME
            self.events.error.emit(
                "source", f"frame {info.index} is {raw.dtype} {raw.shape}, expected uint16 2D"
            )
        elif raw.shape != ring.shape or info.roi != self.roi:
            try:  # same shape in a reserved slot: the ROI only moved, the data stays
                self._reconfigure(info.roi, raw.shape, moved_only=slot is not None)
            except RingClosed:
                reason = DropReason.STOPPED
            except (SourceError, TimeoutError) as exc:
                reason = DropReason.BAD_FRAME
                self._fail("acquisition", str(exc))
        if reason is not None:
            if slot is not None:
                ring.abort(slot)
            self.drop(info.index, reason)
            return
        if slot is None:
            slot = self._claim()
            if slot is None:  # closed or past the stop's deadline while waiting (block policy)
                self.drop(info.index, DropReason.STOPPED)
                return
            np.copyto(slot.raw, raw)
        t1 = time.perf_counter()
        slot.converter = self._converter
        slot.calibration = self.cal_roi.id if self.cal_roi is not None else None
        slot.converted = not self.convert_on_worker
        if slot.converted:
            self._converter(slot.raw, slot.e)  # type: ignore[misc]
        t2 = time.perf_counter()
        slot.frame = info.index
        slot.exposure_ms = info.exposure_ms
        slot.t_acquired = info.t_acquired
        slot.camera = info.camera
        slot.truth_id = info.truth_id
        slot.identity = dict(info.identity) if info.identity else None
        slot.t_pop = t0
        slot.acquire_s = t1 - t0
        slot.convert_s = t2 - t1
        ring.commit(slot)
        self.stats.latency["acquire"].add(t1 - t0)
        if slot.converted:
            self.stats.latency["convert"].add(t2 - t1)
        self.events.frameAcquired.emit(info.index, info.t_acquired)
