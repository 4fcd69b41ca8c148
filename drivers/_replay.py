"""A camera that replays a preloaded stack, for benchmarks of the pipeline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from pymmcore_plus import Keyword as KW
from pymmcore_plus.experimental.unicore import CameraDevice, pymm_property

__all__ = ["ReplayCamera"]

DEFAULT_EXPOSURE_MS = 20.0


# Frames a camera holds while the host is late (a frame grabber's memory, about 1 s at
# 100 fps): within it the backlog is delivered in a burst and the frame clock never
# slips, as with a real sCMOS camera; a camera further behind resyncs its clock.
_MAX_LAG_FRAMES = 100


class ReplayCamera(CameraDevice):
    """Replays a preloaded uint16 stack in a loop, for benchmarks.

    ``load_frames(stack)`` with a (T, H, W) uint16 array; frames come at ``IntervalMs``
    (0 = as fast as the core takes them). The cost per frame is one copy into the core's
    buffer, so a benchmark measures the pipeline, not the simulator.
    """

    def __init__(self) -> None:
        super().__init__()
        self._frames: np.ndarray | None = None
        self._exposure_ms = DEFAULT_EXPOSURE_MS
        self._interval_ms = 0.0
        self._running = False

    def load_frames(self, stack: np.ndarray) -> None:
        """Frames to replay: a (T, H, W) or (H, W) uint16 array (kept, not copied)."""
        a = np.asarray(stack)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.dtype != np.uint16 or 0 in a.shape:
            raise ValueError(
                f"ReplayCamera.load_frames expects a non-empty (T, H, W) uint16 stack, got "
                f"{a.dtype} {a.shape}; convert with np.asarray(stack, np.uint16)"
            )
        if self._running:
            raise RuntimeError("stop the sequence acquisition before loading new frames")
        self._frames = np.ascontiguousarray(a)

    @pymm_property(limits=(0.0, 10_000.0), property_type=float, name="IntervalMs")
    def interval_ms(self) -> float:
        """Time between frames in ms (0 = as fast as the core takes them)."""
        return self._interval_ms

    @interval_ms.setter
    def interval_ms(self, value: float | str) -> None:
        self._interval_ms = float(value)

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self._exposure_ms = float(exposure)

    def _stack(self) -> np.ndarray:
        if self._frames is None:
            raise RuntimeError(
                f"ReplayCamera {self.get_label()!r} has no frames: call load_frames(stack) "
                "with a (T, H, W) uint16 array first"
            )
        return self._frames

    def shape(self) -> tuple[int, int]:
        if self._frames is None:
            return (0, 0)
        return (int(self._frames.shape[1]), int(self._frames.shape[2]))

    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def start_sequence(
        self, n: int | None, get_buffer: Callable[[Sequence[int], Any], np.ndarray]
    ) -> Iterator[Mapping]:
        stack = self._stack()
        t, h, w = stack.shape
        interval_s = self._interval_ms / 1000.0
        # UniMMCore's acquisition thread carries the stop event (see SimSCMOSCamera)
        stop = getattr(threading.current_thread(), "stop_event", None)
        if not isinstance(stop, threading.Event):
            stop = None
        self._running = True
        try:
            k = 0
            nxt = time.monotonic()
            while n is None or k < n:
                buf = get_buffer((h, w), stack.dtype)
                np.copyto(buf, stack[k % t])
                if interval_s > 0:
                    nxt += interval_s
                    delay = nxt - time.monotonic()
                    if delay > 0:
                        if stop is None:
                            time.sleep(delay)
                        elif stop.wait(delay):
                            return  # stopSequenceAcquisition: no frame after the stop
                    elif -delay > _MAX_LAG_FRAMES * interval_s:
                        nxt = time.monotonic()  # hopelessly behind: resync the clock
                    # else: a little late (thread scheduling); keep the fixed frame clock,
                    # as a camera does, so the next frames catch up instead of the rate slipping
                yield {"SimFrame": k, "ReplayIndex": k % t, KW.Metadata_Exposure: self._exposure_ms}
                k += 1
        finally:
            self._running = False


ReplayCamera.__module__ = "livedenoise.drivers.simcam"  # the public, config-file name
