"""The viewer's side of the stream, without any GUI: newest frames, rates, photoelectrons, contrast.

:class:`FrameFeed` receives on its own thread and keeps only the newest few messages of each
topic (a small receive queue: the publisher drops for a slow viewer, never the other way round).
The GUI asks it, at its own pace, for the newest camera frame that every live topic has
(:meth:`FrameFeed.take`), so raw and restored always show the same frame.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livedenoise.transport.protocol import TOPICS
from livedenoise.transport.security import ClientSecurity
from livedenoise.transport.subscriber import Message, Subscriber

__all__ = [
    "FeedStatus",
    "FrameFeed",
    "Snapshot",
    "format_info",
    "raw_to_photoelectrons",
    "shared_limits",
]

log = logging.getLogger("livedenoise")

KEEP_PER_TOPIC = 8  # messages kept per topic to pair raw/denoised/truth by frame number
LIVE_S = 1.5  # a topic is "live" if a message arrived within this many seconds


@dataclass
class Snapshot:
    """One camera frame, as every live topic published it."""

    frame: int
    messages: dict[str, Message]
    fps: float
    latency_ms: float | None
    header: dict[str, Any]  # the denoised header if present (model, qc), else any


@dataclass
class FeedStatus:
    """What the feed has seen, for the window's status line."""

    endpoint: str
    state: str  # "waiting", "live", "stalled"
    received: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    restarts: int = 0
    silent_s: float = 0.0

    def message(self) -> str:
        if self.state == "waiting":
            return (
                f"nothing from {self.endpoint} for {self.silent_s:.0f} s: is `livedenoise demo` or "
                "`livedenoise serve` running there (see --endpoint)?"
            )
        if self.state == "stalled":
            return (
                f"no frame from {self.endpoint} for {self.silent_s:.0f} s: the daemon stopped or is paused; "
                "waiting for it (it reconnects by itself)"
            )
        return f"receiving from {self.endpoint}"


