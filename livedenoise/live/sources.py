"""Frame sources: how frames get from a Micro-Manager core into the pipeline.

A source runs on the pipeline's acquisition thread (:meth:`FrameSource.run`) and hands
each frame to a *sink* ``sink(raw, info)``; the sink copies ``raw`` into a ring slot at
once, so ``raw`` may be a buffer the source reuses.

Two ways in:

:class:`CoreSource` (the daemon owns the core)
    Loads a ``.cfg`` (or takes a ready core), runs ``startContinuousSequenceAcquisition``
    and pops **every** frame, in order. Frames the core's own circular buffer overwrote
    (image numbers that skip) are reported as drops with reason ``"camera"``. ROI,
    binning and exposure are read from each frame's metadata, so a change mid-stream is
    seen on the first frame that has it. On stop, the camera is stopped and the frames
    already in the core's buffer are still delivered. A camera that stops by itself (an error in the
    device) ends :meth:`run` with :class:`SourceError` after the frames already in the
    core's buffer were delivered.

:class:`~livedenoise.live.attached.AttachedSource` (another Python program drives a ``CMMCorePlus``)
    Never starts, stops or pops anything, so the other program keeps every frame.

    - MDA: ``core.mda.events.frameReady(img, event, meta)`` is connected; the handler
      copies the frame into the ring, with the event's index, channel and position as the
      frame's identity, and returns (it runs on the MDA's acquisition thread:
      with ``ring_policy = "block"`` a slow engine would slow the MDA, so use the default
      ``drop-oldest`` when attached). Every MDA frame is seen.
    - Live / sequence acquisitions started by the other program: there is no per-frame
      signal, and popping would steal the other program's frames, so the source takes each
      frame as the other program pops it (the core's pop methods are wrapped while attached)
      and *peeks* (``getNBeforeLastImageAndMD``) at those left in the buffer, following the
      core's ``ImageNumber``; a sequence already running at the attach is followed from its
      next frame. A number it never got (overwritten in the core's buffer first) is counted
      with reason ``"not-seen"``.
    - Snaps (``imageSnapped``) outside MDA and sequences are taken with ``include_snaps``.
    - Frames handed over on the other program's threads are only copied into the ring there
      (``delivers_on_foreign_threads``); the pipeline's worker converts them.

A replay source for benchmarks is a :class:`CoreSource` over a core whose camera is the
simulator's ``ReplayCamera``: acquisition still goes through the core.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from livedenoise.live._unicore import buffer_pool, has_python_camera, sequence_buffer, slot_spec
from livedenoise.live.types import DropReason, Roi
from livedenoise.util.memory import prefault

__all__ = [
    "MAX_IDLE_WAIT_MS",
    "CoreSource",
    "FrameInfo",
    "FrameSource",
    "Roi",
    "SourceError",
    "check_pixel_type",
    "idle_wait_s",
]

log = logging.getLogger("livedenoise")


class SourceError(RuntimeError):
    """The camera or core cannot deliver frames (bad pixel type, camera fault...)."""


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What the source knows of one frame.

    ``index`` is the frame number since acquisition start (it runs on across pauses);
    a jump of ``index`` means frames were lost before the pipeline saw them, for the
    reason ``missed_reason``. ``identity`` places the frame in an MDA (``index``, ``channel``,
    ``position_um``: see :func:`livedenoise.live.attached.event_identity`), None outside one.
    """

    index: int
    exposure_ms: float
    t_acquired: float
    camera: str | None
    roi: Roi
    truth_id: int | None
    missed_reason: DropReason = DropReason.CAMERA
    identity: Mapping[str, Any] | None = None


