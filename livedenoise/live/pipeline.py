"""The live pipeline: source -> photoelectrons -> ring -> engine -> publisher.

Two threads:

- **acquisition** (runs :meth:`FrameSource.run`, handing frames to the
  :class:`~livedenoise.live.intake.Intake`): every frame is copied into a claimed ring slot,
  converted to photoelectrons in place (``PhotonConverter``) and committed. It never waits for a viewer, a disk or the network; under ``drop-oldest``
  it never waits at all. A source that hands frames over on *another program's* threads
  (``delivers_on_foreign_threads``, the attached source) only has them copied there; the
  worker converts them.
- **worker**: takes the oldest slot, restores it into a preallocated output with the
  engine, publishes ``raw``, ``denoised`` (and ``truth`` for the simulator) with one
  ``frame`` number, and releases the slot.

Every frame is accounted for: ``frames.acquired`` counts every camera frame the pipeline knows
of (received, or missed by the core or the other program), and at the end of any run
``acquired == restored + dropped``, the drops counted by reason (``ring-full``, ``camera``,
``not-seen``, ``engine-error``, ``bad-frame``, ``stopped``), each emitted as ``frameDropped``
and carried in the cumulative ``dropped`` header field. While running, ``frames.pending`` are
the frames in the ring or in the engine.

A stop is bounded: the camera stops, the frames it already gave are still restored for up to
``drain_timeout_s``, what is left is counted as ``stopped``, and the threads are joined; an
engine call that does not return in time is left behind with its frame counted as ``stopped``.

Example
-------
>>> from livedenoise.live.pipeline import Pipeline                      # doctest: +SKIP
>>> pipe = Pipeline(source, engine, publisher, calibration, config)
>>> pipe.start(); ...; pipe.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from livedenoise.calibration.maps import Calibration
from livedenoise.inference.engines import Engine
from livedenoise.live.config import PipelineConfig
from livedenoise.live.events import PipelineEvents
from livedenoise.live.intake import Intake
from livedenoise.live.qc import QCSummary, frame_qc
from livedenoise.live.ringbuffer import RingBuffer, Slot
from livedenoise.live.sink import FrameSink
from livedenoise.live.sources import FrameSource
from livedenoise.live.stats import PipelineStats
from livedenoise.live.types import DropReason, PipelineState, Roi
from livedenoise.util.threads import Beside

__all__ = ["Pipeline", "PipelineError"]

log = logging.getLogger("livedenoise")

Observer = Callable[[int, np.ndarray, np.ndarray, "np.ndarray | None"], None]


class _Closable(Protocol):
    def close(self) -> None: ...


class PipelineError(ValueError):
    """The pipeline cannot run (calibration does not fit the camera, ...)."""


class Pipeline:
    """Wire a frame source, a calibration, an engine and a publisher.

    Parameters
    ----------
    source : FrameSource
        :class:`livedenoise.live.sources.CoreSource` or :class:`~livedenoise.live.attached.AttachedSource`.
    engine : Engine
        Restoration backend (``livedenoise.inference.engines``).
    publisher : FrameSink
        ``livedenoise.transport.publisher.Publisher`` or another :class:`~livedenoise.live.sink.FrameSink`
        (called from the worker thread only).
    calibration : Calibration
        Full-sensor maps; cropped to the camera's ROI and binning as frames arrive. A
        nominal calibration (``meta["source"] == "nominal"``) is rebuilt for any shape.
    config : PipelineConfig, optional
    events : PipelineEvents, optional
    observer : callable, optional
        ``observer(frame, e, restored, truth)`` on the worker thread after each restored
        frame (arrays are reused afterwards: copy what you keep). Used by the demo for PSNR.
    """

    def __init__(
        self,
        source: FrameSource,
        engine: Engine,
        publisher: FrameSink,
        calibration: Calibration,
        config: PipelineConfig | None = None,
        events: PipelineEvents | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.source = source
        self.engine = engine
        self.publisher = publisher
        self.calibration = calibration
        self.config = config or PipelineConfig()
        self.events = events or PipelineEvents()
        self.observer = observer
        self.stats = PipelineStats(self.config.latency_samples)
        self.qc = QCSummary()
        self.state = PipelineState.STOPPED
        self.failure: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pending_engine: Engine | None = None
        self._pending_shape: tuple[int, int] | None = None
        self._engine_lock = threading.Lock()
        self._raw_scale_cal: Calibration | None = None  # _raw_scale() computed for this one
        self._raw_scale_keys: dict[str, float] = {}
        self._ring: RingBuffer | None = None
        self._t_start = 0.0
        self._engine_failed = False
        self._intake = Intake(
            calibration,
            self.config,
            self.stats,
            self.events,
            fail=self._fail,
            past_deadline=self._past_deadline,
            # sources handing frames over on another program's threads only copy there (module doc)
            convert_on_worker=bool(getattr(source, "delivers_on_foreign_threads", False)),
        )
        self._deadline: float | None = None  # stopping: after this (monotonic s) what is left is dropped
        self._in_flight: int | None = None  # frame the worker holds
        self._flight_lock = threading.Lock()
        self._abandoned = False  # stop gave up waiting for the worker's engine call
        self._engine_swapped = threading.Condition()
        self._state_changed = threading.Condition()
        self._starts = 0
        self._close_later: dict[str, list[Any]] = {}
        self.control_endpoint: str | None = None
        self.control: _Closable | None = None  # the control server the application attached

    # -- life cycle -----------------------------------------------------------------

    def _set_state(self, state: PipelineState) -> None:
        with self._state_changed:
            self.state = state
            self._state_changed.notify_all()
        self.events.stateChanged.emit(state)

    def start(self) -> Pipeline:
        """Prepare the ring and engine for the camera's current ROI and start both threads."""
        if self._threads:
            raise RuntimeError("pipeline already started")
        self._starts += 1
        self._set_state(PipelineState.STARTING)
        try:
            roi = self.source.geometry()
            self._ring = self._intake.new_ring(roi)  # a fresh ring (a stopped one is closed)
            with Beside(getattr(self.source, "prepare", None)):  # e.g. the camera's buffer made resident
                name = f"{getattr(self.engine, 'name', type(self.engine).__name__)}: {self.engine.model_id}"
                log.info("preparing the engine (%s) for %d×%d frames ...", name, roi.width, roi.height)
                t0 = time.perf_counter()
                self.engine.prepare(roi.shape)
                log.info("engine ready in %.1f s", time.perf_counter() - t0)
        except BaseException:
            self._set_state(PipelineState.STOPPED)
            raise
        self._stop.clear()
        self.failure = None
        self._engine_failed = False
        self._deadline = None
        self._in_flight = None
        self._abandoned = False
        self._t_start = time.time()
        acq = threading.Thread(target=self._acquire_loop, name="livedenoise-acquire", daemon=True)
        work = threading.Thread(target=self._work_loop, name="livedenoise-worker", daemon=True)
        self._threads = [acq, work]
        work.start()
        acq.start()
        self._set_state(PipelineState.RUNNING)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop acquisition, restore what was acquired (bounded), join the threads.

        The camera stops and the frames it already gave enter the ring; the worker restores
        the ring's frames for up to ``config.drain_timeout_s``, and counts the rest as dropped
        (``stopped``). Each thread then gets ``timeout_s`` more to finish; an engine call still
        running after that is left behind, its frame counted as ``stopped``.
        """
        if not self._threads:
            return
        if self._abandoned:  # an earlier stop left a thread behind: nothing more to wait for
            self._threads = [t for t in self._threads if t.is_alive()]
            return
        if self.state is not PipelineState.FAILED:
            self._set_state(PipelineState.STOPPING)
        self._begin_stop()
        acq, work = self._threads
        acq.join(self.config.drain_timeout_s + timeout_s)
        if self._ring is not None:
            self._ring.close()
        work.join(max(0.0, (self._deadline or 0.0) - time.monotonic()) + timeout_s)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            self._abandon(alive, timeout_s)
        else:
            self._threads = []
        if self.state is not PipelineState.FAILED:
            self._set_state(PipelineState.STOPPED)

    def _begin_stop(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.config.drain_timeout_s
        self._stop.set()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def _abandon(self, alive: list[str], timeout_s: float) -> None:
        """Give up on threads that did not end; their frame is counted, they touch nothing more."""
        with self._flight_lock:
            self._abandoned = True
            frame, self._in_flight = self._in_flight, None
        left = [frame] if frame is not None else []
        if self._ring is not None:
            left += self._ring.discard()
        for f in left:
            self._drop(f, DropReason.STOPPED)
        log.error(
            "%s still busy %.0f s after the stop (the engine did not return%s); left behind. "
            "If this repeats, check the engine (`livedenoise bench --engine-only`)",
            ", ".join(alive),
            self.config.drain_timeout_s + timeout_s,
            f"; {len(left)} frame(s) counted as dropped (stopped)" if left else "",
        )
        self._threads = [t for t in self._threads if t.is_alive()]

    def close(self) -> None:
        """Stop, then close the control socket, the engine, the source and the publisher.

        What a left-behind thread still uses (engine and publisher, or source) is not closed
        (see :meth:`stop`).
        """
        self.stop()
        with self._flight_lock:  # a left-behind thread closes what it uses when it ends
            busy = {t.name for t in self._threads if t.is_alive()}
            self._close_later = {
                "livedenoise-worker": [self.engine, self.publisher] if "livedenoise-worker" in busy else [],
                "livedenoise-acquire": [self.source] if "livedenoise-acquire" in busy else [],
            }
        later = [id(o) for objs in self._close_later.values() for o in objs]
        for obj in (self.control, self.engine, self.source, self.publisher):
            if obj is None or id(obj) in later:
                continue
            _close(obj)

    def _closing_thread_ends(self, name: str) -> None:
        """A thread that :meth:`stop` left behind ends: close what :meth:`close` left to it."""
        with self._flight_lock:
            objs = self._close_later.pop(name, [])
        for obj in objs:
            _close(obj)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the pipeline stopped (by :meth:`stop`, a fault or a ``stop`` request)."""
        return self._stop.wait(timeout_s)

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        """``(H, W)`` of the frames the ring and the engine are prepared for (None before the start)."""
        return self._ring.shape if self._ring is not None else None

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    @property
    def ended(self) -> bool:
        """Whether the pipeline was started and has stopped (or failed) since."""
        return (
            self._starts > 0
            and not self.running
            and self.state in (PipelineState.STOPPED, PipelineState.FAILED)
        )

    def wait_running(self, timeout_s: float | None = None) -> bool:
        """Wait until the stream runs (True), or it ended or never started within ``timeout_s`` (False).

        A pipeline that was not started yet, or is still starting (preparing its engine), is
        waited for: control commands sent right after the daemon's start use this.
        """

        def settled() -> bool:
            return (
                self.running and self.state in (PipelineState.RUNNING, PipelineState.PAUSED)
            ) or self.ended

        with self._state_changed:
            self._state_changed.wait_for(settled, timeout_s)
        return self.running

    def pause(self, timeout_s: float = 5.0) -> None:
        """Stop the camera (frames already acquired are still restored and published)."""
        self.source.pause(timeout_s)
        self._set_state(PipelineState.PAUSED)

    def resume(self) -> None:
        """Restart the camera (a changed ROI/binning/exposure is picked up)."""
        self.source.resume()
        self._set_state(PipelineState.RUNNING)

    def _fail(self, where: str, message: str) -> None:
        if self.failure is not None:
            return  # the first failure is the story
        log.error("%s: %s", where, message)
        self.failure = f"{where}: {message}"
        self.events.error.emit(where, message)
        self._set_state(PipelineState.FAILED)
        self._begin_stop()
        if self._ring is not None:
            self._ring.close()

    # -- engine and model -----------------------------------------------------------------

    def set_engine(self, engine: Engine, prepared_shape: tuple[int, int] | None = None) -> None:
        """Use ``engine`` from the next frame on (the old one is closed by the worker).

        ``prepared_shape``: the frame shape ``engine`` was already prepared for (off the worker
        thread, see ``livedenoise.app.daemon.set_model``), so the swap between two frames costs
        nothing; otherwise the worker prepares it. :meth:`wait_engine` waits for the swap.
        """
        with self._engine_lock:
            self._pending_engine = engine
            self._pending_shape = prepared_shape
        if not self._threads:
            self._swap_engine(None)

    def wait_engine(self, engine: Engine, timeout_s: float = 5.0) -> bool:
        """Wait until ``engine`` is the one in use (True), or ``timeout_s`` passes."""
        with self._engine_swapped:
            return self._engine_swapped.wait_for(lambda: self.engine is engine, timeout_s)

    def _swap_engine(self, shape: tuple[int, int] | None) -> None:
        with self._engine_lock:
            new, self._pending_engine = self._pending_engine, None
            prepared, self._pending_shape = self._pending_shape, None
        if new is None:
            return
        if shape is not None and tuple(shape) != prepared:
            new.prepare(shape)
        old = self.engine
        with self._engine_swapped:
            self.engine = new
            self._engine_swapped.notify_all()
        if old is not new:
            try:
                old.close()
            except Exception as exc:
                log.warning("closing the previous engine failed: %s", exc)
        self.events.modelChanged.emit(str(new.model_id))
        log.info("engine now %s", new.describe())

    def _drop(self, frame: int, reason: DropReason) -> None:
        self._intake.drop(frame, reason)

    def check_geometry(self, roi: Roi) -> None:
        """Raise :class:`CalibrationError` (saying what to do) if the calibration cannot cover ``roi``."""
        self._intake.calibration_for(roi, roi.shape)

    # -- acquisition thread ------------------------------------------------------------------

    def _acquire_loop(self) -> None:
        try:
            self.source.run(self._intake, self._stop)
        except Exception as exc:
            self._fail("acquisition", str(exc) or type(exc).__name__)
        finally:
            self._intake.unreserve()
            if self._ring is not None and self._stop.is_set():
                self._ring.close()  # after the source delivered what the camera already gave
            self._closing_thread_ends("livedenoise-acquire")

    # -- worker thread -------------------------------------------------------------------------

    def _work_loop(self) -> None:
        try:
            self._work()
        finally:
            self._closing_thread_ends("livedenoise-worker")

    def _work(self) -> None:
        ring = self._ring
        assert ring is not None
        out = np.zeros(ring.shape, np.float32)
        failures = 0
        stats = self.stats
        lat = stats.latency
        while True:
            slot = ring.get(timeout_s=0.2)
            if slot is None:
                if ring.closed:
                    break
                if self._pending_engine is not None:  # idle: swap now
                    self._swap_engine(ring.shape)
                continue
            t_get = time.perf_counter()
            lent = None
            with self._flight_lock:
                if self._abandoned:  # stop() gave up on this thread and counted what was left
                    ring.release(slot)
                    break
                self._in_flight = slot.frame
            try:
                if self._past_deadline():  # stopping, and the time to restore is up
                    self._settle(slot.frame, DropReason.STOPPED)
                    continue
                shape = slot.e.shape
                if out.shape != shape:
                    out = np.zeros(shape, np.float32)
                    self.engine.prepare(shape)
                if self._pending_engine is not None:
                    self._swap_engine(shape)
                if not slot.converted:
                    slot.converter(slot.raw, slot.e)  # type: ignore[misc]
                    slot.converted = True
                    t_conv = time.perf_counter()
                    lat["convert"].add(t_conv - t_get)
                    t_get = t_conv
                if self._engine_failed:
                    self._settle(slot.frame, DropReason.ENGINE_ERROR)
                    continue
                lat["queue"].add(t_get - slot.t_commit)
                restored = None
                # restore straight into a send buffer of the publisher when it lends one
                # (saves a copy of every restored frame); else into our own buffer
                lent = self._borrow(shape)
                try:
                    restored = self.engine.restore(slot.e, out if lent is None else lent)
                    failures = 0
                except Exception as exc:
                    failures += 1
                    if not self._settle(slot.frame, DropReason.ENGINE_ERROR):
                        break  # left behind by stop(): touch nothing more
                    self.events.error.emit("engine", f"frame {slot.frame}: {exc}")
                    log.warning("engine failed on frame %s: %s", slot.frame, exc)
                    if failures >= self.config.max_engine_failures:
                        self._engine_failed = True
                        self._fail(
                            "engine",
                            f"{failures} consecutive frames failed (last: {exc}); the pipeline stopped. "
                            "Check the model and engine (`livedenoise models`), or use --engine passthrough",
                        )
                t_eng = time.perf_counter()
                if restored is not None:
                    if not self._settle(slot.frame, None):
                        break  # left behind by stop(): its frame is already counted
                    lat["engine"].add(t_eng - t_get)
                self._publish(slot, restored)
                t_pub = time.perf_counter()
                lat["publish"].add(t_pub - t_eng)
                lat["end_to_end"].add(t_pub - slot.t_pop)
                if restored is not None:
                    self.events.frameRestored.emit(slot.frame, t_pub - slot.t_pop)
            except Exception as exc:  # a publisher or observer fault: report, keep going
                self._settle(slot.frame, DropReason.ENGINE_ERROR)  # no-op if already counted
                self.events.error.emit("worker", f"frame {slot.frame}: {exc}")
                log.warning("worker failed on frame %s: %s", slot.frame, exc)
            finally:
                if lent is not None:  # not published (engine error, fault): a no-op once it was
                    self.publisher.give_back("denoised", lent)
                ring.release(slot)

    def _settle(self, frame: int, reason: DropReason | None) -> bool:
        """Count the worker's frame once: restored (``reason`` None) or dropped for ``reason``.

        Returns False when :meth:`stop` left the worker behind (the frame was counted there).
        """
        with self._flight_lock:
            if self._abandoned:
                return False
            if self._in_flight != frame:
                return True  # already counted
            self._in_flight = None
        if reason is None:
            self.stats.rates["restored"].tick()
        else:
            self._drop(frame, reason)
        return True

    def _borrow(self, shape: tuple[int, ...]) -> np.ndarray | None:
        return self.publisher.borrow("denoised", shape, np.float32)

    def _publish(self, slot: Slot, restored: np.ndarray | None) -> None:
        pub = self.publisher
        model = self.engine.model_id
        common: dict[str, Any] = {
            "frame": slot.frame,
            "exposure_ms": slot.exposure_ms,
            "t_acquired": slot.t_acquired,
            "camera": slot.camera,
            "model": model,
            "calibration": slot.calibration,
        }
        if slot.identity:
            common.update(slot.identity)
        dropped = self.stats.dropped_total
        raw_extra: dict[str, Any] = self._raw_scale(slot)
        pub.publish("raw", slot.raw, dropped=dropped, **common, **raw_extra)
        truth = None
        if self.config.publish_truth and slot.truth_id is not None:
            truth = self.source.truth(slot.truth_id)
            if truth is not None:
                truth = np.asarray(truth, np.float32)
                if truth.shape != slot.e.shape:
                    truth = None
        if restored is not None:
            qc = self._frame_qc(slot, restored)
            extra: dict[str, Any] = {} if qc is None else {"qc": qc}
            pub.publish("denoised", restored, dropped=dropped, **extra, **common)
            if truth is not None:
                pub.publish("truth", truth, dropped=dropped, **common)
            self.stats.rates["published"].tick()
            if self.observer is not None:
                self.observer(slot.frame, slot.e, restored, truth)

    def _frame_qc(self, slot: Slot, restored: np.ndarray) -> dict[str, Any] | None:
        """The frame's trust score (:mod:`livedenoise.live.qc`), or None when it is switched off."""
        stride = self.config.qc_stride
        e = slot.e
        cal = getattr(slot.converter, "calibration", None)  # the crop that converted this frame
        if stride == 0 or cal is None or cal.read_var_e2.shape != e.shape:
            return None
        qc = frame_qc(e, restored, cal.read_var_e2, stride=stride)
        self.qc.add(qc)
        return qc

    def _raw_scale(self, slot: Slot) -> dict[str, float]:
        """Additive raw-header keys: the ROI's median offset and gain, for viewers showing raw in e⁻."""
        cal = getattr(slot.converter, "calibration", None)  # the crop that converted this frame
        if cal is None:
            return {}
        if cal is not self._raw_scale_cal:  # once per calibration crop (ROI change), not per frame
            self._raw_scale_cal = cal
            self._raw_scale_keys = {
                "median_offset_adu": round(float(np.median(cal.offset_adu)), 3),
                "median_gain_adu_per_e": round(float(np.median(cal.gain_adu_per_e)), 5),
            }
        return self._raw_scale_keys

    # -- status and control ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """JSON-able state for the control socket and the live display."""
        snap = self.stats.snapshot()
        ring = self._ring.counters() if self._ring is not None else {}
        snap["frames"]["pending"] = ring.get("queued", 0) + int(self._in_flight is not None)
        try:
            engine = self.engine.describe()
        except Exception as exc:
            engine = {"error": str(exc)}
        cal = self._intake.cal_roi or self.calibration
        return {
            "state": str(self.state),
            "failure": self.failure,
            "uptime_s": round(time.time() - self._t_start, 3) if self._t_start else 0.0,
            "endpoints": {"pub": self.publisher.endpoint, "control": self.control_endpoint},
            "camera": self.source.camera,
            "source": self.source.describe(),
            "roi": self._intake.roi.as_list() if self._intake.roi else None,
            "frames": snap["frames"],
            "fps": snap["fps"],
            "dropped": snap["dropped"],
            "drops": snap["drops"],
            "ring": {"slots": self.config.ring_slots, "policy": str(self.config.ring_policy), **ring},
            "latency_ms": snap["latency_ms"],
            "qc": self.qc.snapshot(),
            "model": self.engine.model_id,
            "engine": engine,
            "calibration": {"id": cal.id, "source": cal.meta.get("source"), "path": cal.meta.get("path")},
        }

    def request_stop(self) -> None:
        """Ask the pipeline to stop; whoever waits on :meth:`wait` does the joining."""
        self._stop.set()


def _close(obj: _Closable) -> None:
    try:
        obj.close()
    except Exception as exc:
        log.warning("closing %s failed: %s", type(obj).__name__, exc)
