"""Publish frames as ``livedenoise/1`` messages on a ZeroMQ XPUB socket.

Every message is ``[topic, header, payload]`` (see :mod:`livedenoise.transport.protocol`,
the protocol's reference). The publisher

- never waits for a subscriber: each subscriber has its own queue of ``sndhwm`` messages,
  and a subscriber whose queue is full loses messages (visible to it as ``seq`` gaps)
  while the others and the caller go on at full speed;
- copies the caller's array into a buffer it owns before ZeroMQ sees it, so the caller may
  overwrite its array as soon as :meth:`Publisher.publish` returns. Large frames go out
  from a small pool of preallocated buffers (zero-copy for ZeroMQ; a buffer is reused only
  when ZeroMQ reports it done with it); when every buffer is still in flight the frame is
  sent with an ordinary copying send instead, never by waiting;
- skips topics nobody subscribes to (an XPUB socket sees the subscriptions), so a 16 MiB
  ``denoised`` frame costs nothing when only ``raw`` is watched;
- reads what subscribers send up the socket (subscriptions, and any other message a client
  may send, which is ignored and counted as ``upstream_ignored``) on a thread of its own,
  never on the publishing thread: a client flooding the frame socket cannot slow the
  pipeline's worker.

``seq`` counts the messages offered on a topic, sent or skipped, so a subscriber that
stays subscribed sees contiguous numbers and one that joins late starts at a later one.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from livedenoise.transport.protocol import TOPICS, encode_header, make_header
from livedenoise.transport.security import ServerSecurity, bind_server, check_bind, release_server

__all__ = ["Publisher"]

log = logging.getLogger("livedenoise")

ZERO_COPY_MIN_BYTES = 64 * 1024  # below this a copying send is cheaper than tracking a buffer
UPSTREAM_BATCH = 64  # upstream messages read per hold of the socket lock
UPSTREAM_WAIT_S = 0.02  # the upstream thread's longest sleep between checks


class _BufferPool:
    """Publisher-owned send buffers for one topic; one is free when ZeroMQ is done with it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: list[list[Any]] = []  # [array, tracker | None | _LENT]

    def acquire(self, shape: tuple[int, ...], dtype: np.dtype) -> list[Any] | None:
        # forget buffers of another shape (ROI change) once ZeroMQ has released them
        self.entries = [
            e for e in self.entries if (e[0].shape == shape and e[0].dtype == dtype) or not _done(e)
        ]
        for e in self.entries:
            if e[0].shape == shape and e[0].dtype == dtype and _done(e):
                return e
        if len(self.entries) < self.size:
            e = [np.empty(shape, dtype), None]
            self.entries.append(e)
            return e
        return None

    def lent(self, array: np.ndarray) -> list[Any] | None:
        """The entry of ``array`` if it is a buffer lent out by :meth:`Publisher.borrow`."""
        for e in self.entries:
            if e[0] is array and e[1] is _LENT:
                return e
        return None


class _Lent:
    """Tracker stand-in of a buffer lent to the caller: not free until published or given back."""

    done = False


_LENT = _Lent()


def _done(entry: list[Any]) -> bool:
    return entry[1] is None or entry[1].done


