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

:class:`AttachedSource` (another Python program drives a ``CMMCorePlus``)
    Never starts, stops or pops anything, so the other program keeps every frame.

    - MDA: ``core.mda.events.frameReady(img, event, meta)`` is connected; the handler
      copies the frame into the ring and returns (it runs on the MDA's acquisition thread:
      with ``ring_policy = "block"`` a slow engine would slow the MDA, so use the default
      ``drop-oldest`` when attached). Every MDA frame is seen.
    - Live / sequence acquisitions started by the other program: there is no per-frame
      signal, and popping would steal the other program's frames, so the source *peeks*
      (``getLastImageAndMD`` / ``getNBeforeLastImageAndMD``) and follows the core's
      ``ImageNumber``. Frames that left the core's buffer before the source looked (the
      other program pops faster than the poll interval) are **not seen**: they are
      counted with reason ``"not-seen"`` (the other program still has them).
    - Snaps (``imageSnapped``) outside MDA and sequences are taken with ``include_snaps``.

A replay source for benchmarks is a :class:`CoreSource` over a core whose camera is the
simulator's ``ReplayCamera``: acquisition still goes through the core.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from livedenoise.live.memory import prefault

__all__ = ["AttachedSource", "CoreSource", "FrameInfo", "FrameSource", "SourceError"]

log = logging.getLogger("livedenoise")

Roi = tuple[int, int, int, int, int]  # x, y, width, height, binning


class SourceError(RuntimeError):
    """The camera or core cannot deliver frames (bad pixel type, camera fault...)."""


class FrameInfo(NamedTuple):
    """What the source knows of one frame.

    ``index`` is the frame number since acquisition start (it runs on across pauses);
    a jump of ``index`` means frames were lost before the pipeline saw them, for the
    reason ``missed_reason``.
    """

    index: int
    exposure_ms: float
    t_acquired: float
    camera: str | None
    roi: Roi
    truth_id: int | None
    missed_reason: str = "camera"


Sink = Callable[[np.ndarray, FrameInfo], None]
"""``sink(raw, info)``; it may also offer ``reserve(shape, dtype) -> array | None`` and
``unreserve()`` so that a source can pop straight into the ring (no extra copy)."""


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


def _int(value: Any, default: int) -> int:
    if value is None:
        return default
    try:
        return int(str(value).split("x")[0])
    except ValueError:
        return default


def _get(md: Mapping[str, Any], key: str) -> Any:
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


