"""Per-pixel moments of a stream of frames: the raw statistics of the photon-transfer fit.

:class:`MomentAccumulator` takes frames one at a time (float64 sums), so any number of frames
fits in memory; :class:`LevelStats` is what it returns for one stack (darks or one light level).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livedenoise.calibration.maps import CalibrationError

__all__ = [
    "ADVICE",
    "MIN_FRAMES",
    "MIN_LEVELS",
    "RECOMMENDED_DARKS",
    "RECOMMENDED_FLAT_FRAMES",
    "RECOMMENDED_LEVELS",
    "LevelStats",
    "MomentAccumulator",
]

MIN_FRAMES = 20  # below this a per-pixel variance is meaningless (its error > 30 %)
MIN_LEVELS = 2
RECOMMENDED_DARKS = 100
RECOMMENDED_FLAT_FRAMES = 100
RECOMMENDED_LEVELS = 4
ADVICE = (
    f"acquire >= {RECOMMENDED_DARKS} dark frames (shutter closed) and >= {RECOMMENDED_LEVELS} "
    f"flat levels of >= {RECOMMENDED_FLAT_FRAMES} frames each (uniform illumination, mean "
    "signal from ~10 e- to about half of full well; 400 frames per level for ~3 % per-pixel gain)"
)


@dataclass
class LevelStats:
    """Per-pixel statistics of one stack (darks or one flat level).

    Attributes
    ----------
    label : str
        Where the frames came from (file name, exposure...).
    n : int
        Number of frames.
    mean_adu, var_adu2 : np.ndarray
        Per-pixel mean (ADU) and unbiased variance (ADU^2), float32.
    saturated : np.ndarray
        Boolean map: the pixel reached ``saturation_adu`` in at least one frame.
    saturation_adu : float
        The value counted as saturated.
    exposure_ms : float or None
        Exposure of the frames, when known.
    """

    label: str
    n: int
    mean_adu: np.ndarray
    var_adu2: np.ndarray
    saturated: np.ndarray
    saturation_adu: float
    exposure_ms: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def saturated_fraction(self) -> float:
        return float(np.count_nonzero(self.saturated)) / self.saturated.size


class MomentAccumulator:
    """Per-pixel running mean and variance of a stream of integer frames.

    Sums are kept in float64 relative to the first frame (shifted data, so no
    catastrophic cancellation); adding a frame allocates nothing.

    Parameters
    ----------
    shape : (H, W)
        Frame shape.
    saturation_adu : float
        Pixel value counted as saturated (the camera's maximum, e.g. 65535 or 4095).
    label : str
        Name of the stack, used in messages.
    """

    def __init__(self, shape: tuple[int, int], *, saturation_adu: float = 65535, label: str = "") -> None:
        self.shape = tuple(int(s) for s in shape)
        self.label = label
        self.saturation_adu = float(saturation_adu)
        self.n = 0
        self._ref = np.zeros(self.shape, np.float64)
        self._s1 = np.zeros(self.shape, np.float64)
        self._s2 = np.zeros(self.shape, np.float64)
        self._buf = np.empty(self.shape, np.float64)
        self._max = np.zeros(self.shape, np.float64)

    def add(self, frames: np.ndarray) -> None:
        """Add one ``(H, W)`` frame or a ``(k, H, W)`` chunk of frames."""
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.ndim != 3 or frames.shape[1:] != self.shape:
            raise CalibrationError(
                f"{self.label or 'stack'}: frame shape {frames.shape[1:]} differs from "
                f"{self.shape}; all frames of a calibration must have one shape (full sensor)"
            )
        for f in frames:
            if self.n == 0:
                self._ref[...] = f
            np.subtract(f, self._ref, out=self._buf)
            self._s1 += self._buf
            self._buf *= self._buf
            self._s2 += self._buf
            np.maximum(self._max, f, out=self._max)
            self.n += 1

    def finish(self, exposure_ms: float | None = None, **info: Any) -> LevelStats:
        """The per-pixel mean and variance of what was added (needs >= 2 frames)."""
        if self.n < 2:
            raise CalibrationError(
                f"{self.label or 'stack'}: {self.n} frame(s); a variance needs many. {ADVICE}"
            )
        d = self._s1 / self.n
        var = (self._s2 - self.n * d * d) / (self.n - 1)
        np.maximum(var, 0.0, out=var)
        return LevelStats(
            label=self.label,
            n=self.n,
            mean_adu=(self._ref + d).astype(np.float32),
            var_adu2=var.astype(np.float32),
            saturated=self._max >= self.saturation_adu,
            saturation_adu=self.saturation_adu,
            exposure_ms=exposure_ms,
            info=dict(info),
        )
