"""Paired short/long-exposure datasets: the folder format, its writer and reader, quality checks.

A dataset is a folder (the README's "File formats")::

    DATASET/
      pairs.json              the index (JSON, rewritten atomically after each pair)
      calibration.tif         the calibration used (full sensor; the index names the ROI)
      frames/pair-00000-short.tif   (K, H, W) uint16 ADU, the K short exposures
      frames/pair-00000-long.tif    (H, W)    uint16 ADU, the long exposure

A pair exists if and only if the index lists it. Its two files are written under
temporary names, renamed into place, and only then is the index rewritten (atomically),
so a crash loses at most the pair in flight. Files that the index does not list
(temporaries, frames of a pair whose index entry never landed) are ignored on reading
and reported in :attr:`PairDataset.stray`; the next collection into the dataset removes
them. A new dataset's folder (frames folder, calibration, empty index) is built under a
hidden temporary name beside it and renamed into place, so a crash while it is made leaves
no half-made dataset; a folder left half-made by an older version (livedenoise's own
files but no index) is recovered: its incomplete pair is discarded.

Quality checks (:func:`check_pair`) are recorded per pair: the sub-pixel shift between
the short and the long exposure (phase correlation), the fraction of saturated pixels in
the long exposure, and the observed photoelectron ratio long/short against the exposure
ratio (bleaching). Pairs that fail a threshold carry ``flags`` and are left out of
training unless asked for (:meth:`PairDataset.usable`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from livedenoise.acquisition.registration import phase_shift, registration_confidence
from livedenoise.calibration.maps import Calibration, PhotonConverter, read_calibration

__all__ = [
    "FORMAT_VERSION",
    "INDEX_NAME",
    "PairDataset",
    "PairsError",
    "QualityThresholds",
    "check_pair",
    "phase_shift",
    "registration_confidence",
]

log = logging.getLogger("livedenoise")

FORMAT_VERSION = 1
INDEX_NAME = "pairs.json"
CALIBRATION_NAME = "calibration.tif"
FRAMES_DIR = "frames"
_PAIR_FILE = re.compile(r"\.?pair-\d{5}-(short|long)\.tif(\.part)?")
_OWN_TEMPORARY = re.compile(r"\.(pairs\.json|calibration\.tif)\..*\.part")


class PairsError(ValueError):
    """A dataset that cannot be written or read as asked, with what to do about it."""


# -- quality checks -------------------------------------------------------------------


@dataclass(frozen=True)
class QualityThresholds:
    """Limits beyond which a pair is flagged (and left out of training by default).

    Attributes
    ----------
    max_shift_px : float
        Largest accepted shift between the short and the long exposure, in pixels.
    max_saturated_fraction : float
        Largest accepted fraction of long-exposure pixels at the camera's maximum.
    max_bleach_deviation : float
        Largest accepted ``|observed ratio / exposure ratio - 1|`` of the total
        photoelectrons long/short (bleaching, or the light changed between the two).
    min_signal_e : float
        Below this many photoelectrons in the short frames in total, the ratio is too
        noisy to judge and is not checked.
    min_shift_confidence : float
        Below this :func:`registration_confidence` the shift is recorded but not judged
        (frames too dark to register).
    """

    max_shift_px: float = 0.5
    max_saturated_fraction: float = 1e-4
    max_bleach_deviation: float = 0.1
    min_signal_e: float = 200.0
    min_shift_confidence: float = 1.2

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (np.isfinite(value) and value >= 0):
                raise PairsError(f"quality threshold {name} must be a finite number >= 0, got {value!r}")


def _central(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[y : y + size, x : x + size]


def check_pair(
    short_e: np.ndarray,
    long_e: np.ndarray,
    long_adu: np.ndarray,
    *,
    exposure_ratio: float,
    max_adu: int,
    thresholds: QualityThresholds | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Quality measures of one pair and the flags of those that fail ``thresholds``.

    Parameters
    ----------
    short_e : np.ndarray
        The short exposure(s) in photoelectrons, ``(H, W)`` or ``(K, H, W)``.
    long_e, long_adu : np.ndarray
        The long exposure in photoelectrons and as raw ADU (for saturation).
    exposure_ratio : float
        ``long_exposure_ms / short_exposure_ms``.
    max_adu : int
        The camera's largest value (``2**bit_depth - 1``).

    Returns
    -------
    quality : dict
        ``shift_px`` ([dy, dx]), ``shift_norm_px``, ``shift_confidence``
        (:func:`registration_confidence`), ``saturated_fraction``,
        ``signal_ratio`` (total e- long / mean short), ``bleach_deviation``
        (``signal_ratio / exposure_ratio - 1``, None when the signal is too low).
    flags : list of str
        Any of ``"motion"``, ``"saturated"``, ``"bleaching"``.
    """
    t = thresholds or QualityThresholds()
    short_e = np.asarray(short_e, np.float32)
    short_mean = short_e.mean(axis=0) if short_e.ndim == 3 else short_e
    ref, mov = _central(long_e, 512), _central(short_mean, 512)  # a crop is enough, and fast
    dy, dx = phase_shift(ref, mov)
    shift_norm = float(np.hypot(dy, dx))
    confidence = registration_confidence(ref, mov)
    saturated = float(np.count_nonzero(np.asarray(long_adu) >= max_adu)) / float(np.asarray(long_adu).size)
    total_short = float(np.sum(short_mean, dtype=np.float64))
    total_long = float(np.sum(long_e, dtype=np.float64))
    n_short = short_e.shape[0] if short_e.ndim == 3 else 1
    if total_short * n_short >= t.min_signal_e:
        ratio = total_long / total_short
        signal_ratio: float | None = ratio
        deviation: float | None = ratio / float(exposure_ratio) - 1.0
    else:
        signal_ratio = deviation = None
    quality = {
        "shift_px": [round(dy, 3), round(dx, 3)],
        "shift_norm_px": round(shift_norm, 3),
        "shift_confidence": round(confidence, 3),
        "saturated_fraction": saturated,
        "signal_ratio": None if signal_ratio is None else round(signal_ratio, 5),
        "bleach_deviation": None if deviation is None else round(deviation, 5),
        "short_mean_e": round(total_short / short_mean.size, 4),
        "long_mean_e": round(total_long / short_mean.size, 4),
    }
    flags = []
    if shift_norm > t.max_shift_px and confidence >= t.min_shift_confidence:
        flags.append("motion")
    if saturated > t.max_saturated_fraction:
        flags.append("saturated")
    if deviation is not None and abs(deviation) > t.max_bleach_deviation:
        flags.append("bleaching")
    return quality, flags


