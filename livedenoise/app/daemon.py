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
from typing import Any, TextIO

import numpy as np

from livedenoise.calibration.maps import Calibration
from livedenoise.live.config import PipelineConfig
from livedenoise.live.pipeline import Pipeline, server_security
from livedenoise.live.stats import format_line, format_summary

__all__ = ["QualitySampler", "choose_engine", "run_live"]

log = logging.getLogger("livedenoise")


def choose_engine(kind: str | None, model: str | None, *, fallback: bool, out: TextIO | None = None) -> Any:
    """Make the engine asked for; with ``fallback``, fall back to passthrough with a message.

    ``kind=None`` means ``cpu`` (the default live model on the CPU).
    """
    from livedenoise.inference.engines import EngineUnavailable, PassthroughEngine, make_engine

    try:
        return make_engine(kind or "cpu", model=model)
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


class QualitySampler:
    """PSNR of raw and restored photoelectrons against the truth, sampled every ``interval_s``.

    Used as a :class:`Pipeline` observer (runs on the worker thread; costs one PSNR pair
    per interval).
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        from livedenoise.training.metrics import psnr

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


def _engine_phrase(engine: Any) -> str:
    """``cpu: rln-denoise-v2 (bf16)`` from an engine's description."""
    d = engine.describe()
    model = d.get("model") or "no model"
    precision = f" ({d['precision']})" if d.get("precision") else ""
    return f"{d.get('backend', getattr(engine, 'name', '?'))}: {model}{precision}"


def _install_jobs(server: Any, pipeline: Pipeline, source: Any, data_dir: str | None = None) -> Any:
    """Add the ``collect_pairs``, ``job`` and ``cancel`` commands when the daemon owns the core."""
    from livedenoise.live.sources import CoreSource

    if not isinstance(source, CoreSource):
        return None  # attached to another program's core: collecting pairs would take it over
    from livedenoise.acquisition.jobs import JobManager, install_pair_commands

    jobs = JobManager()
    install_pair_commands(server, pipeline, source.core, jobs, data_dir=data_dir)
    return jobs


def _check_calibration_fits(source: Any, calibration: Calibration) -> None:
    """Refuse maps of another sensor size before anything starts (the daemon owns an idle core)."""
    from livedenoise.live.sources import CoreSource

    if not isinstance(source, CoreSource) or calibration.meta.get("source") == "nominal":
        return
    from livedenoise.acquisition.core import sensor_shape

    core = source.core
    if core.isSequenceRunning():
        return  # never touch a running camera's ROI
    calibration.check_sensor(sensor_shape(core), camera=core.getCameraDevice())


def run_live(
    source: Any,
    engine: Any,
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
    from livedenoise.live.memory import keep_freed_memory
    from livedenoise.transport.publisher import Publisher

    _check_calibration_fits(source, calibration)
    keep_freed_memory()  # copying sends reuse heap memory (see livedenoise.live.memory)
    out = out or sys.stdout
    security = server_security(config)
    sampler = QualitySampler() if quality else None
    publisher = Publisher(config.pub_endpoint, security=security)
    pipeline: Pipeline | None = None
    jobs = None
    try:
        pipeline = Pipeline(source, engine, publisher, calibration, config, observer=sampler)
        server = pipeline.serve_control(config.control_endpoint, security=security)
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
        try:
            deadline = None if seconds is None else time.monotonic() + seconds
            while True:
                wait = config.stats_interval_s
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                if pipeline.wait(wait):
                    break
                status = pipeline.status()
                print(
                    format_line(status, sampler.latest if sampler else None, recent(status)),
                    file=out,
                    flush=True,
                )
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except KeyboardInterrupt:
            print("\nstopping (Ctrl-C)...", file=out, flush=True)
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


def _sigterm_as_interrupt() -> Any:
    """While running in the main thread, SIGTERM stops like Ctrl-C; returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)
