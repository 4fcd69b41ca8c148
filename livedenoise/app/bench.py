"""Benchmark of the live pipeline: each stage and the whole path, at several frame sizes.

The camera is the simulator's ``ReplayCamera`` replaying pre-generated uint16 frames
through a ``UniMMCore`` (so the simulator's own noise generation is not what is measured,
but acquisition still goes through the core), paced at ``camera_fps``. The pipeline
converts to photoelectrons, passes the ring, runs the engine and publishes to one real
ZeroMQ subscriber on loopback (``denoised``, optionally ``raw`` too): a thread of this
process with its own ZeroMQ context, or ``livedenoise subscribe`` in a separate process.

Reported per run: frames/s acquired, restored and received by the subscriber, drops,
subscriber gaps, latency p50/p99 per stage and end to end (ms), and the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from livedenoise.acquisition.core import new_unicore
from livedenoise.app.modelchoice import live_engine_options
from livedenoise.calibration.maps import Calibration
from livedenoise.drivers.simcam import ReplayCamera
from livedenoise.inference.engines import make_engine
from livedenoise.inference.engines.validation import synthetic_frame
from livedenoise.live.config import PipelineConfig
from livedenoise.live.pipeline import Pipeline
from livedenoise.live.sources import CoreSource
from livedenoise.live.stats import STAGES
from livedenoise.transport.publisher import Publisher
from livedenoise.transport.subscriber import Subscriber
from livedenoise.util.cpu import cpu_flags, cpu_model
from livedenoise.util.memory import keep_freed_memory
from livedenoise.util.threads import usable_cores

__all__ = [
    "BenchResult",
    "bench_engine",
    "bench_pipeline",
    "engine_table",
    "machine_description",
    "markdown_table",
    "run_bench",
    "run_engine_bench",
]


@dataclass
class BenchResult:
    """One benchmark run (one frame size, one engine)."""

    size: int
    transport: str
    topics: list[str]
    engine: str
    engine_description: dict[str, Any]
    camera_fps: float
    seconds: float
    acquired: int
    restored: int
    received_raw: int
    received_denoised: int
    fps_acquired: float
    fps_restored: float
    fps_received: float
    dropped: int
    drops: dict[str, int]
    subscriber_gaps: int
    latency_ms: dict[str, dict[str, float | None]]
    subscriber_latency_ms: dict[str, float | None] = field(default_factory=dict)
    dropped_warmup: int = 0
    subscriber: str = "thread"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_description() -> dict[str, Any]:
    """CPU model and kernel features (AMX, AVX-512 bf16), cores, Python, numpy, pyzmq and torch versions."""
    desc: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_features": " ".join(cpu_flags()) or "none known",
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        import zmq

        desc["pyzmq"] = zmq.__version__
        desc["libzmq"] = zmq.zmq_version()
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        desc["torch"] = torch.__version__
        desc["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        desc["torch"] = None
    return desc


def _frames(size: int, n: int, rng: np.random.Generator, offset_adu: float, gain: float) -> np.ndarray:
    """``n`` noisy uint16 frames of a smooth scene (~50-500 e- per pixel)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    scene = 50 + 450 * (0.5 + 0.5 * np.sin(6 * xx) * np.cos(5 * yy))
    stack = np.empty((n, size, size), np.uint16)
    for i in range(n):
        e = rng.poisson(scene).astype(np.float32)
        stack[i] = np.clip(offset_adu + gain * e + rng.normal(0, 1.5, scene.shape), 0, 65535).astype(
            np.uint16
        )
    return stack


def _replay_core(stack: np.ndarray, camera_fps: float) -> tuple[Any, Any]:

    core = new_unicore()
    cam = ReplayCamera()
    core.loadPyDevice("Camera", cam)
    core.initializeDevice("Camera")
    core.setCameraDevice("Camera")
    cam.load_frames(stack)
    core.setProperty("Camera", "IntervalMs", 1000.0 / camera_fps if camera_fps > 0 else 0.0)
    return core, cam