# -- writing --------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _camera_key(camera: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        camera.get("label"),
        tuple(camera.get("shape") or ()),
        camera.get("binning"),
        tuple(camera.get("roi") or ()),
    )


def _calibrations(cal: Calibration, camera: Mapping[str, Any]) -> tuple[Calibration, Calibration]:
    """(maps to store, maps of the frames) for a camera with ``shape``, ``roi``, ``binning``.

    Full-sensor maps are stored and cropped to the ROI; maps that already have the
    frames' shape are used (and stored) as they are; a nominal (uniform) calibration is
    rebuilt at the frames' shape.
    """
    h, w = (int(v) for v in camera["shape"])
    if cal.shape == (h, w):
        return cal, cal
    if cal.meta.get("source") == "nominal":
        nominal = Calibration.uniform(
            (h, w),
            offset_adu=float(cal.offset_adu.flat[0]),
            gain_adu_per_e=float(cal.gain_adu_per_e.flat[0]),
            read_var_e2=float(cal.read_var_e2.flat[0]),
            camera=cal.meta.get("camera"),
        )
        return nominal, nominal
    x, y, rw, rh = camera.get("roi") or (0, 0, w, h)
    frame_cal = cal.for_roi(int(x), int(y), int(rw), int(rh), int(camera.get("binning", 1)))
    frame_cal.check_frame_shape((h, w))
    return cal, frame_cal


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