class Publisher:
    """ZeroMQ publisher of ``livedenoise/1`` messages.

    Parameters
    ----------
    endpoint
        Where to bind (``tcp://127.0.0.1:5555`` by default; ``tcp://127.0.0.1:*`` picks a
        free port, see :attr:`endpoint`). Non-loopback endpoints need
        ``security=ServerSecurity(key_dir, allow_remote=True)``.
    sndhwm
        Messages queued per subscriber before that subscriber starts losing messages.
        Memory bound: about ``sndhwm`` frames per topic per stalled subscriber.
    security
        CURVE keys (:class:`livedenoise.transport.security.ServerSecurity`); ``None`` = loopback only,
        no keys.
    context
        A ``zmq.Context`` (default: the process-wide instance).
    skip_unsubscribed
        Do not build or copy messages for topics without a subscriber.
    pool_size
        Send buffers per topic for zero-copy sends of large frames.
    linger_s
        How long :meth:`close` lets queued messages go out.

    Raises
    ------
    OSError
        The port is in use (the message names the endpoint and what to do).
    livedenoise.transport.security.SecurityError
        A non-loopback endpoint without the explicit opt-in.
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5555",
        *,
        sndhwm: int = 20,
        security: ServerSecurity | None = None,
        context: Any = None,
        skip_unsubscribed: bool = True,
        pool_size: int = 6,
        linger_s: float = 0.2,
    ) -> None:
        import zmq

        if sndhwm < 1:
            raise ValueError(f"sndhwm must be >= 1 message, got {sndhwm}")
        check_bind(endpoint, security)
        self._zmq = zmq
        self._ctx = context if context is not None else zmq.Context.instance()
        self._security = security
        self._linger_ms = int(linger_s * 1000)
        self._skip = skip_unsubscribed
        self._pool_size = pool_size
        sock = self._ctx.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.SNDHWM, sndhwm)
            sock.setsockopt(zmq.LINGER, self._linger_ms)
            self.endpoint = bind_server(sock, endpoint, security=security, context=self._ctx, option="--pub")
        except BaseException:
            sock.close(0)
            raise
        self._sock = sock
        self._lock = threading.Lock()  # the socket is used by the publishing and the upstream thread
        self._subs: frozenset[bytes] = frozenset()
        self._upstream_ignored = 0
        self._seq: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self._pools = {t: _BufferPool(pool_size) for t in TOPICS}
        self._sent: Counter[str] = Counter()
        self._skipped: Counter[str] = Counter()
        self._bytes = 0
        self._copied_sends = 0
        self._zero_copy_sends = 0
        self._closed = False
        self._fd = sock.getsockopt(zmq.FD)
        self._upstream = threading.Thread(
            target=self._read_upstream, name="livedenoise-pub-upstream", daemon=True
        )
        self._upstream.start()
        log.info("publishing %s on %s", "/".join(TOPICS), self.endpoint)

    # ------------------------------------------------------------------ subscriptions
    def _read_upstream(self) -> None:
        """Thread: read subscriptions (and ignore anything else) sent up the socket."""
        zmq = self._zmq
        while not self._closed:
            n = 0
            with self._lock:
                if self._closed:
                    break
                subs = None
                try:
                    while n < UPSTREAM_BATCH and self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        msg = self._sock.recv(zmq.NOBLOCK)
                        n += 1
                        if msg[:1] == b"\x01":
                            subs = set(self._subs if subs is None else subs) | {msg[1:]}
                        elif msg[:1] == b"\x00":
                            subs = set(self._subs if subs is None else subs) - {msg[1:]}
                        else:
                            self._upstream_ignored += 1
                except zmq.Again:
                    pass
                except zmq.ZMQError as exc:
                    if self._closed:
                        break
                    log.warning("publisher: reading from subscribers failed: %s", exc)
                if subs is not None:
                    self._subs = frozenset(subs)
            if n < UPSTREAM_BATCH:
                try:  # ZeroMQ signals this fd when the socket has work; the timeout covers missed edges
                    select.select([self._fd], [], [], UPSTREAM_WAIT_S)
                except (OSError, ValueError):
                    time.sleep(UPSTREAM_WAIT_S)
            else:
                time.sleep(0)  # let the publishing thread take the lock between batches

    def has_subscribers(self, topic: str) -> bool:
        """True if some subscriber currently wants ``topic`` (always True without skipping).

        Reads the subscriptions the upstream thread has seen; touches no socket.
        """
        if not self._skip:
            return True
        t = topic.encode("ascii")
        return any(t.startswith(p) for p in self._subs)

    # ------------------------------------------------------------------ publishing
    def borrow(self, topic: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
        """A send buffer of ``topic`` to fill in place and pass to :meth:`publish` uncopied.

        Saves one copy of a large frame (16 MiB at 2048² float32). Returns ``None`` when
        nobody subscribes to ``topic``, the frame is small, or every buffer is in flight:
        then use your own array. A borrowed buffer that is not published must be returned
        with :meth:`give_back`. Call from the publishing thread.
        """
        dtype = np.dtype(dtype)
        if topic not in self._pools or int(np.prod(shape)) * dtype.itemsize < ZERO_COPY_MIN_BYTES:
            return None
        if not self.has_subscribers(topic):
            return None
        entry = self._pools[topic].acquire(tuple(shape), dtype)
        if entry is None:
            return None
        entry[1] = _LENT
        lent: np.ndarray = entry[0]
        return lent

    def give_back(self, topic: str, array: np.ndarray) -> None:
        """Return a buffer from :meth:`borrow` that was not published."""
        entry = self._pools[topic].lent(array) if topic in self._pools else None
        if entry is not None:
            entry[1] = None

    def publish(
        self,
        topic: str,
        array: np.ndarray,
        *,
        frame: int,
        exposure_ms: float,
        t_acquired: float,
        dropped: int,
        camera: str | None,
        model: str | None,
        calibration: str | None,
        **extra: Any,
    ) -> bool:
        """Send one frame; return True if sent, False if skipped (nobody subscribes to ``topic``).

        Never blocks. ``array`` must be ``uint16`` for ``raw`` and ``float32`` for ``denoised``
        and ``truth``; it is copied, so the caller may reuse it at once. Call from one thread.

        Raises
        ------
        livedenoise.transport.protocol.ProtocolError
            Unknown topic or wrong dtype (nothing is sent and ``seq`` does not advance).
        """
        if self._closed:
            raise RuntimeError("publish() on a closed Publisher")
        array = np.asarray(array)
        header = make_header(
            topic,
            frame=frame,
            seq=self._seq.get(topic, 0),
            array=array,
            exposure_ms=exposure_ms,
            t_acquired=t_acquired,
            t_published=0.0,
            dropped=dropped,
            camera=camera,
            model=model,
            calibration=calibration,
            **extra,
        )
        self._seq[topic] += 1
        if not self.has_subscribers(topic):
            self._skipped[topic] += 1
            self.give_back(topic, array)
            return False
        zmq = self._zmq
        entry = self._pools[topic].lent(array)  # a borrowed buffer: already ours, no copy
        if entry is None and array.nbytes >= ZERO_COPY_MIN_BYTES:
            entry = self._pools[topic].acquire(array.shape, array.dtype)
            if entry is not None:
                np.copyto(entry[0], array, casting="no")
        if entry is not None:
            payload: Any = entry[0]
        else:
            if array.nbytes >= ZERO_COPY_MIN_BYTES:
                self._copied_sends += 1
            payload = np.ascontiguousarray(array)
        header["t_published"] = time.time()
        head = encode_header(header)
        with self._lock:
            self._sock.send(topic.encode("ascii"), zmq.SNDMORE | zmq.NOBLOCK)
            self._sock.send(head, zmq.SNDMORE | zmq.NOBLOCK)
            if entry is not None:
                entry[1] = self._sock.send(payload, zmq.NOBLOCK, copy=False, track=True)
            else:
                self._sock.send(payload, zmq.NOBLOCK, copy=True)
        if entry is not None:
            self._zero_copy_sends += 1
        self._sent[topic] += 1
        self._bytes += array.nbytes
        return True

    def stats(self) -> dict[str, Any]:
        """Counters: messages sent and skipped per topic, payload bytes, how large frames left, subscriptions.

        ``zero_copy_sends`` went out from the publisher's buffer pool; ``copied_sends`` are
        large frames sent with a copying send because every pool buffer was still in flight
        (a stalled subscriber holds up to ``sndhwm`` of them). ``upstream_ignored`` counts
        messages subscribers sent up the socket that were not subscriptions.
        """
        return {
            "endpoint": self.endpoint,
            "sent": dict(self._sent),
            "skipped_no_subscriber": dict(self._skipped),
            "bytes": self._bytes,
            "zero_copy_sends": self._zero_copy_sends,
            "copied_sends": self._copied_sends,
            "next_seq": dict(self._seq),
            "subscriptions": sorted(p.decode("ascii", "replace") for p in self._subs),
            "upstream_ignored": self._upstream_ignored,
        }

    def close(self) -> None:
        """Close the socket, giving queued messages up to ``linger_s`` to leave. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._upstream.join(2.0)
        with self._lock:
            self._sock.close(self._linger_ms)
        if self._security is not None:
            release_server(self._ctx)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
