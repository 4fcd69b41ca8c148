"""Restore frames larger than a tile: overlapping tiles, smooth blending.

A frame is cut into tiles of one shape (``tile`` × ``tile``, or the whole axis when it
is shorter), overlapping by at least ``overlap`` pixels; the last tile of a row or
column is moved back so it ends at the frame's edge (all tiles have one shape, so the
engine is prepared once). Each restored tile is weighted by a window that is 1 in
its interior and falls smoothly to 0 towards every edge it shares with a neighbour:
the outer ``overlap // 4`` pixels of such an edge (the ones most affected by the
network's padding) get weight 0, the next ``overlap // 2`` a raised-cosine ramp, so
two neighbours' weights add up to 1 across a standard overlap. Edges on the frame's
border keep weight 1. The blend is ``sum(w * tile) / sum(w)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from livedenoise.inference.engines import Engine

__all__ = ["TiledRestorer", "tile_starts", "tile_window"]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with >= ``overlap`` overlap."""
    if tile >= length:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"tile ({tile}) must be larger than overlap ({overlap})")
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(n: int, overlap: int, lead: bool, trail: bool) -> np.ndarray:
    """1D weights of a tile of ``n`` pixels; ``lead``/``trail``: that edge has a neighbour."""
    w = np.ones(n, np.float64)
    if overlap <= 0:
        return w
    m = overlap // 4  # pixels of zero weight at a shared edge
    r = max(overlap - 2 * m, 1)  # ramp length
    d = np.arange(n, dtype=np.float64)
    ramp = np.sin(0.5 * np.pi * np.clip((d - m + 0.5) / r, 0.0, 1.0)) ** 2
    if lead:
        w *= ramp
    if trail:
        w *= ramp[::-1]
    return w


def tile_window(shape: tuple[int, int], overlap: int, edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """2D blending window of one tile; ``edges`` = (top, bottom, left, right) has a neighbour."""
    top, bottom, left, right = edges
    wy = _ramp(shape[0], overlap, top, bottom)
    wx = _ramp(shape[1], overlap, left, right)
    return np.outer(wy, wx).astype(np.float32)


class TiledRestorer:
    """Run an :class:`~livedenoise.inference.engines.Engine` over frames of any size, tile by tile.

    Parameters
    ----------
    engine : Engine
        The same engine the live pipeline uses.
    tile : int
        Tile side in pixels; frames with both sides <= ``tile`` are restored whole.
    overlap : int
        Minimum overlap between neighbouring tiles, in pixels (>= 0, < tile).

    Notes
    -----
    Buffers are allocated once per frame shape and reused for every frame.
    """

    def __init__(self, engine: Engine, tile: int = 2048, overlap: int = 32) -> None:
        tile, overlap = int(tile), int(overlap)
        if tile < 16:
            raise ValueError(f"--tile must be at least 16 pixels, got {tile}")
        if not 0 <= overlap < tile:
            raise ValueError(f"--overlap must be >= 0 and smaller than --tile ({tile}), got {overlap}")
        if overlap and overlap < 4:
            raise ValueError(f"--overlap must be 0 or at least 4 pixels, got {overlap}")
        self.engine = engine
        self.tile = tile
        self.overlap = overlap
        self._shape: tuple[int, int] | None = None

    def _setup(self, shape: tuple[int, int]) -> None:
        h, w = shape
        th, tw = min(self.tile, h), min(self.tile, w)
        ys, xs = tile_starts(h, th, self.overlap), tile_starts(w, tw, self.overlap)
        self._tiles = []
        norm = np.zeros(shape, np.float64)
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                edges = (iy > 0, iy < len(ys) - 1, ix > 0, ix < len(xs) - 1)
                win = tile_window((th, tw), self.overlap, edges)
                self._tiles.append((y, x, win))
                norm[y : y + th, x : x + tw] += win
        if np.any(norm <= 0):  # cannot happen with tile_starts; guard the invariant
            raise RuntimeError("tiling left pixels with no weight; use a larger --overlap")
        self._inv_norm = (1.0 / norm).astype(np.float32)
        self._tile_shape = (th, tw)
        self._tile_in = np.empty((th, tw), np.float32)
        self._tile_out = np.empty((th, tw), np.float32)
        self._acc = np.empty(shape, np.float32)
        self.engine.prepare((th, tw))
        self._shape = shape

    @property
    def n_tiles(self) -> int:
        """Tiles per frame of the last prepared shape."""
        return len(self._tiles) if self._shape else 0

    def restore(self, frame_e: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Restore one float32 ``(H, W)`` photoelectron frame into ``out`` (allocated if None)."""
        frame_e = np.ascontiguousarray(frame_e, dtype=np.float32)
        if frame_e.ndim != 2:
            raise ValueError(f"restore one 2D frame at a time, got shape {frame_e.shape}")
        shape = (int(frame_e.shape[0]), int(frame_e.shape[1]))
        if shape != self._shape:
            self._setup(shape)
        if out is None:
            out = np.empty(shape, np.float32)
        if len(self._tiles) == 1:
            return self.engine.restore(frame_e, out)
        th, tw = self._tile_shape
        acc = self._acc
        acc.fill(0.0)
        for y, x, win in self._tiles:
            np.copyto(self._tile_in, frame_e[y : y + th, x : x + tw])
            res = self.engine.restore(self._tile_in, self._tile_out)
            acc[y : y + th, x : x + tw] += res * win
        np.multiply(acc, self._inv_norm, out=out)
        return out
