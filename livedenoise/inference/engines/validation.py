"""How engines check reduced precision: a bright synthetic frame and the error measure.

Shared by the GPU backends (their precision checks) and the engine benchmark
(:func:`livedenoise.app.bench.bench_engine`); numpy only. :func:`frame_times` is the one timing of
an engine on a frame shape that the live model choice reads (GPU engines on the camera's frame, the
CPU engine's cached speed probe).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["TOLERANCE", "frame_times", "relative_error", "synthetic_frame"]

# max |low - fp32| / (fp32 dynamic range) accepted for each reduced precision
TOLERANCE = {"fp16": 1e-2, "bf16": 3e-2, "fp32": 1e-5}


def synthetic_frame(shape: tuple[int, int], seed: int = 0, peak_e: float = 30000.0) -> np.ndarray:
    """A float32 test frame in photoelectrons: blobs from ~1 to ``peak_e`` e-, Poisson noise.

    The intensities span the full range of an sCMOS pixel so that a precision whose range is
    too small (fp16 overflows above 65504) fails validation rather than a live frame.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.full(shape, 5.0, np.float32)
    n = 24
    cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    sig = rng.uniform(1.5, max(2.0, min(h, w) / 12), n)
    amp = np.geomspace(2.0, peak_e, n)
    for i in range(n):
        img += amp[i] * np.exp(-((yy - cy[i]) ** 2 + (xx - cx[i]) ** 2) / (2 * sig[i] ** 2), dtype=np.float32)
    noisy = rng.poisson(img).astype(np.float32) + rng.normal(0, 1.5, shape).astype(np.float32)
    return noisy


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
    """``max|x - ref| / (ref.max() - ref.min())``: the error measure of the precision checks."""
    rng_ = float(ref.max() - ref.min())
    return float(np.max(np.abs(x.astype(np.float64) - ref))) / max(rng_, 1e-6)


def frame_times(engine: Any, shape: tuple[int, int], n: int) -> list[float]:
    """Seconds each of ``n`` restorations of one ``shape`` frame takes, after ``prepare`` and a warm-up.

    The frame is Poisson noise around 20 e- (seed 0): the networks' time does not depend on content.
    """
    engine.prepare(shape)
    x = np.random.default_rng(0).poisson(20.0, size=shape).astype(np.float32)
    out = np.empty(shape, np.float32)
    engine.restore(x, out)  # first frame: allocation, autotuning, caches
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        engine.restore(x, out)
        times.append(time.perf_counter() - t0)
    return times