class _CoreGeometry:
    """ROI, binning and exposure of the core's camera, read on demand."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def roi(self) -> Roi:
        core = self.core
        cam = core.getCameraDevice()
        x, y, w, h = (int(v) for v in core.getROI())
        try:
            b = _int(core.getProperty(cam, "Binning"), 1)
        except Exception:
            b = 1
        return (x, y, w, h, b)


# frames at least this large get the core's sequence buffer faulted in before the start
_RESIDENT_MIN_FRAME_BYTES = 2 * 1024 * 1024


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
        Sleep between polls of an empty core buffer.
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
        self._interval_ms = interval_ms
        self._geometry = _CoreGeometry(core)
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

    # -- acquisition ------------------------------------------------------------------

    def _start_sequence(self) -> None:
        core = self.core
        check_pixel_type(core)
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
        self._make_sequence_buffer_resident()
        core.startContinuousSequenceAcquisition(self._interval_ms)
        self._started_by_us = True
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
        seq = getattr(core, "_seq_buffer", None)
        pool = getattr(seq, "_pool", None)
        if not isinstance(pool, np.ndarray) or pool is self._resident_pool():
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

    def _pop(self, sink: Any = None) -> tuple[np.ndarray, Mapping[str, Any]] | None:
        """Pop the next frame with its metadata; None if the buffer turned out empty.

        If ``sink`` has ``reserve(shape, dtype) -> array | None`` (the pipeline's sink
        does: the raw array of a claimed ring slot), the frame is popped straight into
        that array; ``sink.unreserve()`` gives the reservation back if the pop fails.
        """
        core = self.core
        buf = getattr(core, "_seq_buffer", None)
        if buf is not None and getattr(core, "_py_camera", lambda: None)() is not None:
            # UniMMCore with a Python camera: pop straight into a reused buffer (no
            # per-frame allocation). Relies on SequenceBuffer internals of pymmcore-plus
            # 0.18; anything unexpected falls back to the public API below.
            try:
                shape = buf._slots[0].array.shape
                dtype = buf._slots[0].array.dtype
            except (AttributeError, IndexError):
                shape = dtype = None
            if shape is not None:
                reserve = getattr(sink, "reserve", None)
                out = reserve(shape, dtype) if reserve is not None else None
                if out is None:
                    if self._staging is None or self._staging.shape != shape or self._staging.dtype != dtype:
                        self._staging = np.empty(shape, dtype)
                    out = self._staging
                try:
                    res = buf.pop_next(out=out)
                except BaseException:
                    if out is not self._staging:
                        sink.unreserve()
                    raise
                if res is None and out is not self._staging:
                    sink.unreserve()
                return res
        try:
            img, md = core.popNextImageAndMD()
        except (IndexError, RuntimeError) as exc:
            if "empty" in str(exc).lower():
                return None  # the count said 1 but the buffer was empty: poll again
            raise
        return img, md

    def _info(self, img: np.ndarray, md: Mapping[str, Any]) -> FrameInfo:
        number = _int(_get(md, "ImageNumber"), -1)
        index = self._base + number if number >= 0 else self._next_index
        self._next_index = max(self._next_index, index + 1)
        geo = self._last_roi
        x = _int(_get(md, "ROI-X-start"), geo[0])
        y = _int(_get(md, "ROI-Y-start"), geo[1])
        b = _int(_get(md, "Binning"), geo[4])
        roi = (x, y, int(img.shape[1]), int(img.shape[0]), b)
        if roi != geo:
            # metadata may not carry every key: confirm with the core once per change
            try:
                core_roi = self.geometry()
            except Exception:
                core_roi = roi
            if core_roi[2:4] == roi[2:4]:
                roi = core_roi
            self._last_roi = roi
        exposure = _get(md, "Exposure-ms")
        if exposure is None:
            exposure = _get(md, "Exposure")
        try:
            exposure_ms = float(exposure) if exposure is not None else float(self.core.getExposure())
        except (TypeError, ValueError):
            exposure_ms = float(self.core.getExposure())
        tid = _get(md, "SimFrame")
        return FrameInfo(
            index=index,
            exposure_ms=exposure_ms,
            t_acquired=time.time(),
            camera=self.camera,
            roi=roi,
            truth_id=None if tid is None else _int(tid, -1),
            missed_reason="camera",
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
                stop.wait(self._poll_s)
            # stopped: the camera stops, and the frames it already gave are still delivered
            if self._started_by_us:
                self._stop_sequence()
                self._drain(sink)
        finally:
            self._stop_sequence()
            self._paused.set()

    def _drain(self, sink: Sink) -> None:
        while self.core.getRemainingImageCount() > 0:
            got = self._pop(sink)
            if got is None:
                break
            self.received += 1
            sink(got[0], self._info(*got))


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
        self._geometry = _CoreGeometry(core)
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
        self, img: np.ndarray, index: int, exposure_ms: float, truth_id: int | None, reason: str
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
        if (geo[3], geo[2]) != img.shape:
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
            self._deliver(img, index, float(exposure), None, "not-seen")

    def _on_snap(self, *args: Any) -> None:
        if not self._include_snaps or self._active or self.core.mda.is_running():
            return
        img = self.core.getImage()
        with self._lock:
            index = self._next_index
            self._next_index += 1
            self._deliver(img, index, float(self.core.getExposure()), None, "not-seen")

    def _newest_number(self) -> int:
        """ImageNumber of the newest frame in the core's buffer (-1: none), without copying.

        UniMMCore: read from its SequenceBuffer's last slot (pymmcore-plus 0.18 internals).
        Other cores: ``getLastImageAndMD`` (copies one frame per poll).
        """
        buf = getattr(self.core, "_seq_buffer", None)
        slots = getattr(buf, "_slots", None)
        if slots is not None:
            try:
                return _int(_get(slots[-1].metadata or {}, "ImageNumber"), -1)
            except IndexError:
                return -1
        try:
            _, md = self.core.getLastImageAndMD()
        except (IndexError, RuntimeError):
            return -1
        return _int(_get(md, "ImageNumber"), -1)

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
                number = _int(_get(md, "ImageNumber"), -1)
                if number != target:
                    # the buffer moved on (new frames arrived or the program popped): re-aim once
                    try:
                        img, md = core.getNBeforeLastImageAndMD(newest - target + (number - target))
                    except (IndexError, RuntimeError):
                        continue
                    if _int(_get(md, "ImageNumber"), -1) != target:
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
        exposure = _get(md, "Exposure-ms") or _get(md, "Exposure") or self.core.getExposure()
        tid = _get(md, "SimFrame")
        self._deliver(img, index, float(exposure), None if tid is None else _int(tid, -1), "not-seen")

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
