"""RingBuffer: slot reuse, exact drop counts, zero loss under block, order, resize, close."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from livedenoise.live.ringbuffer import RingBuffer


def _push(ring: RingBuffer, frame: int, value: int | None = None) -> None:
    slot = ring.claim(timeout_s=5.0)
    assert slot is not None
    slot.raw[:] = frame if value is None else value
    slot.frame = frame
    ring.commit(slot)


def test_slots_are_preallocated_and_reused() -> None:
    ring = RingBuffer(3, (8, 6))
    ids = set()
    for frame in range(20):
        _push(ring, frame)
        slot = ring.get(timeout_s=1.0)
        assert slot is not None and slot.frame == frame
        assert slot.raw.shape == (8, 6) and slot.raw.dtype == np.uint16
        assert slot.e.shape == (8, 6) and slot.e.dtype == np.float32
        ids.add((id(slot.raw), id(slot.e)))
        ring.release(slot)
    assert len(ids) <= 3  # no new arrays per frame
    assert ring.counters() == {"pushed": 20, "popped": 20, "dropped": 0, "queued": 0}


@pytest.mark.parametrize(
    ("slots", "frames", "held"), [(4, 10, False), (4, 10, True), (2, 7, True), (8, 8, False)]
)
def test_drop_oldest_counts_exactly(slots: int, frames: int, held: bool) -> None:
    drops: list[tuple[int, str]] = []
    ring = RingBuffer(slots, (4, 4), "drop-oldest", on_drop=lambda f, r: drops.append((f, r)))
    taken = None
    if held:  # the consumer holds one slot while the producer runs ahead
        _push(ring, 1000)
        taken = ring.get(timeout_s=1.0)
    for frame in range(frames):
        _push(ring, frame)
    capacity = slots - (1 if held else 0)
    expected_dropped = list(range(max(0, frames - capacity)))
    assert [f for f, _ in drops] == expected_dropped
    assert all(r == "ring-full" for _, r in drops)
    assert ring.dropped == len(expected_dropped)
    if taken is not None:
        ring.release(taken)
    got = []
    while (slot := ring.get(timeout_s=0.05)) is not None:
        got.append(slot.frame)
        assert int(slot.raw[0, 0]) == slot.frame  # the payload belongs to the frame
        ring.release(slot)
    assert got == list(range(frames - min(frames, capacity), frames))  # newest kept, in order


def test_block_loses_nothing_and_keeps_order() -> None:
    ring = RingBuffer(3, (16, 16), "block")
    n = 300
    received: list[int] = []

    def consume() -> None:
        while True:
            slot = ring.get(timeout_s=5.0)
            if slot is None:
                return
            assert np.all(slot.raw == slot.frame % 65536)
            if slot.frame % 50 == 0:
                time.sleep(0.01)  # a slow consumer now and then
            received.append(slot.frame)
            ring.release(slot)

    t = threading.Thread(target=consume)
    t.start()
    for frame in range(n):
        _push(ring, frame)
    assert ring.wait_empty(timeout_s=10.0)
    ring.close()
    t.join(5.0)
    assert not t.is_alive()
    assert received == list(range(n))
    assert ring.dropped == 0


def test_block_claim_times_out_when_full() -> None:
    ring = RingBuffer(2, (2, 2), "block")
    _push(ring, 0)
    _push(ring, 1)
    t0 = time.monotonic()
    assert ring.claim(timeout_s=0.1) is None
    assert time.monotonic() - t0 >= 0.09
    assert ring.dropped == 0


def test_close_wakes_waiting_threads() -> None:
    ring = RingBuffer(2, (2, 2), "block")
    _push(ring, 0)
    _push(ring, 1)
    results: dict[str, object] = {}
    producer = threading.Thread(target=lambda: results.setdefault("claim", ring.claim()))
    empty = RingBuffer(2, (2, 2))
    consumer = threading.Thread(target=lambda: results.setdefault("get", empty.get()))
    producer.start()
    consumer.start()
    time.sleep(0.05)
    ring.close()
    empty.close()
    producer.join(2.0)
    consumer.join(2.0)
    assert not producer.is_alive() and not consumer.is_alive()
    assert results == {"claim": None, "get": None}
    # closed but not empty: the consumer still drains what was committed
    assert ring.get(timeout_s=0.1).frame == 0  # type: ignore[union-attr]


def test_resize_drains_then_reallocates() -> None:
    ring = RingBuffer(4, (8, 8))
    _push(ring, 0)
    _push(ring, 1)
    done = threading.Event()

    def consume() -> None:
        for _ in range(2):
            slot = ring.get(timeout_s=2.0)
            assert slot is not None and slot.raw.shape == (8, 8)
            time.sleep(0.02)
            ring.release(slot)
        done.set()

    t = threading.Thread(target=consume)
    t.start()
    ring.resize((4, 6), timeout_s=5.0)
    assert done.is_set()  # both old frames were consumed before the resize
    t.join(2.0)
    assert ring.shape == (4, 6)
    _push(ring, 2)
    slot = ring.get(timeout_s=1.0)
    assert slot is not None and slot.raw.shape == (4, 6) and slot.e.shape == (4, 6)
    ring.release(slot)


def test_resize_times_out_if_consumer_never_drains() -> None:
    ring = RingBuffer(2, (2, 2))
    _push(ring, 0)
    with pytest.raises(TimeoutError, match="did not drain"):
        ring.resize((3, 3), timeout_s=0.05)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slots": 1, "shape": (2, 2)}, "at least 2 slots"),
        ({"slots": 2, "shape": (2, 2), "policy": "x"}, "policy"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RingBuffer(**kwargs)


def test_misuse_is_an_error() -> None:
    ring = RingBuffer(2, (2, 2))
    slot = ring.claim()
    with pytest.raises(RuntimeError, match="one producer"):
        ring.claim()
    ring.abort(slot)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not the slot claimed"):
        ring.commit(slot)  # type: ignore[arg-type]
