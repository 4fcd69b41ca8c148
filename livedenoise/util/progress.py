"""Progress of long work: a bar on a terminal, plain log lines everywhere else.

A progress bar redrawn with carriage returns is noise in a log file or a pipe; without a
terminal, :func:`progress_bar` logs one line at each new stage and at most every
``interval_s`` seconds instead, so a run under ``nohup``, a service or CI still shows where it is.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["LogProgress", "progress_bar"]

log = logging.getLogger("livedenoise")


class LogProgress:
    """The few ``tqdm`` methods livedenoise uses, writing log lines (``INFO``) instead of a bar."""

    def __init__(self, total: int, desc: str, unit: str = "frame", interval_s: float = 10.0) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.interval_s = interval_s
        self.n = 0
        self._stage = ""
        self._t0 = time.monotonic()
        self._last = self._t0

    def _line(self) -> None:
        elapsed = time.monotonic() - self._t0
        pct = 100.0 * self.n / self.total if self.total else 100.0
        eta = ""
        if 0 < self.n < self.total:
            eta = f", about {elapsed / self.n * (self.total - self.n):.0f} s left"
        stage = f" ({self._stage})" if self._stage else ""
        log.info(
            "%s%s: %d/%d %ss (%.0f %%), %.0f s%s",
            self.desc,
            stage,
            self.n,
            self.total,
            self.unit,
            pct,
            elapsed,
            eta,
        )
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval_s or self.n == self.total:
            self._line()

    def set_description(self, desc: str) -> None:
        """A new stage (tqdm's name for it): logged at once."""
        if desc != self._stage:
            self._stage = desc
            self._line()

    def close(self) -> None:
        pass

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "frame") -> Any:
    """A ``tqdm`` bar on a terminal (stderr), else a :class:`LogProgress`; disabled: a silent bar."""
    from tqdm import tqdm

    if enabled and not sys.stderr.isatty():
        return LogProgress(total, desc, unit)
    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, leave=False)
