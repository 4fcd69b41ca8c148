"""Fast exact Poisson sampling for the simulator's uniform scenes.

``Generator.poisson`` costs 40-80 ns a pixel: at 2048² that is most of a frame's rendering, and
a live calibration takes thousands of such frames. When every pixel sees the same mean (the
flat scene, a closed shutter) two exact tricks apply:

- ``Poisson(lam0)`` for all pixels from an alias table (Walker/Vose) over the support of the
  distribution (truncated where the tail is below 1e-15): one float64 uniform per pixel;
- the per-pixel dark current ``Poisson(d_i)`` added as sparse events: a Poisson total of
  ``sum(d_i)`` events, each placed at pixel i with probability ``d_i / sum(d)`` (the same joint
  distribution as independent Poissons).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PoissonAlias", "add_sparse_poisson"]


class PoissonAlias:
    """Walker alias table of ``Poisson(lam)``; :meth:`sample` draws one value per output element."""

    def __init__(self, lam: float) -> None:
        self.lam = float(lam)
        lam = self.lam
        spread = 12.0 * math.sqrt(lam) + 12.0
        lo, hi = max(0, int(lam - spread)), int(lam + spread) + 1
        k = np.arange(lo, hi + 1, dtype=np.float64)
        logp = k * math.log(lam) - lam - np.array([math.lgamma(v + 1.0) for v in k]) if lam > 0 else None
        if logp is None:
            pmf = np.zeros(k.size)
            pmf[0] = 1.0
        else:
            pmf = np.exp(logp)
        pmf /= pmf.sum()
        n = pmf.size
        prob = pmf * n
        alias = np.zeros(n, np.int64)
        small = [i for i in range(n) if prob[i] < 1.0]
        large = [i for i in range(n) if prob[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            alias[s] = g
            prob[g] -= 1.0 - prob[s]
            (small if prob[g] < 1.0 else large).append(g)
        for i in small + large:  # numerical leftovers are certain
            prob[i] = 1.0
        self.offset = lo
        self.prob = prob  # float64: the coin is compared at full precision
        self.alias = alias.astype(np.int32)
        self.size = n

    def sample(self, rng: np.random.Generator, out: np.ndarray, work: np.ndarray) -> np.ndarray:
        """Fill ``out`` (float32) with Poisson draws; ``work`` is a float64 buffer of its size."""
        rng.random(out=work)
        work *= self.size
        idx = work.astype(np.int32)
        np.minimum(idx, self.size - 1, out=idx)
        work -= idx  # the fractional part: the coin of the alias method
        swap = work >= self.prob[idx]
        np.copyto(idx, self.alias[idx], where=swap)
        np.add(idx, self.offset, out=out, casting="unsafe")
        return out


def add_sparse_poisson(
    rng: np.random.Generator, out: np.ndarray, cumulative: np.ndarray, scale: float
) -> None:
    """Add independent ``Poisson(scale * rate_i)`` counts to ``out`` (flat view), given ``cumsum(rate)``."""
    total = float(cumulative[-1]) * scale if cumulative.size else 0.0
    if total <= 0:
        return
    n = int(rng.poisson(total))
    if n == 0:
        return
    where = np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right")
    np.minimum(where, cumulative.size - 1, out=where)
    np.add.at(out.reshape(-1), where, 1.0)
