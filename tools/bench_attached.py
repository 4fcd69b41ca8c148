"""What attached mode costs the other program's MDA thread per frame.

Runs an MDA (the "other program") on the simulated camera with livedenoise attached, and times
the ``frameReady`` handler that runs on the MDA's thread, once with the frame copied and
converted there (how attached mode worked before) and once copied only (now: the pipeline's
worker converts). Sizes 512², 1024², 2048² by default.

Usage::

    python tools/bench_attached.py [--sizes 512,1024,2048] [--frames 30]

Prints a Markdown table of the handler's p50 / p90 per frame, in ms.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import useq

from livedenoise.drivers.simcam import load_sim_core
from livedenoise.inference.engines import PassthroughEngine
from livedenoise.live.attached import AttachedSource
from livedenoise.live.config import PipelineConfig
from livedenoise.live.pipeline import Pipeline


class _NullSink:
    endpoint = None

    def publish(self, *args: Any, **kwargs: Any) -> None:
        pass

    def borrow(self, *args: Any) -> None:
        return None

    def give_back(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


def handler_ms(size: int, frames: int, convert_on_worker: bool) -> np.ndarray:
    core, cam = load_sim_core(sensor_shape=(size, size))
    core.setExposure(1.0)
    core.setProperty("Camera", "Scene", "flat")
    source = AttachedSource(core)
    times: list[float] = []
    handler = source._on_frame_ready

    def timed(img: np.ndarray, event: Any, meta: Any = None) -> None:
        t = time.perf_counter()
        handler(img, event, meta)
        times.append(time.perf_counter() - t)

    source._on_frame_ready = timed  # type: ignore[method-assign]
    pipe = Pipeline(
        source, PassthroughEngine(), _NullSink(), cam.true_calibration(), PipelineConfig(ring_slots=16)
    )
    pipe._intake.convert_on_worker = convert_on_worker
    pipe.start()
    try:
        source.attached.wait(5.0)
        core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": frames}))
        deadline = time.monotonic() + 120
        while pipe.status()["frames"]["acquired"] < frames and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pipe.close()
        cam.shutdown()
    return np.array(times[2:]) * 1e3  # the first frames pay one-off costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="512,1024,2048", help="frame sizes (square), comma-separated")
    p.add_argument("--frames", type=int, default=30, help="MDA frames per run")
    args = p.parse_args()
    print(
        "| frame | copy + convert on the MDA thread (before), p50 / p90 ms | copy only (now), p50 / p90 ms |"
    )
    print("| --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        cells = []
        for on_worker in (False, True):
            t = handler_ms(size, args.frames, on_worker)
            cells.append(f"{np.median(t):.2f} / {np.percentile(t, 90):.2f}")
        print(f"| {size}² | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
