"""Publisher and Subscriber over real loopback sockets."""

from __future__ import annotations

import errno
import math
import stat
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")

from livedenoise.transport import publisher as publisher_mod
from livedenoise.transport.protocol import REQUIRED, encode_header, make_header
from livedenoise.transport.publisher import Publisher
from livedenoise.transport.security import (
    ClientSecurity,
    SecurityError,
    ServerSecurity,
    create_client_keys,
    is_loopback,
)
from livedenoise.transport.subscriber import Subscriber

ANY_PORT = "tcp://127.0.0.1:*"


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def closing() -> Iterator[list]:
    """Things to close at teardown (subscribers and publishers), in reverse order."""
    things: list = []
    yield things
    for t in reversed(things):
        t.close()


def _pub(ctx, closing, **kw) -> Publisher:
    p = Publisher(ANY_PORT, context=ctx, **kw)
    closing.append(p)
    return p


def _sub(ctx, closing, endpoint: str, topics=("denoised",), **kw) -> Subscriber:
    s = Subscriber(endpoint, topics, context=ctx, **kw)
    closing.append(s)
    return s


def _wait(cond, timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


def _send(pub: Publisher, topic: str, arr: np.ndarray, frame: int, **extra) -> bool:
    return pub.publish(
        topic,
        arr,
        frame=frame,
        exposure_ms=10.0,
        t_acquired=time.time(),
        dropped=frame // 10,
        camera="Camera",
        model="rln-test" if topic != "raw" else None,
        calibration="cal-1",
        **extra,
    )


def _recv_all(sub: Subscriber, n: int, timeout_s: float = 5.0) -> list:
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        m = sub.recv(0.1)
        if m is not None:
            out.append(m)
    return out


def test_headers_and_payloads_follow_the_protocol(ctx, closing) -> None:
    pub = _pub(ctx, closing, sndhwm=100)  # the burst below is sent before anything is read
    sub = _sub(ctx, closing, pub.endpoint, ("raw", "denoised"), rcvhwm=100)
    _wait(lambda: pub.has_subscribers("raw") and pub.has_subscribers("denoised"), what="subscriptions")
    raw = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    den = raw.astype(np.float32) / 3
    n = 20
    for i in range(n):
        assert _send(pub, "raw", raw, i)
        assert _send(pub, "denoised", den, i, roi=[0, 0, 48, 64])
    msgs = _recv_all(sub, 2 * n)
    assert len(msgs) == 2 * n
    for topic, dtype, ref in (("raw", "<u2", raw), ("denoised", "<f4", den)):
        got = [m for m in msgs if m.topic == topic]
        assert [m.header["seq"] for m in got] == list(range(n))
        assert [m.header["frame"] for m in got] == list(range(n))
        for m in got:
            h = m.header
            assert set(REQUIRED) <= set(h)
            assert h["protocol"] == "livedenoise/1" and h["stream"] == topic
            assert h["shape"] == [64, 48] and h["dtype"] == dtype
            assert h["units"] == ("adu" if topic == "raw" else "photoelectrons")
            assert isinstance(h["exposure_ms"], float) and isinstance(h["dropped"], int)
            assert h["t_acquired"] <= h["t_published"] <= time.time()
            assert h["camera"] == "Camera" and h["calibration"] == "cal-1"
            assert m.array.nbytes == math.prod(h["shape"]) * np.dtype(h["dtype"]).itemsize
            np.testing.assert_array_equal(m.array, ref)
        assert got[-1].header["dropped"] == (n - 1) // 10
    assert msgs[-1].header["roi"] == [0, 0, 48, 64]
    st = pub.stats()
    assert st["sent"] == {"raw": n, "denoised": n} and st["next_seq"]["raw"] == n
    s = sub.summary()["denoised"]
    assert s["frames"] == n and s["gaps"] == 0 and s["latency_p50_ms"] is not None


def test_wrong_dtype_raises_and_does_not_advance_seq(ctx, closing) -> None:
    pub = _pub(ctx, closing)
    with pytest.raises(ValueError, match="raw payload must be <u2"):
        _send(pub, "raw", np.zeros((8, 8), np.float32), 0)
    assert pub.stats()["next_seq"]["raw"] == 0


def test_several_subscribers_each_get_every_message(ctx, closing) -> None:
    pub = _pub(ctx, closing, sndhwm=100)
    subs = [_sub(ctx, closing, pub.endpoint, ("denoised",), rcvhwm=100) for _ in range(3)]
    arr = np.zeros((128, 128), np.float32)
    # each subscriber is connected once it receives a probe; then the real run starts
    for _ in range(200):
        _send(pub, "denoised", arr, -1)
        if all(s.recv(0.02) is not None for s in subs):
            break
    for s in subs:
        while s.recv(0.05) is not None:
            pass
    first = pub.stats()["next_seq"]["denoised"]
    for i in range(30):
        arr[:] = i
        _send(pub, "denoised", arr, i)
    for s in subs:
        got = _recv_all(s, 30)
        assert [m.header["seq"] for m in got] == list(range(first, first + 30))
        assert [float(m.array[5, 5]) for m in got] == list(range(30))


def test_stalled_subscriber_does_not_slow_publishing_and_loses_only_its_own(ctx, closing) -> None:
    pub = _pub(ctx, closing, sndhwm=40)
    stalled = _sub(ctx, closing, pub.endpoint, ("denoised",), rcvhwm=1)
    active = _sub(ctx, closing, pub.endpoint, ("denoised",), rcvhwm=40)
    frame = np.ones((512, 512), np.float32)  # 1 MiB
    # both connected: each has received a probe
    probed = {id(stalled): False, id(active): False}
    for _ in range(400):
        _send(pub, "denoised", frame, -1)
        for s in (stalled, active):
            probed[id(s)] |= s.recv(0.01) is not None
        if all(probed.values()):
            break
    assert all(probed.values())
    for s in (stalled, active):
        while s.recv(0.05) is not None:
            pass
    got: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set() or active._sock.poll(0):
            m = active.recv(0.05)
            if m is not None:
                got.append(m.header["seq"])

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    n = 240  # 240 MiB; the stalled subscriber can hold about 40 + 1 + socket buffers
    first = pub.stats()["next_seq"]["denoised"]
    slowest = 0.0
    t0 = time.monotonic()
    for i in range(n):
        # pace by the active reader only (never by the stalled one), so the active one never overflows
        _wait(lambda i=i: len(got) >= i - 20, 10.0, "active reader")
        t = time.perf_counter()
        _send(pub, "denoised", frame, i)
        slowest = max(slowest, time.perf_counter() - t)
    elapsed = time.monotonic() - t0
    _wait(lambda: len(got) >= n, 10.0, "active subscriber to get all frames")
    done.set()
    th.join(5)
    assert got == list(range(first, first + n)), "the active subscriber lost messages"
    assert elapsed < 20.0 and slowest < 1.0, (elapsed, slowest)
    # the stalled subscriber now reads: it kept some frames and lost the rest ...
    seen = []
    while (m := stalled.recv(0.3)) is not None:
        seen.append(m.header["seq"])
    assert 0 < len(seen) < n and seen == list(range(first, first + len(seen)))
    # ... which it sees as a seq gap once the stream reaches it again
    for i in range(3):
        _send(pub, "denoised", frame, n + i)
    seen += [m.header["seq"] for m in _recv_all(stalled, 3)]
    assert seen[-3:] == [first + n, first + n + 1, first + n + 2]
    assert stalled.stats["denoised"].gaps == n - (len(seen) - 3)


def test_late_joiner_starts_at_a_later_seq(ctx, closing) -> None:
    pub = _pub(ctx, closing, sndhwm=100)
    early = _sub(ctx, closing, pub.endpoint, ("raw",), rcvhwm=100)
    _wait(lambda: pub.has_subscribers("raw"), what="subscription")
    arr = np.zeros((32, 32), np.uint16)
    for i in range(10):
        _send(pub, "raw", arr, i)
    assert len(_recv_all(early, 10)) == 10
    late = _sub(ctx, closing, pub.endpoint, ("raw",), rcvhwm=100)
    i = 10
    first = None
    while first is None and i < 500:
        _send(pub, "raw", arr, i)
        i += 1
        m = late.recv(0.01)
        first = None if m is None else m.header["seq"]
    assert first is not None and first >= 10
    for j in range(5):
        _send(pub, "raw", arr, i + j)
    rest = [m.header["seq"] for m in _recv_all(late, 100, timeout_s=0.5)]
    assert rest == list(range(first + 1, i + 5))
    assert late.stats["raw"].gaps == 0 and late.stats["raw"].first_seq == first


@pytest.mark.parametrize("shape", [(64, 64), (512, 512)], ids=["small-copying", "large-pool"])
def test_caller_may_overwrite_its_array_at_once(ctx, closing, shape) -> None:
    pub = _pub(ctx, closing, pool_size=2, sndhwm=100)
    sub = _sub(ctx, closing, pub.endpoint, ("denoised",), rcvhwm=100)
    _wait(lambda: pub.has_subscribers("denoised"), what="subscription")
    slot = np.empty(shape, np.float32)  # one reused buffer, like a ring-buffer slot
    n = 40
    for i in range(n):
        slot[:] = i
        _send(pub, "denoised", slot, i)
        slot[:] = -1.0  # overwritten while ZeroMQ may still be sending
    got = _recv_all(sub, n)
    assert len(got) == n
    for i, m in enumerate(got):
        assert m.array.min() == m.array.max() == i
    st = pub.stats()
    if shape == (512, 512):  # zero-copy from the pool (buffers reused once ZeroMQ released them)
        assert st["zero_copy_sends"] > 0 and st["zero_copy_sends"] + st["copied_sends"] == n
    else:  # small frames: plain copying sends
        assert st["zero_copy_sends"] == st["copied_sends"] == 0


def test_pool_exhausted_falls_back_to_copying_send(ctx, closing, monkeypatch) -> None:
    # ZeroMQ holds each zero-copy buffer until the I/O thread has written it out; how long that
    # takes depends on the machine's load, so hold it for certain: a tracked buffer stays busy
    monkeypatch.setattr(publisher_mod, "_done", lambda entry: entry[1] is None)
    pub = _pub(ctx, closing, pool_size=1, sndhwm=50)
    sub = _sub(ctx, closing, pub.endpoint, ("denoised",), rcvhwm=50)  # connected, not reading yet
    _wait(lambda: pub.has_subscribers("denoised"), what="subscription")
    slot = np.empty((256, 256), np.float32)
    for i in range(20):
        slot[:] = i
        _send(pub, "denoised", slot, i)
        slot[:] = -1
    assert pub.stats()["copied_sends"] > 0
    got = _recv_all(sub, 20)
    assert [float(m.array.mean()) for m in got] == [float(i) for i in range(20)]


def test_topics_without_subscribers_are_skipped(ctx, closing) -> None:
    pub = _pub(ctx, closing)
    big = np.zeros((256, 256), np.float32)
    assert not _send(pub, "denoised", big, 0)  # nobody at all
    sub = _sub(ctx, closing, pub.endpoint, ("raw",))
    _wait(lambda: pub.has_subscribers("raw"), what="subscription")
    assert _send(pub, "raw", np.zeros((8, 8), np.uint16), 1)
    assert not _send(pub, "denoised", big, 1)
    assert not pub.has_subscribers("denoised")
    st = pub.stats()
    assert st["skipped_no_subscriber"] == {"denoised": 2} and st["sent"] == {"raw": 1}
    assert st["next_seq"]["denoised"] == 2  # skipped messages still take a number
    assert sub.recv(2).topic == "raw"
    sub.close()
    _wait(lambda: not pub.has_subscribers("raw"), what="unsubscription on disconnect")


def test_port_in_use_names_the_endpoint(ctx, closing) -> None:
    pub = _pub(ctx, closing)
    with pytest.raises(OSError, match="already in use") as info:
        Publisher(pub.endpoint, context=ctx)
    assert info.value.errno == errno.EADDRINUSE
    assert pub.endpoint in str(info.value) and "--pub tcp://127.0.0.1:" in str(info.value)


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.1.2.3:*", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/x", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.5:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://127.0.0.1.evil.com:5555", False),
    ],
)
def test_is_loopback(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


def test_non_loopback_bind_needs_the_explicit_choice(ctx, tmp_path) -> None:
    for security in (None, ServerSecurity(tmp_path / "keys")):
        with pytest.raises(SecurityError, match="--allow-remote"):
            Publisher("tcp://0.0.0.0:*", context=ctx, security=security)


def test_curve_admits_authorised_clients_only(ctx, closing, tmp_path) -> None:
    keys = tmp_path / "server-keys"
    pub = _pub(ctx, closing, security=ServerSecurity(keys))  # forced on, on loopback
    assert stat.S_IMODE((keys / "server.key_secret").stat().st_mode) == 0o600
    good_pub, good_sec = create_client_keys(tmp_path / "viewer", "viewer", authorize_in=keys)
    assert stat.S_IMODE(good_sec.stat().st_mode) == 0o600
    assert (keys / "authorized" / "viewer.key").exists()
    _, bad_sec = create_client_keys(tmp_path / "stranger", "stranger")
    server_key = keys / "server.key"
    good = _sub(ctx, closing, pub.endpoint, ("raw",), security=ClientSecurity(good_sec, server_key))
    bad = _sub(ctx, closing, pub.endpoint, ("raw",), security=ClientSecurity(bad_sec, server_key))
    plain = _sub(ctx, closing, pub.endpoint, ("raw",))
    arr = np.zeros((16, 16), np.uint16)
    got = 0
    deadline = time.monotonic() + 5
    while got < 5 and time.monotonic() < deadline:
        _send(pub, "raw", arr, 0)
        got += good.recv(0.02) is not None
    assert got == 5
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:
        _send(pub, "raw", arr, 1)
        assert bad.recv(0.02) is None and plain.recv(0.0) is None


def test_subscriber_skips_malformed_messages(ctx, closing) -> None:
    raw_pub = ctx.socket(zmq.PUB)  # a foreign publisher; closed by the ctx fixture (linger 0)
    port = raw_pub.bind_to_random_port("tcp://127.0.0.1")
    sub = _sub(ctx, closing, f"tcp://127.0.0.1:{port}", ("denoised",))
    arr = np.ones((4, 4), np.float32)
    h = make_header(
        "denoised",
        frame=0,
        seq=0,
        array=arr,
        exposure_ms=1,
        t_acquired=time.time(),
        t_published=0,
        dropped=0,
        camera=None,
        model=None,
        calibration=None,
    )
    bad_seq = {**h, "seq": "zero"}
    msg = None
    deadline = time.monotonic() + 5
    while msg is None and time.monotonic() < deadline:
        raw_pub.send_multipart([b"denoised", b"{broken", arr.tobytes()])
        raw_pub.send_multipart([b"denoised", encode_header(bad_seq), arr.tobytes()])
        raw_pub.send_multipart([b"denoised", encode_header(h), arr.tobytes()])
        msg = sub.recv(0.05)
    assert msg is not None and msg.header["seq"] == 0 and not msg.array.flags.writeable
    assert sub.malformed >= 2


def test_borrowed_buffer_is_sent_without_copy_and_never_lent_twice(ctx, closing) -> None:
    pub = _pub(ctx, closing, pool_size=2, sndhwm=100)
    sub = _sub(ctx, closing, pub.endpoint, rcvhwm=100)
    _wait(lambda: pub.has_subscribers("denoised"), what="subscription")
    shape = (256, 256)  # 256 KiB: above the zero-copy threshold
    a = pub.borrow("denoised", shape, np.float32)
    b = pub.borrow("denoised", shape, np.float32)
    assert a is not None and b is not None and a is not b
    assert pub.borrow("denoised", shape, np.float32) is None  # both lent: none left
    pub.give_back("denoised", b)  # not published: returned to the pool ...
    assert pub.borrow("denoised", shape, np.float32) is b  # ... and lent again (a is still out)
    a[...] = 7.0
    assert _send(pub, "denoised", a, 0)
    (msg,) = _recv_all(sub, 1)
    assert float(msg.array.mean()) == 7.0
    assert pub.stats()["zero_copy_sends"] == 1 and pub.stats()["copied_sends"] == 0
    assert pub.borrow("raw", (4, 4), np.uint16) is None  # small frames: use your own array


def test_messages_sent_up_the_frame_socket_are_drained_off_the_publishing_thread(ctx, closing) -> None:
    pub = _pub(ctx, closing)
    flood = ctx.socket(zmq.XSUB)  # a client that sends non-subscription messages up the PUB socket
    flood.linger = 0
    flood.sndhwm = 0  # queue everything on the client's side instead of dropping at its high-water mark
    flood.connect(pub.endpoint)
    try:
        flood.send(b"\x01denoised")  # it also subscribes, like a viewer would
        n = 20_000
        for i in range(n):
            flood.send(b"not a subscription %d" % i)
        # nobody calls publish(): the upstream thread alone reads the messages and the subscription
        _wait(lambda: pub.stats()["upstream_ignored"] == n, 20.0, "the upstream messages to be drained")
        assert pub.has_subscribers("denoised") and not pub.has_subscribers("raw")
        assert pub.stats()["subscriptions"] == ["denoised"]
        # frames still go out to that client, and a real subscriber joins as usual
        assert _send(pub, "denoised", np.ones((4, 4), np.float32), frame=0)
        assert flood.poll(5000) and flood.recv_multipart()[0] == b"denoised"
        sub = _sub(ctx, closing, pub.endpoint, topics=("raw",))
        _wait(lambda: pub.has_subscribers("raw"), what="the raw subscription")
        assert _send(pub, "raw", np.ones((4, 4), np.uint16), frame=1)
        assert _recv_all(sub, 1)[0].header["frame"] == 1
        flood.send(b"\x00denoised")  # unsubscribes
        _wait(lambda: not pub.has_subscribers("denoised"), what="the unsubscription")
    finally:
        flood.close(0)
