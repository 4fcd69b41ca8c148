"""Shared helpers of the pipeline tests: small cores, fake cameras, fake engines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from pymmcore_plus.experimental.unicore import CameraDevice, UniMMCore

from livedenoise.drivers.simcam import load_sim_core


def sim_core(size: int = 64, exposure_ms: float = 5.0, seed: int = 0) -> tuple[Any, Any]:
    """The real simulated camera on a small sensor (fast tests)."""
    core, cam = load_sim_core(sensor_shape=(size, size), seed=seed)
    core.setExposure(exposure_ms)
    return core, cam


class FaultyCamera(CameraDevice):
    """A 16-bit camera whose sequence raises after ``fail_after`` frames (or a chosen dtype)."""

    def __init__(
        self,
        shape: tuple[int, int] = (32, 32),
        dtype: Any = np.uint16,
        fail_after: int | None = None,
        interval_s: float = 0.002,
    ) -> None:
        super().__init__()
        self._shape = shape
        self._dtype = np.dtype(dtype)
        self._exposure = 1.0
        self.fail_after = fail_after
        self.interval_s = interval_s
        self.frames = 0

    def get_exposure(self) -> float:
        return self._exposure

    def set_exposure(self, exposure: float) -> None:
        self._exposure = float(exposure)

    def shape(self) -> tuple[int, int]:
        return self._shape

    def dtype(self) -> np.dtype:
        return self._dtype

    def start_sequence(
        self, n: int | None, get_buffer: Callable[[Sequence[int], Any], np.ndarray]
    ) -> Iterator[Mapping]:
        k = 0
        while n is None or k < n:
            if self.fail_after is not None and self.frames >= self.fail_after:
                raise OSError("simulated camera fault: sensor link lost")
            buf = get_buffer(self._shape, self._dtype)
            buf[:] = 100 + self.frames % 100
            self.frames += 1
            k += 1
            time.sleep(self.interval_s)
            yield {"Exposure-ms": self._exposure}


def fake_core(**kwargs: Any) -> tuple[Any, FaultyCamera]:
    core = UniMMCore()
    cam = FaultyCamera(**kwargs)
    core.loadPyDevice("Camera", cam)
    core.initializeDevice("Camera")
    core.setCameraDevice("Camera")
    return core, cam


class SlowEngine:
    """Passthrough that takes ``delay_s`` per frame (and may fail on chosen frames)."""

    name = "slow"

    def __init__(
        self, delay_s: float = 0.02, fail: Callable[[int], bool] | None = None, model_id: str = "slow-1"
    ) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.model_id = model_id
        self.calls = 0
        self.prepared: list[tuple[int, int]] = []
        self.closed = False

    def prepare(self, shape: tuple[int, int]) -> None:
        self.prepared.append(tuple(shape))

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail is not None and self.fail(self.calls):
            raise RuntimeError(f"injected failure on call {self.calls}")
        if self.delay_s:
            time.sleep(self.delay_s)
        np.maximum(frame_e, 0.0, out=out)
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_id}

    def close(self) -> None:
        self.closed = True


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``predicate`` on a condition until true or timeout (returns the last value)."""
    cond = threading.Condition()
    deadline = time.monotonic() + timeout_s
    with cond:
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return predicate()
            cond.wait(min(0.01, remaining))
    return True


class CallbackSink:
    """A plain ``callback(raw, info)`` as a source's sink (it never lends arrays in place)."""

    def __init__(self, callback: Callable[[np.ndarray, Any], None]) -> None:
        self.callback = callback

    def __call__(self, raw: np.ndarray, info: Any) -> None:
        self.callback(raw, info)

    def reserve(self, shape: tuple[int, ...], dtype: Any) -> None:
        return None

    def unreserve(self) -> None:
        pass


@contextmanager
def running_source(source: Any, sink: Any, *, raise_errors: bool = True) -> Iterator[list[BaseException]]:
    """Run ``source.run(sink, stop)`` on a thread for the ``with`` block; stop and join it after.

    A plain callable ``sink`` is wrapped in :class:`CallbackSink`. Yields the list of
    exceptions the source raised. On leaving, the thread must have stopped within 5 s; with
    ``raise_errors`` the first exception is raised there.
    """
    if not hasattr(sink, "reserve"):
        sink = CallbackSink(sink)
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            source.run(sink, stop)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    try:
        yield errors
    finally:
        stop.set()
        t.join(5.0)
    assert not t.is_alive(), "the source did not stop"
    if raise_errors and errors:
        raise errors[0]


def assert_accounted(status: Mapping[str, Any]) -> None:
    """The rule at the end of every run: every frame acquired was restored or dropped for a reason."""
    frames, drops = status["frames"], status["drops"]
    assert frames["pending"] == 0, f"frames still in the ring or the engine after the run: {frames}"
    assert status["dropped"] == sum(drops.values()), status
    assert frames["acquired"] == frames["restored"] + sum(drops.values()), (
        f"acquired {frames['acquired']} != restored {frames['restored']} + dropped {drops}"
    )


class OtherProgram:
    """Another program's live mode on ``core``: it runs a sequence and pops every frame itself.

    ``burst`` > 1 pops in bursts (it waits until ``burst`` frames are waiting, then pops them all,
    the way a viewer timer does). ``frames`` None: a continuous sequence until :meth:`stop`;
    otherwise a finite sequence of that many frames (which ends by itself). Every popped frame's
    simulator frame id (``SimFrame``) is kept in ``popped`` with whether ``attached`` was set then.
    """

    def __init__(
        self,
        core: Any,
        *,
        burst: int = 1,
        frames: int | None = None,
        attached: threading.Event | None = None,
        call: str = "popNextImageAndMD",
    ) -> None:
        self.core = core
        self.burst = burst
        self.frames = frames
        self.attached = attached or threading.Event()
        self.call = call
        self.popped: list[tuple[int, bool]] = []  # (SimFrame, attached at that moment)
        self._stop = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="other-program", daemon=True)

    def start(self) -> OtherProgram:
        if self.frames is None:
            self.core.startContinuousSequenceAcquisition(0)
        else:
            self.core.startSequenceAcquisition(self.frames, 0, True)
        self._thread.start()
        return self

    def _pop(self) -> None:
        core = self.core
        was_attached = self.attached.is_set()
        if self.call == "popNextImage":
            md = core._seq_buffer._slots[0].metadata  # the test's own look at the number
            core.popNextImage()
        else:
            _, md = core.popNextImageAndMD()
        self.popped.append((int(md["SimFrame"]), was_attached))

    def _run(self) -> None:
        core = self.core
        try:
            while not self._stop.is_set():
                waiting = core.getRemainingImageCount()
                running = core.isSequenceRunning()
                if waiting and (waiting >= self.burst or not running):
                    for _ in range(waiting):
                        self._pop()
                    continue
                if not running and not waiting:
                    break  # a finite sequence ended and every frame was popped
                time.sleep(0.001)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the sequence (a continuous one), pop what is left, end the thread."""
        if self.frames is None:
            self.core.stopSequenceAcquisition()
        else:
            assert self.done.wait(timeout_s), "the finite sequence did not end"
        self.done.wait(timeout_s)
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


def livedenoise_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("livedenoise-")]
