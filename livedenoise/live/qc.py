"""A trust score for every restored frame: the residual checked against the calibrated noise model.

For a restoration consistent with the data, the residual ``r = raw_e - restored`` is pure noise
with known per-pixel variance ``v = max(restored, 0) + read_var_e2`` (Poisson shot noise of the
expected photoelectrons plus the sCMOS read noise of that pixel). Two numbers test that:

- ``chi2``: the mean of ``r² / v``. About 1 when consistent; well above 1 means signal the
  restoration did not model (a gain that is too low in the calibration, a model that
  oversmooths, structure it removed); well below 1 means the output follows the noise (no
  restoration, or a gain that is too high).
- ``structure``: the correlation of neighbouring normalised residuals ``r / sqrt(v)`` (lag 1,
  along rows). About 0 for independent pixel noise; clearly positive when the residual still
  carries the image (edges and texture the restoration smoothed away).

``ok`` is true when both lie inside :class:`QCBounds`. Both are computed on every ``stride``-th
row (whole rows, so that horizontal neighbours stay adjacent), and on larger frames on fewer
rows, so that at most :data:`MAX_PIXELS` pixels are read: about 0.4 ms for any frame size on
the 2-core machine of the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_PIXELS", "QCBounds", "QCSummary", "frame_qc", "qc_verdict"]

MAX_PIXELS = 65536
"""The most pixels one frame's score reads (a 512² frame at stride 4; a 2048² one at stride 64)."""


@dataclass(frozen=True)
class QCBounds:
    """Where a restored frame counts as consistent with the noise model (``qc.ok``).

    The defaults were set on the simulated sCMOS camera (README, "Trust score"). ``chi2_low`` was
    0.75 until the sharper live RESUNETs: with the true maps, ``resunet-live-v6`` reads chi2
    0.71-0.80 on the simulator's dense bright cells (96², 50 ms) and 0.92-1.0 elsewhere; a gain 25 %
    too high reads 0.58-0.72 on structure (0.79 on a flat field), 2x too high about 0.4.
    """

    chi2_low: float = 0.70
    chi2_high: float = 1.35
    structure_max: float = 0.1


def frame_qc(
    raw_e: np.ndarray,
    restored: np.ndarray,
    read_var_e2: np.ndarray,
    *,
    stride: int = 4,
    bounds: QCBounds | None = None,
) -> dict[str, Any]:
    """``{"chi2": ..., "structure": ..., "ok": ...}`` of one restored frame (see the module doc).

    Parameters
    ----------
    raw_e, restored, read_var_e2 : np.ndarray
        The frame in photoelectrons, its restoration, and the read-noise variance of each of its
        pixels (e⁻²), all of one 2D shape.
    stride : int
        Use at least every ``stride``-th row (1: every row); more rows are skipped when the
        frame is larger than ``stride * MAX_PIXELS`` pixels.
    """
    if raw_e.shape != restored.shape or raw_e.shape != read_var_e2.shape or raw_e.ndim != 2:
        raise ValueError(
            f"qc needs three 2D arrays of one shape, got {raw_e.shape}, {restored.shape}, {read_var_e2.shape}"
        )
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    b = bounds or QCBounds()
    stride = max(stride, -(-raw_e.size // MAX_PIXELS))
    x = raw_e[::stride].astype(np.float32, copy=False)
    mu = restored[::stride].astype(np.float32, copy=False)
    v = np.maximum(mu, 0.0)
    v += read_var_e2[::stride]
    np.maximum(v, 1e-3, out=v)
    r = x - mu
    z = r / np.sqrt(v)
    chi2 = float(np.mean(z * z, dtype=np.float64))
    if not np.isfinite(chi2):
        return {"chi2": None, "structure": None, "ok": False}
    zc = z - z.mean()
    num = float(np.mean(zc[:, 1:] * zc[:, :-1], dtype=np.float64))
    den = float(np.mean(zc * zc, dtype=np.float64))
    structure = num / den if den > 0 else 0.0
    ok = b.chi2_low <= chi2 <= b.chi2_high and structure <= b.structure_max
    return {"chi2": round(chi2, 4), "structure": round(structure, 4), "ok": bool(ok)}


def qc_verdict(qc: dict[str, Any] | None, bounds: QCBounds | None = None) -> str:
    """A short phrase for people: ``ok`` or which way the restoration disagrees with the noise."""
    if not qc:
        return "no qc"
    b = bounds or QCBounds()
    chi2, structure = qc.get("chi2"), qc.get("structure")
    if chi2 is None or structure is None:
        return "qc failed: the residual is not finite"
    numbers = f"chi2 {chi2:.2f}, structure {structure:+.2f}"
    if chi2 > b.chi2_high:
        why = (
            "the residual holds more than noise: gain in the calibration too low, or the model removes signal"
        )
    elif chi2 < b.chi2_low:
        why = "the output follows the noise: no restoration, or gain in the calibration too high"
    elif structure > b.structure_max:
        why = "the residual still shows the image: the model oversmooths or was made for another task"
    else:
        return f"qc ok ({numbers})"
    return f"qc FLAGGED ({numbers}): {why}"


class QCSummary:
    """Running summary of the frames' ``qc`` (for ``status``, the demo line and summaries)."""

    def __init__(self) -> None:
        self.frames = 0
        self.ok = 0
        self.chi2_sum = 0.0
        self.structure_sum = 0.0
        self.last: dict[str, Any] | None = None

    def add(self, qc: dict[str, Any]) -> None:
        self.last = qc
        self.frames += 1
        if qc["chi2"] is None:
            return
        self.ok += bool(qc["ok"])
        self.chi2_sum += qc["chi2"]
        self.structure_sum += qc["structure"]

    def snapshot(self) -> dict[str, Any]:
        n = self.frames
        return {
            "frames": n,
            "ok_fraction": round(self.ok / n, 4) if n else None,
            "chi2_mean": round(self.chi2_sum / n, 4) if n else None,
            "structure_mean": round(self.structure_sum / n, 4) if n else None,
            "last": self.last,
        }
