"""Per-stage latency and rate statistics with fixed memory.

Each stage keeps a fixed-size reservoir of its most recent samples (a preallocated
float64 ring), so recording costs no allocation however long the pipeline runs;
percentiles are computed only when somebody asks (status, the live display).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from livedenoise.live.qc import qc_verdict

__all__ = ["STAGES", "LatencyReservoir", "PipelineStats", "RateMeter"]

# stage name -> what it measures
STAGES = {
    "acquire": "core buffer -> ring slot (pop + copy)",
    "convert": "ADU -> photoelectrons",
    "queue": "wait in the ring before the engine took the frame",
    "engine": "restoration",
    "publish": "send raw + denoised (+ truth)",
    "end_to_end": "frame left the core -> last message sent",
}


class LatencyReservoir:
    """The last ``size`` samples of one quantity (seconds)."""

    def __init__(self, size: int = 4096) -> None:
        self._buf = np.zeros(int(size), np.float64)
        self._n = 0  # samples ever added
        self._lock = threading.Lock()

    def add(self, value_s: float) -> None:
        with self._lock:
            self._buf[self._n % self._buf.size] = value_s
            self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def percentiles_ms(self, qs: tuple[float, ...] = (50.0, 99.0)) -> list[float | None]:
        """Percentiles of the samples held, in milliseconds (None while empty)."""
        with self._lock:
            n = min(self._n, self._buf.size)
            if n == 0:
                return [None for _ in qs]
            data = self._buf[:n].copy()
        return [float(v) * 1e3 for v in np.percentile(data, qs)]

    def reset(self) -> None:
        with self._lock:
            self._n = 0


class RateMeter:
    """Events per second, over the whole run and over the last interval."""

    def __init__(self) -> None:
        self.count = 0
        self._t0 = time.perf_counter()
        self._last_t = self._t0
        self._last_count = 0

    def tick(self, n: int = 1) -> None:
        self.count += n

    def overall(self) -> float:
        dt = time.perf_counter() - self._t0
        return self.count / dt if dt > 0 else 0.0

    def recent(self) -> float:
        """Rate since the previous call to :meth:`recent`."""
        now = time.perf_counter()
        dt = now - self._last_t
        rate = (self.count - self._last_count) / dt if dt > 0 else 0.0
        self._last_t, self._last_count = now, self.count
        return rate

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


class PipelineStats:
    """Latency reservoirs for every stage plus rate meters and drop counts by reason."""

    def __init__(self, samples: int = 4096) -> None:
        self.latency = {name: LatencyReservoir(samples) for name in STAGES}
        self.rates = {name: RateMeter() for name in ("acquired", "restored", "published")}
        self.drops: dict[str, int] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Start counting afresh (e.g. after a benchmark's warm-up); drops are cleared too."""
        for res in self.latency.values():
            res.reset()
        for meter in self.rates.values():
            meter.reset()
        with self._lock:
            self.drops.clear()

    def add_drop(self, reason: str, n: int = 1) -> int:
        """Count ``n`` drops for ``reason``; returns the total over all reasons."""
        with self._lock:
            key = str(reason)  # a DropReason is its string: the counts print and serialise as before
            self.drops[key] = self.drops.get(key, 0) + n
            return sum(self.drops.values())

    @property
    def dropped_total(self) -> int:
        with self._lock:
            return sum(self.drops.values())

    def latency_ms(self) -> dict[str, dict[str, float | None]]:
        out = {}
        for name, res in self.latency.items():
            p50, p99 = res.percentiles_ms()
            out[name] = {
                "p50": None if p50 is None else round(p50, 3),
                "p99": None if p99 is None else round(p99, 3),
                "n": res.count,
            }
        return out

    def snapshot(self) -> dict[str, Any]:
        """JSON-able summary: frame counts, fps, drops by reason, latency p50/p99 (ms)."""
        with self._lock:
            drops = dict(self.drops)
        return {
            "frames": {name: m.count for name, m in self.rates.items()},
            "fps": {name: round(m.overall(), 2) for name, m in self.rates.items()},
            "dropped": sum(drops.values()),
            "drops": drops,
            "latency_ms": self.latency_ms(),
        }


def format_line(
    status: dict[str, Any], quality: dict[str, float] | None = None, fps: dict[str, float] | None = None
) -> str:
    """One line of live statistics from :meth:`Pipeline.status` (and PSNR values, dB).

    ``fps`` overrides the whole-run rates of ``status`` (e.g. rates over the last second).
    """
    fps = fps or status["fps"]
    lat = status["latency_ms"]

    def pair(name: str) -> str:
        p50, p99 = lat[name]["p50"], lat[name]["p99"]
        if p50 is None:
            return f"{name} -"
        return f"{name} {p50:.1f}/{p99:.1f}"

    parts = [
        f"{status['uptime_s']:6.1f}s",
        f"fps acq {fps['acquired']:.1f} restored {fps['restored']:.1f}",
        "ms p50/p99: " + " ".join(pair(n) for n in ("convert", "queue", "engine", "publish", "end_to_end")),
        f"dropped {status['dropped']}" + (f" {status['drops']}" if status["drops"] else ""),
    ]
    qc = status.get("qc") or {}
    if qc.get("frames"):
        parts.append(f"{qc_verdict(qc.get('last'))}, {100 * qc['ok_fraction']:.0f}% of frames ok")
    if quality:
        parts.append(
            "PSNR raw {raw:.1f} dB restored {restored:.1f} dB".format(
                raw=quality.get("raw", float("nan")), restored=quality.get("restored", float("nan"))
            )
        )
    return " | ".join(parts)


def format_summary(status: dict[str, Any]) -> str:
    """A multi-line summary of a finished run (Markdown table of the stages)."""
    lines = [
        f"state: {status['state']}" + (f" ({status['failure']})" if status.get("failure") else ""),
        "frames: acquired {acquired}, restored {restored}, published {published}".format(**status["frames"]),
        "fps: acquired {acquired}, restored {restored}, published {published}".format(**status["fps"]),
        f"dropped: {status['dropped']} {status['drops'] or ''}".rstrip(),
        f"engine: {status['engine']}",
        f"calibration: {status['calibration']['id']}",
        *_qc_lines(status.get("qc")),
        "",
        "| stage | what | p50 ms | p99 ms |",
        "| --- | --- | --- | --- |",
    ]
    for name, what in STAGES.items():
        lat = status["latency_ms"][name]
        lines.append(f"| {name} | {what} | {lat['p50']} | {lat['p99']} |")
    return "\n".join(lines)


def _qc_lines(qc: dict[str, Any] | None) -> list[str]:
    if not qc or not qc.get("frames"):
        return []
    return [
        f"trust score: {100 * qc['ok_fraction']:.1f}% of {qc['frames']} restored frames ok; mean chi2 "
        f"{qc['chi2_mean']}, mean structure {qc['structure_mean']}; last frame: {qc_verdict(qc['last'])}"
    ]
