"""Which model the daemon restores with when none is named: the best one that keeps up with the camera.

Two models ship for the live path: the quality model (:data:`~livedenoise.inference.modelio.QUALITY_MODEL`)
and the fast live model (:data:`~livedenoise.inference.modelio.DEFAULT_MODEL`). Without ``--model``:

- on a GPU engine (``cuda``, ``tensorrt``) the quality model is built and timed on the camera's
  frame shape; it is kept when its median frame takes at most :data:`KEEP_UP` of the camera's frame
  interval, else the fast model is used;
- on the CPU engines (``cpu``; ``onnx`` by PyTorch's float32 time, which is about onnxruntime's)
  the quality model is timed on this machine with the engine's threads and precision on a 256²
  frame (:func:`~livedenoise.inference.engines.torch_cpu.cpu_frame_ms`: measured at the first
  start, a second or two, then read from the probe cache), scaled by the frame's pixels and by
  :func:`pipeline_slowdown` (inside the pipeline the engine shares the cores with the camera,
  conversion and publishing threads); it is used where that keeps up, else the fast model.
  CPUs differ by more than a model card can say: on a CPU with AMX these networks run about three
  times faster in bfloat16 than in float32; on others bfloat16 is slower or a little faster.

The live CPU engine leaves one core to the rest of the pipeline (:func:`live_cpu_threads`): on the
2-core CPU one engine thread restores more frames in the pipeline than two, whose every operation
waits for the thread the camera or the publisher just took the core from.

The choice and its reason are the first thing ``serve`` and ``demo`` print. ``--model`` always wins.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from livedenoise.inference.engines import AUTO_ORDER, Engine, available_backends, make_engine
from livedenoise.inference.engines.torch_cpu import cpu_frame_ms
from livedenoise.inference.engines.validation import frame_times
from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL, read_card, resolve_model
from livedenoise.util.threads import usable_cores

__all__ = [
    "CPU_PIPELINE_SLOWDOWN",
    "CPU_PIPELINE_SLOWDOWN_1T",
    "GPU_ENGINES",
    "KEEP_UP",
    "ModelChoice",
    "choose_model",
    "engine_kind",
    "live_cpu_threads",
    "live_engine_options",
    "pipeline_slowdown",
]

log = logging.getLogger("livedenoise")

KEEP_UP = 0.8
"""A model keeps up when its median frame takes at most this fraction of the camera's frame interval."""
CPU_PIPELINE_SLOWDOWN = 2.0
"""How much slower a CPU engine on two or more threads runs inside the pipeline than alone: ``livedenoise
bench`` measured 1.7x at 512² on a 2-core CPU (41 ms alone, 69 ms in the pipeline), and small frames use
the cores less well than large ones; rounded up."""
CPU_PIPELINE_SLOWDOWN_1T = 1.4
"""The same for an engine on one thread: ``livedenoise bench`` and ``demo`` measured 0.9-1.0x at
384-512² and 1.34x at 256² (resunet-live-v2, 2-core CPU, 2026-12-01); rounded up."""
GPU_ENGINES = ("cuda", "tensorrt")
TIMED_FRAMES = 5


@dataclass(frozen=True)
class ModelChoice:
    """The model to load (``None``: the engine's own, e.g. passthrough) and why, in words."""

    model: str | None
    reason: str
    engine: Engine | None = None  # an engine already built (and prepared) for the choice, to reuse


def engine_kind(kind: str | None) -> str:
    """The backend ``kind`` stands for (``None`` is ``cpu``; ``auto`` is the first available one)."""
    if kind is None:
        return "cpu"
    if kind != "auto":
        return kind
    avail = available_backends()
    return next((k for k in AUTO_ORDER if avail.get(k, (False, ""))[0]), "cpu")


def live_cpu_threads() -> int | None:
    """Threads for a live CPU engine: every usable core but one, left to the camera, the conversion and
    the publishing (None where ``OMP_NUM_THREADS`` is set: the user's choice stands)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, usable_cores() - 1)


def live_engine_options(kind: str | None, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` with the live thread count (:func:`live_cpu_threads`)
    for a CPU engine (``cpu``, ``onnx``) when none was given."""
    opts = dict(options or {})
    threads = opts.pop("threads", None)
    backend = engine_kind(kind)
    if backend in ("cpu", "onnx"):
        threads = live_cpu_threads() if threads is None else threads
        if threads is not None:
            opts["threads"] = int(threads)
    elif threads is not None:
        raise ValueError(
            f"--threads sets the cpu and onnx engines' CPU threads; the {backend} engine takes none"
        )
    return opts


