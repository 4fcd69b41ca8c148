"""Frame sources on real UniMMCore cores: the simulated camera and small fake devices."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import useq
from _pipeline_helpers import CallbackSink, OtherProgram, fake_core, running_source, sim_core, wait_for

from livedenoise.live.attached import IDLE_CHECK_S, AttachedSource
from livedenoise.live.sources import (
    MAX_IDLE_WAIT_MS,
    CoreSource,
    FrameInfo,
    FrameSource,
    SourceError,
    check_pixel_type,
    idle_wait_s,
)
from livedenoise.live.types import Roi


class Collector:
    """A sink that keeps copies of what it is given (and can be slow)."""

    def __init__(self, delay_s: float = 0.0, first_delay_s: float = 0.0) -> None:
        self.frames: list[np.ndarray] = []
        self.infos: list[FrameInfo] = []
        self.delay_s = delay_s
        self.first_delay_s = first_delay_s
        self.lock = threading.Lock()

    def __call__(self, raw: np.ndarray, info: FrameInfo) -> None:
        with self.lock:
            self.frames.append(raw.copy())
            self.infos.append(info)
        if len(self.infos) == 1 and self.first_delay_s:
            time.sleep(self.first_delay_s)
        if self.delay_s:
            time.sleep(self.delay_s)

    def __len__(self) -> int:
        with self.lock:
            return len(self.infos)


def _run(source: Any, sink: Collector, until: Any, timeout_s: float = 10.0) -> BaseException | None:
    with running_source(source, sink, raise_errors=False) as errors:
        wait_for(lambda: until() or bool(errors), timeout_s)
    return errors[0] if errors else None


def test_core_source_delivers_every_frame_in_order() -> None:
    core, cam = sim_core(64, exposure_ms=2.0)
    core.setROI(8, 16, 32, 24)
    src = CoreSource(core, truth=cam.truth)
    assert isinstance(src, FrameSource)
    assert src.geometry() == Roi(8, 16, 32, 24, 1)
    sink = Collector()
    assert _run(src, sink, lambda: len(sink) >= 30) is None
    idx = [i.index for i in sink.infos]
    assert idx == list(range(len(idx)))
    assert all(f.shape == (24, 32) and f.dtype == np.uint16 for f in sink.frames)
    info = sink.infos[0]
    assert info.roi == Roi(8, 16, 32, 24, 1) and info.camera == "Camera" and info.exposure_ms == 2.0
    assert [i.truth_id for i in sink.infos[:5]] == [0, 1, 2, 3, 4]
    assert src.truth(sink.infos[-1].truth_id).shape == (24, 32)
    assert not core.isSequenceRunning()  # stopped on exit


def test_idle_wait_is_coarse_far_from_the_next_frame_and_fine_when_it_is_due() -> None:
    poll, cap = 0.0005, MAX_IDLE_WAIT_MS / 1e3
    assert idle_wait_s(10.0, None, None, poll, cap) == poll  # no rate known yet: the finest poll
    assert idle_wait_s(10.0, 10.0, None, poll, cap) == poll
    # a frame every 50 ms, the last one just now: the longest sleep
    assert idle_wait_s(10.0, 10.0, 0.050, poll, cap) == pytest.approx(cap)
    # 8 ms before the next one: a quarter of that; 1 ms before, and when late: the finest poll
    assert idle_wait_s(10.042, 10.0, 0.050, poll, cap) == pytest.approx(0.002)
    assert idle_wait_s(10.049, 10.0, 0.050, poll, cap) == poll
    assert idle_wait_s(10.080, 10.0, 0.050, poll, cap) == poll
    # a poll interval above the cap is kept (the user asked for it)
    assert idle_wait_s(10.0, 10.0, 0.050, 0.010, cap) == pytest.approx(0.010)


class _CountingCore:
    """Wraps a core and counts the looks at its buffer."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.looks = 0

    def getRemainingImageCount(self) -> int:
        self.looks += 1
        return int(self._core.getRemainingImageCount())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


