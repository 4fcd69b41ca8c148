"""Frame buffers made resident before the live path needs them (livedenoise.util.memory)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from _pipeline_helpers import fake_core, running_source, wait_for

from livedenoise.live import sources
from livedenoise.live.ringbuffer import RingBuffer
from livedenoise.live.sources import CoreSource
from livedenoise.util import memory as _memory


def _resident_pages(a: np.ndarray) -> int:
    """Pages of ``a`` the process has faulted in (Rss of the mappings it spans, /proc/self/smaps)."""
    start, end = a.ctypes.data, a.ctypes.data + a.nbytes
    rss_kb = 0
    overlaps = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                overlaps = lo < end and hi > start
            elif overlaps and line.startswith("Rss:"):
                rss_kb += int(line.split()[1])
    return rss_kb * 1024 // _memory.PAGE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux only)")
def test_prefault_makes_a_fresh_mapping_resident() -> None:
    import mmap

    # a mapping of its own, never touched (np.empty may be served from a heap that earlier tests
    # left resident once keep_freed_memory() has run in this process)
    m = mmap.mmap(-1, 64 * 1024 * 1024)
    a = np.frombuffer(m, np.uint8)
    before = _resident_pages(a)
    _memory.prefault(a)
    after = _resident_pages(a)
    del a
    m.close()
    assert before < after // 2
    assert after >= 64 * 1024 * 1024 // _memory.PAGE


def test_prefault_keeps_zeros_and_skips_what_it_cannot_touch() -> None:
    a = np.zeros((300, 700), np.float32)
    _memory.prefault(a)
    assert not a.any()  # what was zero stays zero
    ro = np.zeros(10_000, np.uint8)
    ro.flags.writeable = False
    assert _memory.prefault(ro) == 0.0
    strided = np.zeros((100, 100), np.uint16)[:, ::2]
    assert _memory.prefault(strided) == 0.0


def test_keep_freed_memory_is_idempotent_and_reports_glibc() -> None:
    first = _memory.keep_freed_memory()
    assert _memory.keep_freed_memory() is first
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert first is True


def test_ring_slots_are_resident_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[int] = []
    monkeypatch.setattr("livedenoise.live.ringbuffer.prefault", lambda a: touched.append(a.nbytes) or 0.0)
    RingBuffer(3, (64, 48))
    assert sorted(touched) == sorted([64 * 48 * 2, 64 * 48 * 4] * 3)


def _run_briefly(src: CoreSource, frames: int = 5) -> list[int]:
    got: list[int] = []
    with running_source(src, lambda raw, info: got.append(info.index)):
        wait_for(lambda: len(got) >= frames, 10.0)
    return got


def test_core_sequence_buffer_is_made_resident_once_for_large_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[np.ndarray] = []
    monkeypatch.setattr(sources, "prefault", lambda a: calls.append(a) or 0.0)
    core, _ = fake_core(shape=(1024, 1024))  # 2 MiB frames
    core.setCircularBufferMemoryFootprint(16)
    src = CoreSource(core)
    got = _run_briefly(src)
    assert got == list(range(len(got)))  # every frame, in order, after the buffer was touched
    assert len(calls) == 1 and calls[0] is core._seq_buffer._pool
    _run_briefly(src)  # the same buffer again: not touched twice
    assert len(calls) == 1
    core.setCircularBufferMemoryFootprint(8)  # a new buffer is made resident in turn
    _run_briefly(src)
    assert len(calls) == 2 and calls[1] is core._seq_buffer._pool


def test_small_frames_leave_the_core_buffer_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[np.ndarray] = []
    monkeypatch.setattr(sources, "prefault", lambda a: calls.append(a) or 0.0)
    core, _ = fake_core(shape=(64, 64))
    _run_briefly(CoreSource(core))
    assert calls == []