class _SubscriberThread(threading.Thread):
    """Receives ``raw`` and ``denoised``; counts messages, seq gaps and latency."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("raw", "denoised")) -> None:
        super().__init__(name="bench-subscriber", daemon=True)
        import zmq

        # its own context, hence its own I/O thread, as a subscriber in another program has
        self.context = zmq.Context()
        self.sub = Subscriber(endpoint, topics=topics, rcvhwm=100, context=self.context)
        self.stop = threading.Event()
        self.counts = dict.fromkeys(("raw", "denoised"), 0)
        self.gaps = 0
        self._next_seq: dict[str, int] = {}
        self.latency = np.zeros(100_000, np.float64)
        self.n_latency = 0

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.sub.recv(timeout_s=0.1)
            if msg is None:
                continue
            h = msg.header
            seq = h["seq"]
            expected = self._next_seq.get(msg.topic)
            if expected is not None and seq != expected:
                self.gaps += seq - expected
            self._next_seq[msg.topic] = seq + 1
            self.counts[msg.topic] += 1
            if msg.topic == "denoised" and self.n_latency < self.latency.size:
                self.latency[self.n_latency] = time.time() - h["t_acquired"]
                self.n_latency += 1
        self.sub.close()
        self.context.term()

    def snapshot(self) -> tuple[float, dict[str, int], int]:
        """(time, messages per topic, gaps) so far."""
        return time.time(), dict(self.counts), self.gaps

    def describe_failure(self) -> str:
        return "no subscription arrived" if self.is_alive() else "the subscriber thread ended"

    def latency_ms(self) -> dict[str, float | None]:
        if self.n_latency == 0:
            return {"p50": None, "p99": None}
        p50, p99 = np.percentile(self.latency[: self.n_latency], (50, 99)) * 1e3
        return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}


class _SubscriberProcess:
    """``livedenoise subscribe --json`` in a separate process: the subscriber a viewer would be.

    Same interface as :class:`_SubscriberThread`; its counts follow the subscriber's
    per-second JSON lines, its latency is that of the subscriber's last 1000 messages.
    """

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("raw", "denoised")) -> None:
        self.cmd = [
            sys.executable,
            "-m",
            "livedenoise",
            "-q",
            "subscribe",
            "--endpoint",
            endpoint,
            "--topics",
            ",".join(topics),
            "--json",
        ]
        self.n_latency = 0  # the subscriber keeps its own window; kept for the common interface
        self._latency: dict[str, float | None] = {"p50": None, "p99": None}
        self._snapshot: tuple[float, dict[str, int], int] = (time.time(), {"raw": 0, "denoised": 0}, 0)
        self._proc: Any = None
        self._stderr: Any = None
        self._reader: threading.Thread | None = None
        self.stop = self  # ``stop.set()`` as on the thread

    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (held open for the subprocess, closed in stop)
        self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._reader = threading.Thread(target=self._read, name="bench-subscriber-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            topics = d.get("topics") if isinstance(d, dict) else None
            if not topics:
                continue
            self._snapshot = (
                float(d.get("t", time.time())),
                {t: int((topics.get(t) or {}).get("frames", 0)) for t in ("raw", "denoised")},
                sum(int(v.get("gaps", 0)) for v in topics.values()),
            )
            den = topics.get("denoised") or {}
            if den.get("latency_p50_ms") is not None:
                self._latency = {"p50": den["latency_p50_ms"], "p99": den["latency_p99_ms"]}

    def snapshot(self) -> tuple[float, dict[str, int], int]:
        """(time, messages per topic, gaps) of the subscriber's latest once-a-second line."""
        return self._snapshot

    def set(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # a clean stop, with its summary

    def join(self, timeout: float | None = None) -> None:
        if self._proc is None:
            return
        try:
            self._proc.wait(timeout)
        except Exception:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout)
        if self._proc.stdout is not None and (self._reader is None or not self._reader.is_alive()):
            self._proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def latency_ms(self) -> dict[str, float | None]:
        return dict(self._latency)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def describe_failure(self) -> str:
        """What the subscriber process said on stderr (its last lines), for an error message."""
        if self._proc is None or self._stderr is None:
            return "not started"
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-5:]
        state = "running" if self._proc.poll() is None else f"exited with status {self._proc.returncode}"
        return f"`{' '.join(self.cmd)}` {state}" + (": " + " | ".join(tail) if tail else "")