def test_core_source_looks_at_the_buffer_less_often_once_it_knows_the_frame_rate() -> None:
    core, cam = sim_core(32, exposure_ms=40.0)
    counted = _CountingCore(core)
    src = CoreSource(counted, poll_interval_ms=0.5)
    sink = Collector()
    assert _run(src, sink, lambda: len(sink) >= 12, timeout_s=30.0) is None
    idx = [i.index for i in sink.infos]
    assert idx == list(range(len(idx)))  # every frame, in order
    gap = src._gap_s
    assert gap is not None and gap >= 0.030  # learnt from the camera (40 ms exposures)
    # a fixed 0.5 ms poll looks ~80 times per 40 ms frame; far fewer looks now, on any machine
    assert counted.looks < 40 * len(sink)


def test_core_source_counts_camera_side_overflow_as_gaps() -> None:
    core, _ = sim_core(128, exposure_ms=1.0)
    core.setCircularBufferMemoryFootprint(1)  # 1 MB: 32 frames of 128x128
    src = CoreSource(core)
    sink = Collector(first_delay_s=0.8)  # the core overwrites while the consumer sleeps
    assert _run(src, sink, lambda: len(sink) >= 60) is None
    idx = [i.index for i in sink.infos]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    gaps = idx[-1] + 1 - len(idx)
    assert gaps > 0, "the core's buffer should have overflowed"
    assert all(i.missed_reason == "camera" for i in sink.infos)


def test_core_source_follows_roi_and_binning_changes_mid_stream() -> None:
    core, _ = sim_core(64, exposure_ms=2.0)
    src = CoreSource(core)
    sink = Collector()
    with running_source(src, sink):
        assert wait_for(lambda: len(sink) >= 3)
        core.setROI(4, 8, 40, 20)
        assert wait_for(lambda: sink.infos[-1].roi == Roi(4, 8, 40, 20, 1))
        core.setProperty("Camera", "Binning", 2)
        assert wait_for(lambda: sink.infos[-1].roi.binning == 2)
    for f, info in zip(sink.frames, sink.infos):
        assert f.shape == info.roi.shape
    assert [i.index for i in sink.infos] == list(range(len(sink)))


def test_pause_and_resume_restart_the_sequence() -> None:
    core, _ = sim_core(64, exposure_ms=2.0)
    src = CoreSource(core)
    sink = Collector()
    with running_source(src, sink):
        assert wait_for(lambda: len(sink) >= 3)
        src.pause()
        assert not core.isSequenceRunning()
        n = len(sink)
        time.sleep(0.05)
        assert len(sink) == n  # nothing comes while paused
        core.setROI(0, 0, 16, 16)
        src.resume()
        assert wait_for(lambda: len(sink) >= n + 3)
    idx = [i.index for i in sink.infos]
    assert idx == list(range(len(idx)))  # numbering runs on across the restart
    assert sink.frames[-1].shape == (16, 16)


@pytest.mark.parametrize(("dtype", "bits"), [(np.uint8, "8-bit"), (np.uint32, "32-bit")])
def test_bad_pixel_type_is_refused_with_a_clear_message(dtype: Any, bits: str) -> None:
    core, _ = fake_core(dtype=dtype)
    with pytest.raises(SourceError, match=bits) as exc:
        check_pixel_type(core)
    assert "16-bit" in str(exc.value) and "PixelType" in str(exc.value)
    err = _run(CoreSource(core), Collector(), lambda: False, timeout_s=2.0)
    assert isinstance(err, SourceError) and bits in str(err)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_camera_error_mid_acquisition_ends_run_cleanly() -> None:
    core, _ = fake_core(fail_after=12)
    sink = Collector()
    err = _run(CoreSource(core), sink, lambda: False, timeout_s=5.0)
    assert isinstance(err, SourceError)
    assert "stopped acquiring by itself after 12 frames" in str(err)
    assert [i.index for i in sink.infos] == list(range(12))  # nothing already acquired is lost


