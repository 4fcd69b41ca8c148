"""Run a pipeline in the foreground: sockets, live statistics, clean shutdown.

Shared by ``livedenoise demo`` and ``livedenoise serve``: binds the publisher and the
control socket, starts the pipeline, prints one line of statistics per interval until
the time is up, the pipeline stops (``stop`` request, camera fault) or the user presses
Ctrl-C, then stops everything and prints a summary.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from livedenoise.acquisition.core import CameraSettings, CoreError, apply_camera_settings, sensor_shape
from livedenoise.acquisition.jobs import JobManager, install_pair_commands
from livedenoise.app.modelchoice import choose_model, live_engine_options
from livedenoise.calibration.maps import Calibration, CalibrationError, read_calibration
from livedenoise.imaging.metrics import psnr
from livedenoise.inference.engines import Engine, EngineUnavailable, PassthroughEngine, make_engine
from livedenoise.inference.modelio import resolve_model_request
from livedenoise.live.attached import AttachedSource
from livedenoise.live.config import PipelineConfig
from livedenoise.live.pipeline import Pipeline, PipelineError
from livedenoise.live.sources import CoreGeometry, CoreSource, FrameSource
from livedenoise.live.stats import format_line, format_summary
from livedenoise.live.types import PipelineState, Roi
from livedenoise.transport.control import ControlServer
from livedenoise.transport.publisher import Publisher
from livedenoise.transport.security import ServerSecurity, ensure_server_keys
from livedenoise.util.memory import keep_freed_memory

__all__ = [
    "KeepUpCheck",
    "QualitySampler",
    "attach",
    "choose_engine",
    "control_handlers",
    "run_live",
    "serve_control",
    "server_security",
    "set_camera",
    "set_model",
]

log = logging.getLogger("livedenoise")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def server_security(config: PipelineConfig) -> ServerSecurity | None:
    """CURVE keys for the sockets when ``allow_remote`` is set, else None (loopback only)."""
    if not config.allow_remote:
        return None
    if not config.security_dir:
        raise PipelineError(
            "allow_remote needs security_dir (--keys DIR): the folder of the CURVE keys that protect "
            "the sockets; clients need a key pair authorised there"
        )
    ensure_server_keys(config.security_dir)
    return ServerSecurity(Path(config.security_dir), allow_remote=True)


def set_model(pipeline: Pipeline, name: str, *, swap_timeout_s: float = 30.0) -> dict[str, Any]:
    """Load model ``name`` on the pipeline's backend and swap it in between two frames.

    The new engine is made and prepared (and so validated) for the current frame shape here,
    on the caller's thread, while the worker goes on restoring with the old one: no frame waits
    for it. The swap happens before the worker's next frame. Returns the description of the
    engine in use after the swap; a model that fails to load or prepare raises, and the old
    engine stays.
    """
    engine = make_engine(pipeline.engine.name, model=name)
    shape = pipeline.frame_shape
    try:
        if shape is not None:
            engine.prepare(shape)
    except BaseException:
        engine.close()
        raise
    pipeline.set_engine(engine, prepared_shape=shape)
    if not pipeline.wait_engine(engine, swap_timeout_s):
        return {**engine.describe(), "in_use": False, "note": "takes over at the next frame"}
    return {**pipeline.engine.describe(), "in_use": True}


def set_camera(
    pipeline: Pipeline, settings: CameraSettings, *, pause_timeout_s: float = 10.0
) -> dict[str, Any]:
    """Give the camera a new exposure, binning and/or ROI between two frames of the stream.

    Refused (CoreError, nothing changed) when the calibration does not cover the new ROI, the
    camera refuses a value, or the stream is not running (starting, or paused by a job). The
    stream pauses (the frames already taken are still restored), the camera gets the settings,
    the stream resumes; the calibration is re-cropped on the first frame of the new geometry.
    Returns the camera's ``roi`` (``[x, y, width, height, binning]``) and ``exposure_ms`` now.
    """
    source = pipeline.source
    if not isinstance(source, CoreSource):
        raise CoreError(
            "attached to another program's core: change exposure, binning and ROI in that program"
        )
    if pipeline.state is not PipelineState.RUNNING:
        why = {
            PipelineState.STARTING: "is starting (preparing its engine); send it again once status says running",
            PipelineState.PAUSED: "is paused (a collect_pairs job uses the camera); wait for the job",
        }.get(pipeline.state, f"is {pipeline.state}")
        raise CoreError(f"cannot change the camera now: the stream {why}")
    core = source.core
    geometry = CoreGeometry(core)
    before = CameraSettings(core.getExposure(), geometry.roi().binning, None)
    old_roi = geometry.roi()
    try:
        pipeline.pause(pause_timeout_s)
    except TimeoutError as exc:
        pipeline.resume()
        raise CoreError(f"the stream did not pause between two frames ({exc}); nothing was changed") from exc
    try:
        try:
            apply_camera_settings(core, settings)
            pipeline.check_geometry(geometry.roi())
        except (CoreError, CalibrationError) as exc:
            _put_back(core, before, old_roi)
            raise CoreError(f"{exc}; the camera keeps ROI {old_roi.as_list()}") from exc
        except Exception as exc:
            _put_back(core, before, old_roi)
            raise CoreError(
                f"the camera refused the settings ({exc}); it keeps ROI {old_roi.as_list()}"
            ) from exc
    finally:
        pipeline.resume()
    return {"roi": geometry.roi().as_list(), "exposure_ms": float(core.getExposure())}


def _put_back(core: Any, before: CameraSettings, roi: Roi) -> None:
    try:
        apply_camera_settings(
            core, CameraSettings(before.exposure_ms, before.binning, (roi.x, roi.y, roi.width, roi.height))
        )
    except Exception as exc:  # the camera is in an unknown state: say so, the stream shows it
        log.error("could not put the camera's settings back: %s", exc)


def control_handlers(pipeline: Pipeline) -> dict[str, Handler]:
    """Control-socket handlers of a pipeline: ``status``, ``stop``, ``set_model``, ``set``."""

    def status(req: dict[str, Any]) -> dict[str, Any]:
        return pipeline.status()

    def stop(req: dict[str, Any]) -> dict[str, Any]:
        # answer first; the CLI (or whoever waits on wait()) does the joining
        pipeline.request_stop()
        return {"state": "stopping"}

    def set_model_handler(req: dict[str, Any]) -> dict[str, Any]:
        name = req.get("model")
        if name is None:
            return {
                "ok": False,
                "error": 'set_model needs "model": a model id (`livedenoise models` lists them) or the '
                'path of a model file, e.g. {"cmd": "set_model", "model": "rln-denoise-v1"}',
            }
        if not isinstance(name, str) or not name:
            return {
                "ok": False,
                "error": f"'model' must be a model id or path string, got {type(name).__name__} {name!r}",
            }
        try:  # confined to the model folders; refused before anything is looked at
            weights = resolve_model_request(name, pipeline.config.model_dirs)
        except (ValueError, FileNotFoundError) as exc:
            return {"ok": False, "error": str(exc)}
        try:
            described = set_model(pipeline, str(weights))
        except Exception as exc:
            return {"ok": False, "error": f"cannot load model {name!r}: {exc}"}
        return {"engine": described, "model": described.get("model")}

    def set_handler(req: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(req) - {"cmd", "exposure_ms", "binning", "roi"})
        if unknown:
            return {
                "ok": False,
                "error": f"set got unknown argument(s) {', '.join(unknown)}; known: exposure_ms, binning, roi",
            }
        try:
            return set_camera(pipeline, CameraSettings.from_request(req))
        except (CoreError, TimeoutError) as exc:
            return {"ok": False, "error": str(exc)}

    return {"status": status, "stop": stop, "set_model": set_model_handler, "set": set_handler}


def serve_control(
    pipeline: Pipeline, endpoint: str | None = None, security: ServerSecurity | None = None
) -> ControlServer:
    """Bind the control socket of ``pipeline`` and start answering (closed by ``pipeline.close()``).

    Later wiring adds commands with the server's ``register`` (``collect_pairs``, ``job``).
    """
    server = ControlServer(
        endpoint or pipeline.config.control_endpoint, control_handlers(pipeline), security=security
    )
    server.start()
    pipeline.control = server
    pipeline.control_endpoint = server.endpoint
    return server


def attach(
    core: Any,
    calibration: Calibration | str | Path,
    *,
    engine: str = "cpu",
    model: str | None = None,
    config: PipelineConfig | None = None,
) -> Pipeline:
    """Restore every frame of a core that another program drives, in that program's process.

    For napari-micromanager, pymmcore-gui or a script of one's own: run this where their
    ``CMMCorePlus`` lives (their Python console, a plugin), e.g.
    ``attach(CMMCorePlus.instance(), "cal.tif")``. Nothing is started, stopped or popped: the
    program keeps all its frames (:class:`~livedenoise.live.attached.AttachedSource`). Frames are
    published on ``config.pub_endpoint`` and the control socket answers on
    ``config.control_endpoint``; ``close()`` the returned pipeline to detach.
    """
    config = config or PipelineConfig()
    cal = calibration if isinstance(calibration, Calibration) else read_calibration(calibration)
    security = server_security(config)
    publisher = Publisher(config.pub_endpoint, security=security)
    try:
        pipeline = Pipeline(AttachedSource(core), make_engine(engine, model=model), publisher, cal, config)
        serve_control(pipeline, config.control_endpoint, security=security)
        pipeline.start()
    except BaseException:
        publisher.close()
        raise
    return pipeline


def choose_engine(
    kind: str | None,
    model: str | None,
    *,
    fallback: bool,
    out: TextIO | None = None,
    options: dict[str, Any] | None = None,
) -> Engine:
    """Make the engine asked for; with ``fallback``, fall back to passthrough with a message.

    ``kind=None`` means ``cpu`` (the default live model on the CPU). ``options``: engine
    keyword options (e.g. ``{"precision": "fp32"}``).
    """
    log.info("loading the restoration engine (%s, model %s) ...", kind or "cpu", model or "default")
    try:
        return make_engine(kind or "cpu", model=model, **(options or {}))
    except (EngineUnavailable, ImportError, FileNotFoundError, ValueError) as exc:
        if not fallback:
            raise
        print(
            f"livedenoise: no restoration engine could start ({exc}); falling back to the passthrough "
            "engine: frames are converted and published but NOT restored. Install or train a model "
            "(`livedenoise models`) and pass --engine cpu.",
            file=out or sys.stderr,
        )
        return PassthroughEngine()


def start_live_engine(
    kind: str | None,
    model: str | None,
    core: Any,
    *,
    fallback: bool,
    options: dict[str, Any] | None = None,
    out: TextIO | None = None,
) -> Engine:
    """The engine for the live path, with the model chosen for the camera (:mod:`livedenoise.app.modelchoice`).

    Prints the choice and its reason (``livedenoise: model ...``) before anything loads, so it is
    the first line of ``serve`` and ``demo``.
    """
    shape = (int(core.getImageHeight()), int(core.getImageWidth()))
    interval_ms = max(float(core.getExposure()), 0.1)
    options = live_engine_options(kind, options)
    choice = choose_model(kind, model, frame_shape=shape, frame_interval_ms=interval_ms, options=options)
    print(f"livedenoise: model {choice.model or 'none'}: {choice.reason}", file=out or sys.stdout, flush=True)
    if choice.engine is not None:
        return choice.engine
    return choose_engine(kind, choice.model, fallback=fallback, out=out, options=options)


class QualitySampler:
    """PSNR of raw and restored photoelectrons against the truth, sampled every ``interval_s``.

    Used as a :class:`Pipeline` observer (runs on the worker thread; costs one PSNR pair
    per interval).
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self._psnr = psnr
        self.interval_s = interval_s
        self._last = 0.0
        self.latest: dict[str, float] = {}
        self.samples = 0

    def __call__(self, frame: int, e: np.ndarray, restored: np.ndarray, truth: np.ndarray | None) -> None:
        now = time.monotonic()
        if truth is None or now - self._last < self.interval_s:
            return
        self._last = now
        self.latest = {
            "raw": float(self._psnr(e, truth)),
            "restored": float(self._psnr(restored, truth)),
            "frame": frame,
        }
        self.samples += 1