class Sink(Protocol):
    """What a source hands its frames to (the pipeline's acquisition side).

    ``sink(raw, info)`` takes one frame (copied before it returns). ``reserve(shape, dtype)``
    returns the array the next frame may be written into directly (a claimed ring slot), or
    None; ``unreserve()`` gives an unused reservation back. A source that cannot write in
    place simply never calls them.
    """

    def __call__(self, raw: np.ndarray, info: FrameInfo) -> None: ...

    def reserve(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None: ...

    def unreserve(self) -> None: ...


@runtime_checkable
class FrameSource(Protocol):
    """What the pipeline needs from a source of frames."""

    camera: str | None

    def geometry(self) -> Roi:
        """Current ``(x, y, width, height, binning)`` of the camera."""
        ...

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Deliver frames to ``sink`` until ``stop`` is set (blocks the calling thread)."""
        ...

    def pause(self, timeout_s: float = 5.0) -> None: ...

    def resume(self) -> None: ...

    def truth(self, truth_id: int) -> np.ndarray | None: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def int_value(value: Any, default: int) -> int:
    if value is None:
        return default
    try:
        return int(str(value).split("x")[0])
    except ValueError:
        return default


def metadata_value(md: Mapping[str, Any], key: str) -> Any:
    try:
        return md[key]
    except (KeyError, TypeError):
        return None


def check_pixel_type(core: Any) -> None:
    """Raise :class:`SourceError` unless the camera gives 16-bit monochrome frames."""
    cam = core.getCameraDevice()
    nbytes = core.getBytesPerPixel()
    ncomp = core.getNumberOfComponents()
    if nbytes == 2 and ncomp == 1:
        return
    what = f"{8 * nbytes}-bit" + (f" with {ncomp} components" if ncomp != 1 else "")
    raise SourceError(
        f"camera {cam!r} gives {what} pixels ({nbytes} byte(s) per pixel); livedenoise expects "
        "16-bit monochrome frames (uint16 ADU) to apply the sCMOS calibration: set the "
        f"camera's pixel type / bit depth to 16-bit (e.g. core.setProperty({cam!r}, 'PixelType', "
        "'16bit') or the adapter's BitDepth property) and start again"
    )


class CoreGeometry:
    """ROI, binning and exposure of the core's camera, read on demand."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def roi(self) -> Roi:
        core = self.core
        cam = core.getCameraDevice()
        x, y, w, h = (int(v) for v in core.getROI())
        try:
            b = int_value(core.getProperty(cam, "Binning"), 1)
        except Exception:
            b = 1
        return Roi(x, y, w, h, b)


# frames at least this large get the core's sequence buffer faulted in before the start
_RESIDENT_MIN_FRAME_BYTES = 2 * 1024 * 1024
# the longest sleep between two looks at an empty buffer, however far away the next frame is due
MAX_IDLE_WAIT_MS = 5.0
_GAP_WEIGHT = 0.25  # weight of the newest inter-frame gap in the running estimate


def idle_wait_s(now: float, last: float | None, gap: float | None, poll_s: float, max_s: float) -> float:
    """How long to sleep before looking at an empty camera buffer again.

    ``last`` is when the previous frame arrived and ``gap`` the usual time between frames (both
    None before two frames came). Far from the next frame's due time the wait is a quarter of
    the time left (at most ``max_s``); from a few ``poll_s`` before it, and while it is late, it
    is ``poll_s``. A camera at 20 frames/s is looked at ~20 times a frame instead of ~100 at a
    fixed 0.5 ms, and a frame that comes when it is due still waits at most ``poll_s``; one that
    comes early waits at most ``max_s``.
    """
    if last is None or gap is None:
        return poll_s
    left = last + gap - now
    return min(max(0.25 * left, poll_s), max(max_s, poll_s))


class CoreSource:
    """The daemon owns the core: continuous sequence acquisition, every frame popped in order.

    Parameters
    ----------
    core : CMMCorePlus or UniMMCore
        A ready core (:func:`livedenoise.acquisition.core.load_core` loads one from a ``.cfg``).
    truth : callable, optional
        ``truth(truth_id) -> array or None``: the simulator's noise-free image
        (``SimSCMOSCamera.truth``), published as topic ``truth`` by the demo.
    poll_interval_ms : float
        Sleep between polls of an empty core buffer when a frame is due (the finest; far from the
        next frame's due time the source sleeps longer, up to :data:`MAX_IDLE_WAIT_MS`, see
        :func:`idle_wait_s`).
    interval_ms : float
        Passed to ``startContinuousSequenceAcquisition``.
    """

    def __init__(
        self,
        core: Any,
        *,
        truth: Callable[[int], np.ndarray | None] | None = None,
        poll_interval_ms: float = 0.5,
        interval_ms: float = 0.0,
    ) -> None:
        self.core = core
        self.camera: str | None = core.getCameraDevice() or None
        self._truth = truth
        self._poll_s = poll_interval_ms / 1e3
        self._t_frame: float | None = None  # monotonic time of the last frame
        self._gap_s: float | None = None  # running estimate of the time between frames
        self._interval_ms = interval_ms
        self._geometry = CoreGeometry(core)
        self._last_roi: Roi = self._geometry.roi()
        self._pause_req = threading.Event()
        self._paused = threading.Event()
        self._started_by_us = False
        self._next_index = 0  # frame number the next image would get
        self._base = 0  # index of ImageNumber 0 of the current sequence
        self._staging: np.ndarray | None = None
        self._resident_pool: Callable[[], Any] = lambda: None  # weakref to the core's pool made resident
        self.received = 0

    # -- protocol -----------------------------------------------------------------

    def geometry(self) -> Roi:
        return self._geometry.roi()

    def truth(self, truth_id: int) -> np.ndarray | None:
        return None if self._truth is None else self._truth(truth_id)

    def describe(self) -> dict[str, Any]:
        return {"kind": "core", "camera": self.camera, "core": type(self.core).__name__}

    def pause(self, timeout_s: float = 5.0) -> None:
        """Stop the camera's sequence; frames already in the core's buffer are delivered first."""
        self._pause_req.set()
        if not self._paused.wait(timeout_s):
            raise TimeoutError(f"the acquisition did not pause within {timeout_s} s")

    def resume(self) -> None:
        """Restart the sequence (picks up ROI/binning/exposure set while paused)."""
        self._pause_req.clear()

    def close(self) -> None:
        self._stop_sequence()

    def prepare(self) -> None:
        """Before the start, off the acquisition thread: make the core's sequence buffer resident.

        The pipeline runs this while it prepares its engine, so the two waits overlap.
        """
        if not self.core.isSequenceRunning():
            self._make_sequence_buffer_resident()

    # -- acquisition ------------------------------------------------------------------

    def _start_sequence(self) -> None:
        core = self.core
        check_pixel_type(core)
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        self._make_sequence_buffer_resident()
        core.startContinuousSequenceAcquisition(self._interval_ms)
        self._started_by_us = True
        self._t_frame = self._gap_s = None  # another exposure or ROI: another frame rate
        self._base = self._next_index
        log.info("acquisition started on camera %s, ROI %s", self.camera, self.geometry())

    def _make_sequence_buffer_resident(self) -> None:
        """Fault in UniMMCore's sequence buffer before frames stream into it (once per buffer).

        Its pool (1 GiB by default) is mapped lazily, so for the whole first pass through it
        every frame the camera writes also pays for zeroing fresh pages: 16 ms per 2048²
        frame on a VM, which alone exceeds a 100 fps budget. Done only for large frames
        (>= 2 MiB); smaller ones spread that cost thinly. The C++ core allocates its own
        buffer and is left alone. Relies on pymmcore-plus 0.18's SequenceBuffer (``_pool``);
        anything else is skipped.
        """
        core = self.core
        pool = buffer_pool(core)
        if pool is None or pool is self._resident_pool():
            return
        try:
            frame_bytes = (
                int(core.getImageWidth()) * int(core.getImageHeight()) * int(core.getBytesPerPixel())
            )
        except Exception:
            return
        if frame_bytes < _RESIDENT_MIN_FRAME_BYTES:
            return
        self._resident_pool = weakref.ref(pool)  # an id() could be reused by the next buffer
        seq = sequence_buffer(core)
        if seq is not None:
            seq.clear()  # the sequence start clears it too: no frame is lost here
        log.info(
            "making the core's %d MiB sequence buffer resident before the camera starts ...",
            pool.nbytes >> 20,
        )
        dt = prefault(pool)
        log.info("sequence buffer of %d MiB made resident in %.2f s", pool.nbytes >> 20, dt)

    def _stop_sequence(self) -> None:
        if self._started_by_us:
            self._started_by_us = False
            try:
                self.core.stopSequenceAcquisition()
            except Exception as exc:  # a broken camera may also fail to stop
                log.warning("stopping the camera's sequence failed: %s", exc)

    def _pop(self, sink: Sink | None = None) -> tuple[np.ndarray, Mapping[str, Any]] | None:
        """Pop the next frame with its metadata; None if the buffer turned out empty.

        If ``sink`` has ``reserve(shape, dtype) -> array | None`` (the pipeline's sink
        does: the raw array of a claimed ring slot), the frame is popped straight into
        that array; ``sink.unreserve()`` gives the reservation back if the pop fails.
        """
        core = self.core
        buf = sequence_buffer(core)
        if buf is not None and has_python_camera(core):
            # UniMMCore with a Python camera: pop straight into a reused buffer (no
            # per-frame allocation); see livedenoise.live._unicore.
            spec = slot_spec(core)
            if spec is not None:
                shape, dtype = spec
                out = sink.reserve(shape, dtype) if sink is not None else None
                if out is None:
                    if self._staging is None or self._staging.shape != shape or self._staging.dtype != dtype:
                        self._staging = np.empty(shape, dtype)
                    out = self._staging
                try:
                    res = buf.pop_next(out=out)
                except BaseException:
                    if out is not self._staging and sink is not None:
                        sink.unreserve()
                    raise
                if res is None and out is not self._staging and sink is not None:
                    sink.unreserve()
                return res  # type: ignore[no-any-return]
        try:
            img, md = core.popNextImageAndMD()
        except (IndexError, RuntimeError) as exc:
            if "empty" in str(exc).lower():
                return None  # the count said 1 but the buffer was empty: poll again
            raise
        return img, md

    def _info(self, img: np.ndarray, md: Mapping[str, Any]) -> FrameInfo:
        number = int_value(metadata_value(md, "ImageNumber"), -1)
        index = self._base + number if number >= 0 else self._next_index
        self._next_index = max(self._next_index, index + 1)
        geo = self._last_roi
        x = int_value(metadata_value(md, "ROI-X-start"), geo.x)
        y = int_value(metadata_value(md, "ROI-Y-start"), geo.y)
        b = int_value(metadata_value(md, "Binning"), geo.binning)
        roi = Roi(x, y, int(img.shape[1]), int(img.shape[0]), b)
        if roi != geo:
            # metadata may not carry every key: confirm with the core once per change
            try:
                core_roi = self.geometry()
            except Exception:
                core_roi = roi
            if core_roi.shape == roi.shape:
                roi = core_roi
            self._last_roi = roi
        exposure = metadata_value(md, "Exposure-ms")
        if exposure is None:
            exposure = metadata_value(md, "Exposure")
        try:
            exposure_ms = float(exposure) if exposure is not None else float(self.core.getExposure())
        except (TypeError, ValueError):
            exposure_ms = float(self.core.getExposure())
        tid = metadata_value(md, "SimFrame")
        return FrameInfo(
            index=index,
            exposure_ms=exposure_ms,
            t_acquired=time.time(),
            camera=self.camera,
            roi=roi,
            truth_id=None if tid is None else int_value(tid, -1),
            missed_reason=DropReason.CAMERA,
        )

    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Acquire until ``stop`` is set; raises :class:`SourceError` if the camera stops by itself."""
        core = self.core
        self._last_roi = self.geometry()
        self._start_sequence()
        try:
            while not stop.is_set():
                if core.getRemainingImageCount() > 0:
                    got = self._pop(sink)
                    if got is None:
                        continue
                    img, md = got
                    self.received += 1
                    self._frame_came(time.monotonic())
                    sink(img, self._info(img, md))
                    continue
                if self._pause_req.is_set():
                    if self._started_by_us:
                        self._stop_sequence()
                        continue  # deliver what the stop left in the buffer
                    self._paused.set()
                    stop.wait(self._poll_s * 4)
                    if not self._pause_req.is_set() and not stop.is_set():
                        self._paused.clear()
                        self._last_roi = self.geometry()
                        self._start_sequence()
                    continue
                if not core.isSequenceRunning():
                    if core.getRemainingImageCount() > 0:
                        continue
                    raise SourceError(
                        f"camera {self.camera!r} stopped acquiring by itself after {self.received} "
                        "frames (a device error, or another program stopped the sequence); the "
                        "frames received were processed; check the camera and start again"
                    )
                stop.wait(
                    idle_wait_s(
                        time.monotonic(), self._t_frame, self._gap_s, self._poll_s, MAX_IDLE_WAIT_MS / 1e3
                    )
                )
            # stopped: the camera stops, and the frames it already gave are still delivered
            if self._started_by_us:
                self._stop_sequence()
                self._drain(sink)
        finally:
            self._stop_sequence()
            self._paused.set()

    def _frame_came(self, now: float) -> None:
        """Update the inter-frame gap estimate (frames popped back to back, from a backlog, do not count)."""
        last, self._t_frame = self._t_frame, now
        if last is None:
            return
        gap = now - last
        if gap < self._poll_s:
            return
        self._gap_s = gap if self._gap_s is None else (1 - _GAP_WEIGHT) * self._gap_s + _GAP_WEIGHT * gap

    def _drain(self, sink: Sink) -> None:
        while self.core.getRemainingImageCount() > 0:
            got = self._pop(sink)
            if got is None:
                break
            self.received += 1
            sink(got[0], self._info(*got))