def bench_pipeline(
    size: int,
    engine: Any,
    *,
    seconds: float = 5.0,
    warmup_s: float = 1.0,
    camera_fps: float = 100.0,
    ring_slots: int = 16,
    pool_frames: int = 8,
    seed: int = 0,
    endpoint: str = "tcp://127.0.0.1:*",
    topics: tuple[str, ...] = ("denoised",),
    subscriber: str = "thread",
) -> BenchResult:
    """Run the whole pipeline for ``seconds`` on ``size``² replayed frames with ``engine``.

    ``endpoint`` is where the publisher binds (loopback tcp by default; ``ipc://...`` is
    the other local transport); ``topics`` are what the one subscriber receives;
    ``subscriber`` is ``"thread"`` (in this process, with its own ZeroMQ context) or
    ``"process"`` (``livedenoise subscribe`` in a separate process, as a viewer would be).
    """
    if subscriber not in ("thread", "process"):
        raise ValueError(f"subscriber must be 'thread' or 'process', got {subscriber!r}")

    keep_freed_memory()  # as the daemon and `livedenoise subscribe` do

    rng = np.random.default_rng(seed)
    offset, gain = 100.0, 2.0
    stack = _frames(size, pool_frames, rng, offset, gain)
    core, _cam = _replay_core(stack, camera_fps)
    cal = Calibration(
        rng.normal(offset, 2.0, (size, size)).astype(np.float32),
        rng.normal(gain, 0.05, (size, size)).astype(np.float32),
        np.full((size, size), 2.0, np.float32),
        meta={"source": "bench", "camera": "Camera"},
    )
    publisher = Publisher(endpoint, sndhwm=100)
    sub: Any = (_SubscriberThread if subscriber == "thread" else _SubscriberProcess)(
        publisher.endpoint, topics
    )
    pipe: Any = None
    try:
        sub.start()
        deadline = time.monotonic() + (5.0 if subscriber == "thread" else 60.0)
        while not all(publisher.has_subscribers(t) for t in topics):
            if time.monotonic() > deadline or not sub.is_alive():
                raise RuntimeError(
                    f"the benchmark subscriber ({subscriber}) did not connect in time: "
                    f"{sub.describe_failure()}"
                )
            time.sleep(0.01)
        config = PipelineConfig(
            ring_slots=ring_slots, pub_endpoint=publisher.endpoint, control_endpoint="inproc://bench"
        )
        pipe = Pipeline(CoreSource(core), engine, publisher, cal, config)
        pipe.start()
        # the warm-up starts with the first frame: making buffers resident comes before it
        deadline = time.monotonic() + 120.0
        while pipe.stats.rates["acquired"].count == 0:
            if pipe.wait(0.01):
                raise RuntimeError(f"the pipeline stopped before its first frame: {pipe.failure}")
            if time.monotonic() > deadline:
                raise RuntimeError("the camera gave no frame within 120 s")
        time.sleep(warmup_s)
        if subscriber == "process":
            time.sleep(1.0)  # its counts arrive once a second: start from a fresh line
        dropped_warmup = pipe.stats.dropped_total
        pipe.stats.reset()  # measure after the warm-up
        snap0 = sub.snapshot()
        sub.n_latency = 0
        t0 = time.perf_counter()
        if pipe.wait(seconds):
            raise RuntimeError(f"the pipeline stopped during the benchmark: {pipe.failure}")
        elapsed = time.perf_counter() - t0
        status = pipe.status()
        if subscriber == "process":
            pipe.wait(1.1)  # its next once-a-second line, still with frames streaming
        snap1 = sub.snapshot()
    finally:
        if pipe is not None:
            pipe.stop()
        sub.stop.set()
        sub.join(5.0)
        publisher.close()
        with contextlib.suppress(Exception):
            core.unloadAllDevices()
    sub_s = max(
        snap1[0] - snap0[0], 1e-9
    )  # the subscriber's own window (a separate process reports once a second)
    received = snap1[1]["denoised"] - snap0[1]["denoised"]
    return BenchResult(
        size=size,
        transport=publisher.endpoint.split(":", 1)[0],
        topics=list(topics),
        engine=getattr(engine, "name", type(engine).__name__),
        engine_description=engine.describe(),
        camera_fps=camera_fps,
        seconds=round(elapsed, 3),
        acquired=status["frames"]["acquired"],
        restored=status["frames"]["restored"],
        received_raw=snap1[1]["raw"] - snap0[1]["raw"],
        received_denoised=received,
        fps_acquired=round(status["frames"]["acquired"] / elapsed, 2),
        fps_restored=round(status["frames"]["restored"] / elapsed, 2),
        fps_received=round(received / sub_s, 2),
        dropped=status["dropped"],
        drops=status["drops"],
        subscriber_gaps=snap1[2] - snap0[2],
        subscriber=subscriber,
        dropped_warmup=dropped_warmup,
        latency_ms=status["latency_ms"],
        subscriber_latency_ms=sub.latency_ms(),
    )


