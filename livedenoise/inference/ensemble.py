"""Self-ensemble: restore a frame under flips (and transposes) of itself and average the results.

Each of the ``n`` views of the frame (the identity, its left-right and up-down flips, and for
square frames the same three again after a transpose) is restored by the same engine, mapped
back, and the ``n`` estimates are averaged: the "geometric self-ensemble" of image restoration
(Timofte et al. 2016; Lim et al. 2017, EDSR+). A network is not exactly equivariant to these
symmetries, so its errors on the views are partly independent and their mean is closer to the
truth; it costs ``n`` restorations a frame, so it is for offline ``denoise`` and evaluation,
not the live stream. Photon counts are kept: every view's estimate keeps them, and so does
their mean (exactly per 32-pixel block of a model's flux step when the frame's sides are multiples
of the block; otherwise the flipped views' blocks fall on other grids, and counts are kept on
each view's own grid).

Sizes: 1 (off), 2 (identity and left-right flip), 4 (the four flips), 8 (the four flips, each
also transposed; square frames only: a non-square frame uses the 4 flips and says so, as a
transposed view would need the engine prepared for a second shape).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from livedenoise.inference.engines import Engine

__all__ = ["ENSEMBLE_SIZES", "SelfEnsemble", "views"]

log = logging.getLogger("livedenoise")

ENSEMBLE_SIZES = (1, 2, 4, 8)
# (transpose, flip rows, flip columns), in the order the sizes take them
_VIEWS = (
    (False, False, False),
    (False, False, True),
    (False, True, False),
    (False, True, True),
    (True, False, False),
    (True, False, True),
    (True, True, False),
    (True, True, True),
)


def views(n: int, shape: tuple[int, int]) -> tuple[tuple[bool, bool, bool], ...]:
    """The ``(transpose, flip_rows, flip_cols)`` views of an ``n``-ensemble on frames of ``shape``."""
    if n not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble size must be one of {', '.join(map(str, ENSEMBLE_SIZES))}, got {n}")
    if n == 8 and shape[0] != shape[1]:
        n = 4  # a transposed view of a non-square frame has another shape
    return _VIEWS[:n]


def _forward(x: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    t, fr, fc = view
    if fr:
        x = x[::-1]
    if fc:
        x = x[:, ::-1]
    return x.T if t else x


def _back(y: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    t, fr, fc = view
    if t:
        y = y.T
    if fc:
        y = y[:, ::-1]
    return y[::-1] if fr else y


class SelfEnsemble:
    """An :class:`~livedenoise.inference.engines.Engine` that averages ``engine`` over ``n`` views.

    Parameters
    ----------
    engine : Engine
        Any engine; it is prepared for the frame shape (transposed views of square frames have
        the same shape).
    n : int
        1, 2, 4 or 8 (see the module docstring); 8 on a non-square frame uses 4, reported by
        :meth:`describe` as ``ensemble`` (the number of views used).
    """

    def __init__(self, engine: Engine, n: int) -> None:
        views(n, (1, 1))  # checks n
        self.engine = engine
        self.n = int(n)
        self.name = engine.name
        self.model_id = engine.model_id
        self.card = getattr(engine, "card", None)
        self._shape: tuple[int, int] | None = None
        self._views: tuple[tuple[bool, bool, bool], ...] = ()
        self._in = self._tmp = self._acc = np.empty((0, 0), np.float32)

    def prepare(self, shape: tuple[int, int]) -> None:
        shape = (int(shape[0]), int(shape[1]))
        self.engine.prepare(shape)
        self._views = views(self.n, shape)
        if len(self._views) < self.n:
            log.warning(
                "ensemble of %d needs square frames (transposed views); %s frames use the %d flips",
                self.n,
                "x".join(map(str, shape)),
                len(self._views),
            )
        self._in = np.empty(shape, np.float32)
        self._tmp = np.empty(shape, np.float32)
        self._acc = np.empty(shape, np.float64)
        self._shape = shape

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Restore ``frame_e`` under each view, map back, average into ``out`` and return it."""
        if out.shape != frame_e.shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {frame_e.shape}, got {out.dtype} {out.shape}")
        if self._shape != frame_e.shape:
            self.prepare(frame_e.shape)
        acc = self._acc
        acc.fill(0.0)
        for view in self._views:
            np.copyto(self._in, _forward(frame_e, view))  # C-contiguous, as engines expect
            self.engine.restore(self._in, self._tmp)
            acc += _back(self._tmp, view)
        np.multiply(acc, 1.0 / len(self._views), out=out, casting="same_kind")
        return out

    def describe(self) -> dict[str, Any]:
        return {**self.engine.describe(), "ensemble": len(self._views) or self.n}

    def close(self) -> None:
        self.engine.close()
