"""Small thread helpers."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Beside", "usable_cores"]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class Beside:
    """Run ``fn()`` on a thread while the ``with`` block runs; joined (and its error raised) on exit.

    ``fn`` None: nothing runs. Used to overlap two start-up waits (the camera's buffer made
    resident while the engine is prepared).
    """

    def __init__(self, fn: Callable[[], Any] | None, name: str = "livedenoise-prepare") -> None:
        self.fn = fn
        self.name = name
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            self.fn()  # type: ignore[misc]
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Beside:
        if self.fn is not None:
            self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error