def pipeline_slowdown(threads: int | None) -> float:
    """How much slower a CPU engine on ``threads`` threads runs in the pipeline than alone."""
    return CPU_PIPELINE_SLOWDOWN_1T if threads == 1 else CPU_PIPELINE_SLOWDOWN


def _timed_ms(engine: Engine, shape: tuple[int, int]) -> float:
    return 1e3 * float(np.median(frame_times(engine, shape, TIMED_FRAMES)))


def choose_model(
    kind: str | None,
    model: str | None,
    *,
    frame_shape: tuple[int, int],
    frame_interval_ms: float,
    options: dict[str, Any] | None = None,
) -> ModelChoice:
    """Choose the live model (see the module docstring).

    Parameters
    ----------
    kind : the engine asked for (``None``: cpu).
    model : the model asked for (``--model``); returned as is.
    frame_shape : the camera's frame (rows, columns).
    frame_interval_ms : the camera's frame interval (at least its exposure).
    options : engine options (threads, precision), for the timing run.
    """
    if model is not None:
        return ModelChoice(model, "asked for with --model")
    backend = engine_kind(kind)
    if backend == "passthrough":
        return ModelChoice(None, "the passthrough engine converts frames but restores none")
    budget = KEEP_UP * frame_interval_ms
    frame = f"{frame_shape[1]}×{frame_shape[0]}"
    try:  # installed, with a readable card
        read_card(resolve_model(QUALITY_MODEL))
    except (FileNotFoundError, ValueError) as exc:
        return ModelChoice(DEFAULT_MODEL, f"the fast live model (the quality model is not installed: {exc})")
    if backend in GPU_ENGINES:  # built and timed on the camera's frame
        engine = None
        try:
            engine = make_engine(backend, model=QUALITY_MODEL, **(options or {}))
            ms = _timed_ms(engine, frame_shape)
        except Exception as exc:  # any failure of the trial run: fall back, say why
            if engine is not None:
                engine.close()
            log.warning("the quality model could not be timed on %s: %s", backend, exc)
            return ModelChoice(
                DEFAULT_MODEL, f"the fast live model (the quality model failed on {backend}: {exc})"
            )
        if ms <= budget:
            return ModelChoice(
                QUALITY_MODEL,
                f"the quality model: {ms:.1f} ms a {frame} frame on {backend}, within the camera's "
                f"{frame_interval_ms:g} ms frame interval",
                engine=engine,
            )
        engine.close()
        return ModelChoice(
            DEFAULT_MODEL,
            f"the fast live model: the quality model {QUALITY_MODEL} takes {ms:.1f} ms a {frame} frame on "
            f"{backend}, more than {KEEP_UP:.0%} of the camera's {frame_interval_ms:g} ms frame interval",
        )
    opts = options or {}
    threads = opts.get("threads")
    # onnxruntime runs float32 convolutions at about PyTorch's speed here (README, Speed): the fp32 timing
    precision = "fp32" if backend == "onnx" else (opts.get("precision") or "auto")
    try:
        timed = cpu_frame_ms(QUALITY_MODEL, threads=threads, precision=precision)
    except Exception as exc:  # a quality model that cannot run here: the fast one, and why
        log.warning("the quality model could not be timed on the CPU: %s", exc)
        return ModelChoice(DEFAULT_MODEL, f"the fast live model (the quality model failed on the CPU: {exc})")
    tshape = timed["shape"]
    est = (
        float(timed["ms"])
        * (frame_shape[0] * frame_shape[1])
        / (int(tshape[0]) * int(tshape[1]))
        * pipeline_slowdown(int(timed["threads"]))
    )
    how = (
        f"~{est:.0f} ms a {frame} frame in the pipeline on this CPU ({timed['ms']:.1f} ms a "
        f"{tshape[1]}×{tshape[0]} frame alone, {timed['precision']}, {timed['threads']} "
        f"thread{'s' if timed['threads'] != 1 else ''}"
        + ("; PyTorch's time, onnxruntime's is about the same" if backend == "onnx" else "")
        + f"; {timed['source']})"
    )
    if est <= budget:
        return ModelChoice(
            QUALITY_MODEL,
            f"the quality model: {how} keeps up with the camera's {frame_interval_ms:g} ms frame interval",
        )
    return ModelChoice(
        DEFAULT_MODEL,
        f"the fast live model on the {backend} engine: the quality model {QUALITY_MODEL} would take {how}, "
        f"beyond {KEEP_UP:.0%} of the camera's {frame_interval_ms:g} ms frame interval; "
        f"--model {QUALITY_MODEL} overrides",
    )
