"""Calibration from TIFF stacks on disk: a dark stack and flat stacks at several light levels.

``livedenoise calibrate --dark D.tif --flat F1.tif ...`` reads each stack one frame at a time
(:func:`accumulate_tiff`), fits with :func:`livedenoise.calibration.fit.fit_calibration`, and
writes the calibration TIFF and, if asked, the PNG report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.calibration.fit import (
    CalibrationFit,
    LevelStats,
    MomentAccumulator,
    check_level_counts,
    fit_calibration,
)
from livedenoise.calibration.maps import CalibrationError, write_calibration
from livedenoise.calibration.report import write_report
from livedenoise.util.atomic import check_writable_dir
from livedenoise.util.progress import progress_bar

__all__ = ["StackInfo", "accumulate_tiff", "calibrate_files", "stack_info"]

log = logging.getLogger("livedenoise")


@dataclass(frozen=True)
class StackInfo:
    """Frames, frame shape and dtype of a TIFF stack (read from its header only)."""

    path: str
    n: int
    shape: tuple[int, int]
    dtype: np.dtype


def stack_info(path: str | os.PathLike[str], role: str = "stack") -> StackInfo:
    """Check that ``path`` is a ``(N, H, W)`` uint16 TIFF stack and say what it holds.

    Raises
    ------
    CalibrationError
        Missing or unreadable file, wrong dimensionality, or not uint16 (8-bit,
        32-bit and float data are refused with what to do instead).
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{role} {path} does not exist")
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise CalibrationError(f"{role} {path} is not a readable TIFF ({exc})") from exc
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise CalibrationError(
            f"{role} {path} has shape {shape}; expected a (frames, height, width) stack of one camera "
            "channel (save the frames as a plain TIFF stack, one page per frame)"
        )
    if dtype != np.uint16:
        if dtype.kind == "f":
            what = "floating-point data (processed images?)"
        elif dtype.itemsize == 1:
            what = "8-bit data"
        else:
            what = f"{dtype} data"
        raise CalibrationError(
            f"{role} {path} holds {what}; calibration needs the camera's raw 16-bit ADU (uint16). "
            "Acquire with the camera's 16-bit pixel type and save the frames unprocessed "
            "(no scaling, no background subtraction, no 8-bit conversion)"
        )
    return StackInfo(str(path), int(shape[0]), (int(shape[1]), int(shape[2])), dtype)


def _iter_tiff(path: str) -> Iterable[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        n = series.shape[0] if len(series.shape) == 3 else 1
        if len(tf.pages) == n:
            for page in tf.pages:
                yield page.asarray()
        else:  # one page holding several frames: let tifffile map it
            data = series.asarray(out="memmap")
            for i in range(data.shape[0]):
                yield np.asarray(data[i])


def accumulate_tiff(
    info: StackInfo, *, saturation_adu: float = 65535, label: str | None = None, progress: Any = None
) -> LevelStats:
    """Stream a TIFF stack page by page into :class:`LevelStats` (``progress.update(1)`` per frame)."""
    acc = MomentAccumulator(info.shape, saturation_adu=saturation_adu, label=label or Path(info.path).name)
    for frame in _iter_tiff(info.path):
        acc.add(frame)
        if progress is not None:
            progress.update(1)
    if acc.n != info.n:
        raise CalibrationError(
            f"{info.path}: read {acc.n} frames, its header says {info.n}; is the file truncated?"
        )
    return acc.finish()


def calibrate_files(
    dark: str | os.PathLike[str],
    flats: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    camera: str | None = None,
    report: str | os.PathLike[str] | None = None,
    saturation_adu: float = 65535,
    progress: bool = True,
    **fit_options: Any,
) -> CalibrationFit:
    """Calibrate from TIFF stacks and write the calibration file (and optional PNG report).

    Everything that can be checked from headers (files, dtypes, shapes, frame counts,
    writable output) is checked before the frames are read; the output appears
    complete or not at all.
    """

    output = Path(output)
    for target, what in ((output, "calibration"), (Path(report) if report else None, "report")):
        if target is None:
            continue
        if target.is_dir():
            raise CalibrationError(
                f"the {what} output {target} is a folder; give a file name (e.g. {target / 'cal.tif'})"
            )
        check_writable_dir(target.parent if str(target.parent) else Path("."), what)
    d = stack_info(dark, "dark stack")
    fl = [stack_info(f, f"flat stack {i + 1}") for i, f in enumerate(flats)]
    for f in fl:
        if f.shape != d.shape:
            raise CalibrationError(
                f"{f.path} has {f.shape[1]}×{f.shape[0]} frames but the darks {d.path} are "
                f"{d.shape[1]}×{d.shape[0]}; acquire all stacks with the same ROI and binning"
            )
    check_level_counts(d.n, [f.n for f in fl])

    total = d.n + sum(f.n for f in fl)
    with progress_bar(total, "calibrate", enabled=progress) as bar:
        dstats = accumulate_tiff(d, saturation_adu=saturation_adu, progress=bar)
        fstats = [accumulate_tiff(f, saturation_adu=saturation_adu, progress=bar) for f in fl]
    fit = fit_calibration(dstats, fstats, camera=camera, **fit_options)
    write_calibration(output, fit.calibration, inputs={"dark": str(dark), "flats": [str(f) for f in flats]})
    if report:
        write_report(fit, report)
    return fit