def _engine_phrase(engine: Engine) -> str:
    """``cpu: rln-denoise-v2 (bf16, 1 thread)`` from an engine's description."""
    d = engine.describe()
    model = d.get("model") or "no model"
    detail = [d["precision"]] if d.get("precision") else []
    if d.get("threads"):
        detail.append(f"{d['threads']} thread" + ("s" if d["threads"] != 1 else ""))
    name = f"{d.get('backend', getattr(engine, 'name', '?'))}: {model}"
    return f"{name} ({', '.join(detail)})" if detail else name


def _install_jobs(
    server: ControlServer, pipeline: Pipeline, source: FrameSource, data_dir: str | None = None
) -> JobManager | None:
    """Add the ``collect_pairs``, ``job`` and ``cancel`` commands when the daemon owns the core."""
    if not isinstance(source, CoreSource):
        return None  # attached to another program's core: collecting pairs would take it over
    jobs = JobManager()
    install_pair_commands(server, pipeline, source.core, jobs, data_dir=data_dir)
    return jobs


def _check_calibration_fits(source: FrameSource, calibration: Calibration) -> None:
    """Refuse maps of another sensor size before anything starts (the daemon owns an idle core)."""
    if not isinstance(source, CoreSource) or calibration.meta.get("source") == "nominal":
        return
    core = source.core
    if core.isSequenceRunning():
        return  # never touch a running camera's ROI
    calibration.check_sensor(sensor_shape(core), camera=core.getCameraDevice())