class _EmptyOnce:
    """A core whose count says 1 once while its buffer is empty (the race the notes warn about)."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.lied = False
        self.raised = False

    def getRemainingImageCount(self) -> int:
        n = self._core.getRemainingImageCount()
        if n == 0 and not self.lied:
            self.lied = True
            return 1
        return n

    def popNextImageAndMD(self) -> Any:
        if self._core.getRemainingImageCount() == 0:
            self.raised = True
            raise IndexError("Circular buffer is empty.")
        return self._core.popNextImageAndMD()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


def test_pop_from_an_empty_buffer_after_the_count_is_handled() -> None:
    core, _ = sim_core(64, exposure_ms=5.0)
    wrapped = _EmptyOnce(core)
    src = CoreSource(wrapped)
    sink = Collector()
    assert _run(src, sink, lambda: len(sink) >= 5) is None
    assert wrapped.lied and wrapped.raised
    assert [i.index for i in sink.infos] == list(range(len(sink)))


def test_attached_source_sees_every_mda_frame_without_taking_them() -> None:
    core, _ = sim_core(64, exposure_ms=1.0)
    theirs: list[int] = []
    core.mda.events.frameReady.connect(lambda img, event, meta: theirs.append(event.index.get("t", -1)))
    src = AttachedSource(core)
    sink = Collector()
    with running_source(src, sink):
        assert src.attached.wait(5.0)
        core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 6}))
        assert wait_for(lambda: len(sink) >= 6), (len(sink), theirs, src.seen, src.describe())
    assert theirs == list(range(6))  # the other program got all its frames
    assert [i.index for i in sink.infos] == list(range(6))
    assert all(f.shape == (64, 64) for f in sink.frames)


def test_attached_source_peeks_live_acquisition_without_popping() -> None:
    core, _ = sim_core(64, exposure_ms=2.0)
    src = AttachedSource(core, poll_interval_ms=0.5)
    sink = Collector()
    with running_source(src, sink):
        assert src.attached.wait(5.0)
        core.startContinuousSequenceAcquisition(0)  # the "other program" runs live mode
        assert wait_for(lambda: len(sink) >= 20)
        core.stopSequenceAcquisition()
        assert wait_for(lambda: not core.isSequenceRunning())
    # the other program still has every frame: nothing was popped
    remaining = core.getRemainingImageCount()
    numbers = []
    while core.getRemainingImageCount():
        _, md = core.popNextImageAndMD()
        numbers.append(int(md["ImageNumber"]))
    assert numbers == list(range(remaining)) and remaining >= len(sink)
    idx = [i.index for i in sink.infos]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert src.seen == len(sink) and src.seen + src.not_seen == idx[-1] + 1
    # frames seen are the core's frames with those numbers
    assert all(i.missed_reason == "not-seen" for i in sink.infos)


class _CountingEvent(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_attached_source_does_not_poll_fast_while_nothing_acquires() -> None:
    core, _ = sim_core(64, exposure_ms=2.0)
    src = AttachedSource(core, poll_interval_ms=0.5)
    src._wake = wake = _CountingEvent()
    stop = _CountingEvent()
    sink = CallbackSink(Collector())
    t = threading.Thread(target=src.run, args=(sink, stop))
    t.start()
    try:
        assert src.attached.wait(5.0)
        t0, n0 = time.monotonic(), wake.waits + stop.waits
        time.sleep(0.3)  # nothing acquiring
        looks, idle_s = wake.waits + stop.waits - n0, time.monotonic() - t0
        # a 0.5 ms poll would look ~600 times; idle, it looks every IDLE_CHECK_S at most
        assert looks <= idle_s / IDLE_CHECK_S + 2, looks
        core.startContinuousSequenceAcquisition(0)  # a start wakes it: its frames are followed
        assert wait_for(lambda: src.seen >= 10)
        core.stopSequenceAcquisition()
    finally:
        stop.set()
        t.join(5.0)
    assert not t.is_alive()


def test_a_stale_look_at_the_buffer_is_not_taken_for_a_restarted_numbering() -> None:
    """The other program pops newer frames (through the tap) between the poller's look at the
    newest frame number and its check of it, so the number looked at is older than the last one
    placed. Taken for a restarted sequence, that counted the frames so far as not seen (it
    happened on a busy machine). Driven by hand here, one step at a time."""
    core, _ = sim_core(32, exposure_ms=1.0)
    src = AttachedSource(core)
    sink = Collector()
    with src._lock:  # what run() does on attaching
        src._sink = CallbackSink(sink)
        src._install_tap()
        src._attach_baseline()
    try:
        core.startSequenceAcquisition(30, 0, True)
        src._on_sequence_started()
        assert wait_for(lambda: core.getRemainingImageCount() == 30 and not core.isSequenceRunning())
        for _ in range(10):  # the other program pops 10 frames: placed through the tap
            core.popNextImageAndMD()
        assert src._seq_last == 9 and src.seen == 10
        real = src._newest_number
        looks = iter([6])  # the first look is stale; any look after it sees the buffer as it is
        src._newest_number = lambda: next(looks, None) or real()  # type: ignore[method-assign]
        src._peek()  # its look (6) is older than the last placed (9): it looks again, sees 29
        assert src.not_seen == 0 and src.seen == 30
        assert [i.truth_id for i in sink.infos] == list(range(30))
        assert [i.index for i in sink.infos] == list(range(30))
    finally:
        with src._lock:
            src._remove_tap()
            src._sink = None


@pytest.mark.parametrize("call", ["popNextImageAndMD", "popNextImage"])
def test_attached_source_follows_a_live_mode_already_running_and_popping(call: str) -> None:
    core, _ = sim_core(64, exposure_ms=2.0)
    src = AttachedSource(core, poll_interval_ms=0.5)
    other = OtherProgram(core, attached=src.attached, call=call).start()
    assert wait_for(lambda: len(other.popped) >= 10)  # running, its buffer kept empty by its pops
    sink = Collector()
    with running_source(src, sink):
        assert src.attached.wait(5.0)
        assert wait_for(lambda: len(sink) >= 40), (len(sink), src.describe())
        other.stop()
        assert wait_for(lambda: bool(sink.infos) and sink.infos[-1].truth_id == other.popped[-1][0])
    ids = [i.truth_id for i in sink.infos]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # every frame from the first one on
    # popped after the attach but not taken: only frames already waiting in its buffer then (its past)
    # (how many were waiting depends on the machine's load: the ones just before the first taken)
    missed = {sim for sim, attached in other.popped if attached} - set(ids)
    assert missed == set(range(ids[0] - len(missed), ids[0])), (missed, ids[0])
    assert ids[-1] == other.popped[-1][0]  # up to the other program's last frame
    assert src.seen == len(ids) and src.not_seen == 0
    assert [i.index for i in sink.infos] == list(range(len(ids)))
    assert core.popNextImage.__func__ is type(core).popNextImage  # the tap is gone after detach


def test_attached_source_counts_the_tail_of_a_sequence_popped_in_bursts() -> None:
    core, _ = sim_core(64, exposure_ms=2.0)
    src = AttachedSource(core, poll_interval_ms=0.5)
    sink = Collector()
    with running_source(src, sink):
        assert src.attached.wait(5.0)
        other = OtherProgram(core, burst=8, frames=80, attached=src.attached).start()
        other.stop()
        assert wait_for(lambda: len(sink) + src.not_seen >= 80)
    assert len(other.popped) == 80  # the other program got every frame
    assert src.seen + src.not_seen == 80  # and every one of them is accounted for here
    assert src.not_seen == 0 and [i.index for i in sink.infos] == list(range(80))


def test_attached_source_sees_pops_through_a_method_looked_up_before_it_attached() -> None:
    """``popNextImageAndMD`` bound before the attach still pops through ``popNextImageMD``: seen."""
    core, _ = sim_core(64, exposure_ms=2.0)
    src = AttachedSource(core, poll_interval_ms=50.0)  # a slow poll: the pops win
    sink = Collector()
    other = OtherProgram(_PreBound(core), frames=60)
    with running_source(src, sink):
        assert src.attached.wait(5.0)
        other.attached = src.attached
        other.start()
        other.stop()
        assert wait_for(lambda: len(sink) >= 60)
    assert len(other.popped) == 60
    assert src.seen == 60 and src.not_seen == 0
    assert [i.truth_id for i in sink.infos] == [sim for sim, _ in other.popped]


class _PreBound:
    """The other program's core, with ``popNextImageAndMD`` looked up before livedenoise attached."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.popNextImageAndMD = core.popNextImageAndMD

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)
