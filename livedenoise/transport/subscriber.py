"""Receive ``livedenoise/1`` messages: the reference client.

>>> from livedenoise.transport.subscriber import Subscriber
>>> with Subscriber("tcp://127.0.0.1:5555", topics=("raw", "denoised")) as sub:  # doctest: +SKIP
...     for msg in sub:
...         print(msg.topic, msg.header["frame"], msg.array.mean())

Any ZeroMQ client in any language can do the same: a SUB socket subscribed to the topic,
three frames per message (topic, JSON header, C-order array bytes; see :mod:`livedenoise.transport.protocol`).

A program receiving large frames at a high rate should call :func:`keep_freed_memory`
once (glibc only): libzmq allocates a buffer per message, and without it every 2048²
frame faults in fresh pages.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from livedenoise.transport.protocol import TOPICS, ProtocolError, decode
from livedenoise.transport.security import ClientSecurity, secure_client
from livedenoise.util.memory import keep_freed_memory

__all__ = ["Message", "Subscriber", "TopicStats", "keep_freed_memory"]

log = logging.getLogger("livedenoise")


class Message(NamedTuple):
    """One received message; ``array`` is read-only (copy it to modify it)."""

    topic: str
    header: dict[str, Any]
    array: np.ndarray


@dataclass
class TopicStats:
    """What one subscriber saw of one topic.

    ``gaps`` counts messages lost in transport (missing ``seq`` numbers), ``dropped`` is
    the publisher's own count of frames it did not restore, latency is ``now - t_acquired``
    (seconds) over the last ``window`` messages.
    """

    window: int = 1000
    frames: int = 0
    gaps: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    dropped: int = 0
    latencies_s: deque[float] = field(default_factory=deque)
    arrivals: deque[float] = field(default_factory=deque)

    def update(self, header: dict[str, Any], now: float) -> None:
        seq = int(header["seq"])
        if self.last_seq is None:
            self.first_seq = seq
        elif seq > self.last_seq + 1:
            self.gaps += seq - self.last_seq - 1
        self.last_seq = seq
        self.frames += 1
        self.dropped = int(header["dropped"])
        for q, v in ((self.latencies_s, now - float(header["t_acquired"])), (self.arrivals, now)):
            q.append(v)
            if len(q) > self.window:
                q.popleft()

    def fps(self, now: float | None = None, span_s: float = 1.0) -> float:
        """Messages per second over the last ``span_s`` seconds."""
        now = time.time() if now is None else now
        n = sum(1 for t in self.arrivals if now - t <= span_s)
        return n / span_s

    def latency_ms(self, q: float) -> float | None:
        """Latency percentile ``q`` (0-100) in milliseconds, None before any message."""
        if not self.latencies_s:
            return None
        return float(np.percentile(np.fromiter(self.latencies_s, float), q) * 1e3)

    def summary(self, now: float | None = None) -> dict[str, Any]:
        return {
            "fps": round(self.fps(now), 2),
            "frames": self.frames,
            "gaps": self.gaps,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "latency_p50_ms": _round(self.latency_ms(50)),
            "latency_p99_ms": _round(self.latency_ms(99)),
            "dropped": self.dropped,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


class Subscriber:
    """Connect to a livedenoise publisher and receive its messages.

    Parameters
    ----------
    endpoint
        The publisher's endpoint, e.g. ``tcp://127.0.0.1:5555``.
    topics
        Topics to receive (``raw``, ``denoised``, ``truth``).
    rcvhwm
        Messages queued here before the publisher starts dropping for this subscriber.
    security
        CURVE client keys (:class:`livedenoise.transport.security.ClientSecurity`) for a protected publisher.
    context
        A ``zmq.Context`` (default: the process-wide instance).
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = ("denoised",),
        *,
        rcvhwm: int = 20,
        security: ClientSecurity | None = None,
        context: Any = None,
    ) -> None:
        import zmq

        self.topics = tuple(topics)
        bad = [t for t in self.topics if t not in TOPICS]
        if bad or not self.topics:
            raise ValueError(f"topics must be some of {list(TOPICS)}, got {list(self.topics)}")
        self.endpoint = endpoint
        self._zmq = zmq
        ctx = context if context is not None else zmq.Context.instance()
        self._sock = sock = ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
            sock.setsockopt(zmq.LINGER, 0)
            if "[" in endpoint:
                sock.setsockopt(zmq.IPV6, 1)
            if security is not None:
                secure_client(sock, security)
            for t in self.topics:
                sock.setsockopt(zmq.SUBSCRIBE, t.encode("ascii"))
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(exc.errno, f"cannot connect to {endpoint}: {exc.strerror}") from None
        except BaseException:
            sock.close(0)
            raise
        self.stats = {t: TopicStats() for t in self.topics}
        self.malformed = 0

    def recv(self, timeout_s: float | None = None) -> Message | None:
        """The next message, or None after ``timeout_s`` seconds (None = wait forever).

        Messages that break the protocol are logged, counted in :attr:`malformed` and skipped.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(wait_ms):
                return None
            parts = self._sock.recv_multipart(copy=False)
            try:
                topic, header, array = decode(parts, copy=False)
                if topic not in self.stats:  # a longer topic that shares our prefix
                    continue
                self.stats[topic].update(header, time.time())
            except (ProtocolError, TypeError, ValueError) as exc:  # e.g. "seq": "x"
                self.malformed += 1
                log.warning("skipped a message from %s: %s", self.endpoint, exc)
                continue
            array.flags.writeable = False  # a view of the received buffer
            return Message(topic, header, array)

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.recv()
            if msg is not None:
                yield msg

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per-topic statistics (fps, frames, gaps, latency p50/p99 ms, publisher drops)."""
        now = time.time()
        return {t: s.summary(now) for t, s in self.stats.items()}

    def close(self) -> None:
        """Close the socket at once (nothing is left to send). Idempotent."""
        self._sock.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
