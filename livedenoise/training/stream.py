"""The training stream: ``(input_e, target_e, ratio)`` triples grouped into batches, made ahead on a thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["Prefetch", "batches"]

log = logging.getLogger("livedenoise")


def batches(source: Iterable, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Group ``(input_e, target_e, ratio)`` triples into ``(B, 1, H, W)`` arrays and ``(B,)`` ratios."""
    it = iter(source)
    restarted = False
    while True:
        xs: list[np.ndarray] = []
        ts: list[np.ndarray] = []
        rs: list[float] = []
        while len(xs) < batch:
            try:
                x, t, r = next(it)
            except StopIteration:
                if restarted and not xs:
                    raise ValueError("the training data source yields nothing") from None
                it, restarted = iter(source), True
                continue
            restarted = False
            x, t = np.asarray(x, np.float32), np.asarray(t, np.float32)
            if x.ndim != 2 or x.shape != t.shape:
                raise ValueError(
                    f"training pairs must be two 2D arrays of one shape, got {x.shape} and {t.shape}"
                )
            if xs and x.shape != xs[0].shape:
                raise ValueError(
                    f"patches in a batch must share a shape: {xs[0].shape} then {x.shape}; crop them"
                )
            xs.append(x)
            ts.append(t)
            rs.append(float(r))
        yield np.stack(xs)[:, None], np.stack(ts)[:, None], np.asarray(rs, np.float32)


class Prefetch:
    """Draw an iterator on a background thread, up to ``depth`` items ahead of the consumer.

    The items and their order are those of the iterator: one thread draws it. An exception
    raised while drawing is raised again by ``next`` (and by every later ``next``); after the
    end, or :meth:`close`, ``next`` raises StopIteration. :meth:`close` stops the thread.
    Worth it where making an item releases the GIL (numpy, scipy) while the consumer computes.
    """

    def __init__(self, it: Iterator, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended: tuple[str, Any] | None = None  # ("end" | "error" | "closed", error): no more items
        self._thread = threading.Thread(
            target=self._run, args=(iter(it),), name="livedenoise-train-data", daemon=True
        )
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = next(it)
                except StopIteration:
                    self._put(("end", None))
                    return
                if not self._put(("item", item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(("error", exc))

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self):
        if self._ended is None:
            kind, value = self._q.get()
            if kind == "item":
                return value
            self._ended = (kind, value)
        kind, value = self._ended
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread (it finishes the item it is making) and drop what was made ahead."""
        self._stop.set()
        if self._ended is None:
            self._ended = ("closed", None)
        self._drain()
        self._thread.join(timeout=30)
        self._drain()  # a put that was under way when the queue was drained
        if self._thread.is_alive():
            log.warning("the training data thread is still making a batch after 30 s; left to finish")

    def _drain(self) -> None:
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                return