def run_live(
    source: FrameSource,
    engine: Engine,
    calibration: Calibration,
    config: PipelineConfig,
    *,
    seconds: float | None = None,
    quality: bool = False,
    out: TextIO | None = None,
) -> int:
    """Run until ``seconds`` pass, a ``stop`` request, a fault or Ctrl-C; returns an exit status.

    0: stopped normally; 1: the pipeline failed (the summary says why).
    """
    _check_calibration_fits(source, calibration)
    keep_freed_memory()  # copying sends reuse heap memory (see livedenoise.util.memory)
    out = out or sys.stdout
    security = server_security(config)
    sampler = QualitySampler() if quality else None
    publisher = Publisher(config.pub_endpoint, security=security)
    pipeline: Pipeline | None = None
    jobs = None
    try:
        pipeline = Pipeline(source, engine, publisher, calibration, config, observer=sampler)
        server = serve_control(pipeline, config.control_endpoint, security=security)
        jobs = _install_jobs(server, pipeline, source, config.data_dir)
        pipeline.start()
        print(
            f"livedenoise: camera {pipeline.status()['camera']} ROI {pipeline.status()['roi']}, engine "
            f"{_engine_phrase(engine)}, calibration {calibration.id}; publishing on {publisher.endpoint}, "
            f"control on {pipeline.control_endpoint}. Ctrl-C stops.",
            file=out,
            flush=True,
        )
        restore_sigterm = _sigterm_as_interrupt()
        recent = _RecentRates()
        keep_up = KeepUpCheck()
        try:
            deadline = None if seconds is None else time.monotonic() + seconds
            while True:
                wait = config.stats_interval_s
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                if pipeline.wait(wait):
                    break
                status = pipeline.status()
                rates = recent(status)
                print(format_line(status, sampler.latest if sampler else None, rates), file=out, flush=True)
                warning = keep_up(status, rates)
                if warning:
                    # said once, beside the statistics lines (a log record too would repeat it on a terminal)
                    print(f"livedenoise: warning: {warning}", file=out, flush=True)
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except KeyboardInterrupt as exc:
            why = "SIGTERM" if isinstance(exc, _Terminated) else "Ctrl-C"
            print(f"\nstopping ({why})...", file=out, flush=True)
        finally:
            restore_sigterm()
    finally:
        if jobs is not None:
            jobs.close(timeout_s=30)  # a running collection ends `failed`, keeping complete pairs
        if pipeline is not None:
            pipeline.close()
        else:
            publisher.close()
    status = pipeline.status()
    print(format_summary(status), file=out)
    if sampler is not None and sampler.latest:
        print(
            f"PSNR vs truth (frame {sampler.latest['frame']}): raw {sampler.latest['raw']:.2f} dB, "
            f"restored {sampler.latest['restored']:.2f} dB",
            file=out,
        )
    out.flush()
    return 1 if status["state"] == "failed" else 0