class FrameFeed:
    """Receive ``topics`` from ``endpoint`` on a thread; keep the newest few frames of each.

    Parameters
    ----------
    endpoint
        The publisher, e.g. ``tcp://127.0.0.1:5555``. ZeroMQ connects (and reconnects after a
        daemon restart) by itself; nothing here waits for it.
    topics
        Topics to receive (``raw``, ``denoised``, ``truth``).
    rcvhwm
        Messages queued for this viewer before the publisher drops for it.
    security
        CURVE client keys for a publisher bound with ``--allow-remote``.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = TOPICS,
        *,
        rcvhwm: int = 4,
        security: ClientSecurity | None = None,
    ) -> None:
        import zmq

        self.endpoint = endpoint
        self.topics = tuple(topics)
        self._context = zmq.Context()
        self._sub = Subscriber(endpoint, self.topics, rcvhwm=rcvhwm, security=security, context=self._context)
        self._lock = threading.Lock()
        self._latest: dict[str, OrderedDict[int, Message]] = {t: OrderedDict() for t in self.topics}
        self._last_arrival: dict[str, float] = {}
        self._last_seq: dict[str, tuple[int, int]] = {}  # topic -> (seq, frame) of its last message
        self._arrivals: deque[float] = deque(maxlen=400)
        self._latencies: deque[float] = deque(maxlen=50)
        self._received = dict.fromkeys(self.topics, 0)
        self._taken: int | None = None
        self._restarts = 0
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="livedenoise-view-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                msg = self._sub.recv(0.1)
                if msg is None:
                    continue
                now_wall, now = time.time(), time.monotonic()
                topic, header = msg.topic, msg.header
                with self._lock:
                    seq, frame = int(header["seq"]), int(header["frame"])
                    last = self._last_seq.get(topic)
                    if last is not None and (seq < last[0] or frame < last[1]):
                        self._restarted(topic)
                    self._last_seq[topic] = (seq, frame)
                    frames = self._latest[topic]
                    frames[frame] = msg
                    while len(frames) > KEEP_PER_TOPIC:
                        frames.popitem(last=False)
                    self._last_arrival[topic] = now
                    self._received[topic] += 1
                    if topic == self._pace_topic():
                        self._arrivals.append(now)
                        self._latencies.append(now_wall - float(header["t_acquired"]))
        except Exception:  # the socket closed under us at shutdown, or a real fault: say it
            if not self._stop.is_set():
                log.exception("the viewer stopped receiving from %s", self.endpoint)

    def _restarted(self, topic: str) -> None:
        """A topic's seq or frame number went back: the daemon restarted. Forget the old run's frames."""
        self._restarts += 1
        log.info("%s restarted (%s counters went back); following the new stream", self.endpoint, topic)
        for frames in self._latest.values():
            frames.clear()
        self._last_seq.clear()
        self._taken = None

    def _pace_topic(self) -> str:
        return "denoised" if "denoised" in self.topics else self.topics[0]

    def live_topics(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            return [t for t in self.topics if now - self._last_arrival.get(t, -1e9) <= LIVE_S]

    def take(self) -> Snapshot | None:
        """The newest frame that every live topic has, once (None if there is nothing newer)."""
        now = time.monotonic()
        live = self.live_topics(now)
        with self._lock:
            if not live:
                return None
            common = set.intersection(*(set(self._latest[t]) for t in live))
            if common:
                frame = max(common)
                messages = {t: self._latest[t][frame] for t in live}
            else:  # no frame in common yet (a topic lags): show each topic's newest
                messages = {t: next(reversed(self._latest[t].values())) for t in live if self._latest[t]}
                frame = max(int(m.header["frame"]) for m in messages.values())
            if frame == self._taken:
                return None
            self._taken = frame
            arrivals = [t for t in self._arrivals if now - t <= 1.0]
            latency = float(np.median(self._latencies)) * 1e3 if self._latencies else None
        header = (messages.get("denoised") or next(iter(messages.values()))).header
        return Snapshot(frame, messages, float(len(arrivals)), latency, dict(header))

    def status(self) -> FeedStatus:
        now = time.monotonic()
        with self._lock:
            last = max(self._last_arrival.values(), default=None)
            received = dict(self._received)
            restarts = self._restarts
        malformed = self._sub.malformed
        if last is None:
            return FeedStatus(self.endpoint, "waiting", received, malformed, restarts, now - self._started)
        silent = now - last
        state = "live" if silent <= LIVE_S else "stalled"
        return FeedStatus(self.endpoint, state, received, malformed, restarts, silent)

    def close(self) -> None:
        """Stop the thread and close the socket (within ~0.2 s). Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._sub.close()
        with contextlib.suppress(Exception):
            self._context.term()

    def __enter__(self) -> FrameFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_to_photoelectrons(
    raw: np.ndarray, header: Mapping[str, Any], denoised: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """``raw`` ADU on the photoelectron scale of ``denoised``, and how it was converted.

    The daemon's raw headers carry the ROI's median calibration (``median_offset_adu``,
    ``median_gain_adu_per_e``): e⁻ ≈ (ADU − offset) / gain, good for display (the per-pixel maps
    differ by a few %). Without them (another publisher), offset and gain are fitted by least
    squares against the restored frame of the same camera frame. Without either, the ADU are
    returned as they are.
    """
    offset, gain = header.get("median_offset_adu"), header.get("median_gain_adu_per_e")
    if isinstance(offset, (int, float)) and isinstance(gain, (int, float)) and gain > 0:
        how = f"e⁻ = (ADU − {offset:.1f})/{gain:.3g}"
    elif denoised is not None and denoised.shape == raw.shape:
        step = max(1, int(np.sqrt(raw.size / 65536)))  # ~65k pixels are plenty for two numbers
        x = denoised[::step, ::step].astype(np.float64).ravel()
        y = raw[::step, ::step].astype(np.float64).ravel()
        design = np.stack([x, np.ones_like(x)], axis=1)
        (gain, offset), *_ = np.linalg.lstsq(design, y, rcond=None)
        if not gain > 0:
            return raw.astype(np.float32), "ADU (no calibration in the header, and no fit)"
        how = f"e⁻ ≈ (ADU − {offset:.1f})/{gain:.3g}, fitted"
    else:
        return raw.astype(np.float32), "ADU (no calibration in the header)"
    out = raw.astype(np.float32)
    out -= np.float32(offset)
    out /= np.float32(gain)
    return out, how


def shared_limits(image: np.ndarray, low: float = 0.1, high: float = 99.9) -> tuple[float, float]:
    """Contrast limits from percentiles of ``image`` (on a strided sample of ~65k pixels)."""
    step = max(1, int(np.sqrt(image.size / 65536)))
    sample = image[::step, ::step]
    lo, hi = (float(v) for v in np.nanpercentile(sample, [low, high]))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def format_info(snap: Snapshot, status: FeedStatus) -> str:
    """The info line of one frame: number, rates, latency, drops, model, calibration, QC."""
    h = snap.header
    parts = [f"frame {snap.frame}", f"{snap.fps:.1f} fps received"]
    if snap.latency_ms is not None:
        parts.append(f"latency {snap.latency_ms:.0f} ms")
    parts.append(f"dropped {h.get('dropped', '?')}")
    parts.append(f"model {h.get('model') or '-'}")
    parts.append(f"calibration {h.get('calibration') or '-'}")
    qc = h.get("qc")
    if isinstance(qc, Mapping):
        bits = []
        for key, label in (("chi2", "χ²"), ("structure", "structure")):
            v = qc.get(key)
            if isinstance(v, (int, float)):
                bits.append(f"{label} {v:.2f}")
        if "ok" in qc:
            bits.append("ok" if qc["ok"] else "NOT ok")
        parts.append("QC " + " ".join(bits))
    if status.malformed:
        parts.append(f"skipped {status.malformed} non-livedenoise/1 message(s)")
    if status.restarts:
        parts.append(f"daemon restarted {status.restarts}×")
    return "  ·  ".join(parts)