# -- reading --------------------------------------------------------------------------


class PairDataset:
    """A paired dataset on disk (read-only view of its index and frames).

    Attributes
    ----------
    path : Path
    index : dict
        The parsed index.
    pairs : list of dict
        Index entries of complete pairs, in order.
    stray : list of Path
        Files in the folder the index does not account for (temporaries of an
        interrupted write, frames of a pair whose index entry never landed). Ignored.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        index_path = self.path / INDEX_NAME
        if not index_path.is_file():
            raise PairsError(
                f"{self.path} is not a paired dataset (no {INDEX_NAME}); make one with "
                "`livedenoise collect-pairs --short-ms S --long-ms L --pairs N -o DATASET`"
            )
        raw = index_path.read_bytes()
        try:
            index = json.loads(raw)
        except ValueError as exc:
            raise PairsError(f"{index_path} is not valid JSON ({exc}); the dataset index is damaged") from exc
        version = index.get("livedenoise_pairs") if isinstance(index, dict) else None
        if version is None:
            raise PairsError(
                f"{index_path} is not a livedenoise paired-dataset index (no 'livedenoise_pairs' key)"
            )
        if version != FORMAT_VERSION:
            raise PairsError(
                f"{index_path} is paired-dataset format {version!r}; this livedenoise reads "
                f"format {FORMAT_VERSION}: upgrade livedenoise"
            )
        self.index: dict[str, Any] = index
        self.index_sha256 = hashlib.sha256(raw).hexdigest()
        self.pairs: list[dict[str, Any]] = list(index.get("pairs", []))
        listed = {self.path / p[r] for p in self.pairs for r in ("short", "long")}
        missing = [p for p in sorted(listed) if not p.is_file()]
        if missing:
            raise PairsError(
                f"{self.path}: the index lists frames that are missing: {', '.join(map(str, missing[:5]))}"
            )
        self.stray: list[Path] = []
        for p in sorted(self.path.rglob("*")):
            if p.is_file() and p not in listed and p.name not in (INDEX_NAME, CALIBRATION_NAME):
                self.stray.append(p)
        if self.stray:
            log.warning(
                "%s: ignoring %d file(s) the index does not list (an interrupted write?): %s",
                self.path,
                len(self.stray),
                ", ".join(p.name for p in self.stray[:5]),
            )
        self._calibration: Calibration | None = None
        self._converter: PhotonConverter | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def camera(self) -> dict[str, Any]:
        return dict(self.index.get("camera", {}))

    @property
    def calibration(self) -> Calibration:
        """The dataset's calibration for its frames (cropped to their ROI and binning)."""
        if self._calibration is None:
            stored = read_calibration(self.path / self.index["calibration"]["file"])
            self._calibration = _calibrations(stored, self.camera)[1]
            self._converter = PhotonConverter(self._calibration)
        return self._calibration

    def usable(self, include_flagged: bool = False) -> list[dict[str, Any]]:
        """Pairs for training: all, or only those without quality flags (the default)."""
        return [p for p in self.pairs if include_flagged or not p.get("flags")]

    def entry(self, pair_id: int) -> dict[str, Any]:
        for p in self.pairs:
            if p["id"] == pair_id:
                return p
        raise PairsError(f"{self.path} has no pair {pair_id} (ids {[p['id'] for p in self.pairs][:10]}...)")

    def load_adu(self, pair: int | Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(short (K, H, W), long (H, W))`` uint16 ADU of one pair."""

        entry = self.entry(pair) if isinstance(pair, int) else pair
        short = tifffile.imread(self.path / entry["short"])
        long = tifffile.imread(self.path / entry["long"])
        if short.ndim == 2:
            short = short[None]
        return short, long

    def load_e(self, pair: int | Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """``(short (K, H, W), long (H, W))`` float32 photoelectrons of one pair."""
        short, long = self.load_adu(pair)
        self.calibration  # noqa: B018 (builds the converter)
        conv = self._converter
        assert conv is not None
        return np.stack([conv(s) for s in short]), conv(long)