class KeepUpCheck:
    """Says once, early, that the engine restores fewer frames than the camera gives, and what to do.

    Called with each status and the rates since the previous one; returns the warning the first
    time the engine's median time per frame exceeds the camera's frame period (before many frames
    are lost), or frames are being dropped for it (``ring-full``, or ``camera`` under ``block``).
    """

    def __init__(self, min_restored: int = 5, tolerance: float = 1.15) -> None:
        self.min_restored = min_restored
        self.tolerance = tolerance
        self.said = False
        self._fps = 0.0

    def __call__(self, status: dict[str, Any], rates: dict[str, float]) -> str | None:
        if self.said:
            return None
        frames, drops = status["frames"], status["drops"]
        self._fps = max(self._fps, rates.get("acquired", 0.0))  # a slow engine may make few lines
        camera_fps = self._fps
        engine_ms = status["latency_ms"]["engine"]["p50"]
        if not frames["restored"] or not engine_ms:
            return None
        lost = drops.get("ring-full", 0) + drops.get("camera", 0)
        ratio = engine_ms * camera_fps / 1000.0 if camera_fps > 0 else 0.0
        # a few frames tell a clear case (an engine at twice the frame period) early
        enough = frames["restored"] >= self.min_restored or (frames["restored"] >= 1 and ratio > 2.0)
        too_slow = enough and ratio > self.tolerance
        if not too_slow and (lost == 0 or lost <= 0.05 * frames["acquired"]):
            return None
        self.said = True
        engine_fps = 1000.0 / engine_ms if engine_ms else rates.get("restored", 0.0)
        share = 100.0 * max(0.0, 1.0 - engine_fps / camera_fps) if camera_fps > 0 else 0.0
        return (
            f"the engine cannot keep up: it restores about {engine_fps:.1f} frames/s ({engine_ms:.0f} ms a "
            f"frame) while the camera gives {camera_fps:.1f} frames/s, so about {share:.0f} % of the frames "
            "will be dropped (counted as ring-full, never silently). To keep up: a smaller ROI or binning "
            "(--roi, --binning, or `livedenoise ctl set`), a longer exposure, a faster model "
            "(`livedenoise models`; the default live model is the fastest), or a GPU (--engine cuda)"
        )


class _RecentRates:
    """Frames/s since the previous call, from the cumulative counts of ``status``."""

    def __init__(self) -> None:
        self._t = time.monotonic()
        self._counts: dict[str, int] = {}

    def __call__(self, status: dict[str, Any]) -> dict[str, float]:
        now = time.monotonic()
        dt = max(now - self._t, 1e-9)
        counts = status["frames"]
        rates = {k: (v - self._counts.get(k, 0)) / dt for k, v in counts.items()}
        self._t, self._counts = now, dict(counts)
        return rates


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that both stop the same way."""


def _sigterm_as_interrupt() -> Any:
    """While running in the main thread, SIGTERM stops like Ctrl-C; returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