def run_bench(
    sizes: tuple[int, ...] = (512, 2048),
    engines: tuple[str, ...] = ("passthrough",),
    *,
    model: str | None = None,
    seconds: float = 5.0,
    camera_fps: float = 100.0,
    ring_slots: int = 16,
    endpoint: str = "tcp://127.0.0.1:*",
    topics: tuple[str, ...] = ("denoised",),
    subscriber: str = "thread",
    threads: int | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Benchmark every (engine, size); returns ``{"machine": ..., "results": [...]}``.

    The engines run as the daemon runs them (:func:`~livedenoise.app.modelchoice.live_engine_options`:
    a CPU engine on every core but one unless ``threads`` is given).
    """

    results = []
    for kind in engines:
        for size in sizes:
            if kind == "passthrough":
                engine = make_engine(kind)
            else:
                engine = make_engine(kind, model=model, **live_engine_options(kind, {"threads": threads}))
            if progress is not None:
                progress(f"bench: {kind} at {size}x{size}, camera {camera_fps:g} fps, {seconds:g} s ...")
            try:
                res = bench_pipeline(
                    size,
                    engine,
                    seconds=seconds,
                    camera_fps=camera_fps,
                    ring_slots=ring_slots,
                    endpoint=endpoint,
                    topics=topics,
                    subscriber=subscriber,
                )
            finally:
                engine.close()
            results.append(res.as_dict())
    return {"machine": machine_description(), "results": results}


def markdown_table(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per run, then the machine."""
    head = ["size", "engine", "transport", "camera fps", "fps acquired", "fps restored"]
    head += ["fps received (denoised)", "dropped", "gaps"]
    head += [f"{s} p50/p99 ms" for s in STAGES]
    head += ["subscriber latency p50/p99 ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def pair(d: dict[str, Any]) -> str:
        if d.get("p50") is None:
            return "-"
        return f"{d['p50']:.2f} / {d['p99']:.2f}"

    for r in report["results"]:
        row = [
            f"{r['size']}²",
            r["engine"],
            f"{r['transport']} ({'+'.join(r['topics'])}){', subscriber process' if r.get('subscriber') == 'process' else ''}",
            f"{r['camera_fps']:g}",
            f"{r['fps_acquired']:.1f}",
            f"{r['fps_restored']:.1f}",
            f"{r['fps_received']:.1f}",
            str(r["dropped"]),
            str(r["subscriber_gaps"]),
        ]
        row += [pair(r["latency_ms"][s]) for s in STAGES]
        row += [pair(r["subscriber_latency_ms"])]
        lines.append("| " + " | ".join(row) + " |")
    m = report["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m['cpu']} ({m.get('cpu_features', 'CPU features not recorded')}), {m['usable_cores']} usable cores ({m['cores']} total), Python {m['python']}, "
        f"numpy {m['numpy']}, pyzmq {m.get('pyzmq')}, torch {m.get('torch')}, {m['platform']}"
    )
    return "\n".join(lines)


def bench_engine(
    engine: Any, shape: tuple[int, int], n: int = 100, *, warmup: int = 5, batch: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Time ``engine`` on synthetic frames: frames/s and per-frame latency percentiles.

    Parameters
    ----------
    engine : Engine
        Any engine; ``prepare(shape)`` is called here.
    shape : (H, W)
    n : int
        Timed frames (after ``warmup`` untimed ones).
    batch : int
        Frames per call: 1 calls ``restore``; more calls ``restore_many`` when the engine
        has it (throughput when behind), latency is then per call.

    Returns
    -------
    dict
        ``fps``, ``latency_ms_p50``, ``latency_ms_p99``, ``latency_ms_min``, ``n``, ``shape``, ``batch``, and the
        engine's ``describe()``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    engine.prepare(shape)
    alloc = getattr(engine, "pinned_empty", None)
    frames = []
    for k in range(max(batch, 2)):
        f = alloc(shape) if alloc else np.empty(shape, np.float32)
        f[...] = synthetic_frame(shape, seed=seed + k, peak_e=2000.0)
        frames.append(f)
    outs = [np.empty(shape, np.float32) for _ in range(batch)]
    many = getattr(engine, "restore_many", None) if batch > 1 else None

    def call(k: int) -> None:
        if many is not None:
            many(frames[:batch], outs)
        else:
            engine.restore(frames[k % len(frames)], outs[0])

    for k in range(warmup):
        call(k)
    calls = max(1, n // batch)
    lat = np.empty(calls)
    t0 = time.perf_counter()
    for k in range(calls):
        t = time.perf_counter()
        call(k)
        lat[k] = time.perf_counter() - t
    total = time.perf_counter() - t0
    done = calls * (batch if many is not None else 1)
    return {
        "fps": done / total,
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3),
        "latency_ms_p99": float(np.percentile(lat, 99) * 1e3),
        "latency_ms_min": float(lat.min() * 1e3),
        "n": done,
        "shape": list(shape),
        "batch": batch if many is not None else 1,
        "engine": engine.describe(),
    }


def run_engine_bench(
    engines: tuple[str, ...],
    shapes: tuple[tuple[int, int], ...],
    *,
    model: str | None = None,
    n: int = 200,
    batch: int = 1,
    precision: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """The engine alone on synthetic frames, for every (engine, shape).

    Returns ``{"machine": ..., "engine_results": [...]}`` (see :func:`bench_engine`).
    """
    opts = {"precision": precision} if precision else {}
    results = []
    for kind in engines:
        engine = make_engine(kind, model=None if kind == "passthrough" else model, **opts)
        try:
            for shape in shapes:
                if progress is not None:
                    progress(f"bench: engine {kind} alone at {shape[0]}x{shape[1]}, {n} frames ...")
                results.append(bench_engine(engine, shape, n, batch=batch))
        finally:
            engine.close()
    return {"machine": machine_description(), "engine_results": results}


def engine_table(report: dict[str, Any]) -> str:
    """An engine-only report as Markdown: one row per (engine, shape), then the machine."""
    lines = [
        "| engine | model | precision | frame | batch | frames/s | latency p50 / p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["engine_results"]:
        d = r["engine"]
        lines.append(
            f"| {d.get('backend')} | {d.get('model')} | {d.get('precision')} | "
            f"{r['shape'][0]}x{r['shape'][1]} | {r['batch']} | {r['fps']:.1f} | "
            f"{r['latency_ms_p50']:.2f} / {r['latency_ms_p99']:.2f} |"
        )
    m = report["machine"]
    lines.append("")
    lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    return "\n".join(lines)
