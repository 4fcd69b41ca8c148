"""Offline restoration of TIFF files: uint16 ADU in, float32 photoelectrons out.

The same calibration (ADU -> photoelectrons) and the same :class:`~livedenoise.inference.engines.Engine`
as the live pipeline, tiled with overlap for large frames (:mod:`livedenoise.inference.tiling`).
The output TIFF has the input's shape, float32 photoelectrons, and JSON metadata in its
ImageDescription (schema ``livedenoise.restored/1``): livedenoise version, model id and
card sha256, calibration id, units, the precision used (``precision``: fp32, bf16...), the
self-ensemble size (``ensemble``: 1 when off, see :mod:`livedenoise.inference.ensemble`),
engine, tiling, and saturated-pixel counts.

Everything that can be checked is checked before any work is done (input dtype and
shape, calibration shape, output folder); the output is written atomically, so a
failure never leaves a partial file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from livedenoise import __version__
from livedenoise.calibration.maps import Calibration, CalibrationError, PhotonConverter
from livedenoise.inference.tiling import TiledRestorer
from livedenoise.util.atomic import atomic_path, check_writable_dir

if TYPE_CHECKING:  # pragma: no cover
    from livedenoise.inference.engines import Engine

__all__ = [
    "RESTORED_SCHEMA",
    "DenoiseReport",
    "InputError",
    "denoise_array",
    "denoise_file",
    "match_calibration",
    "read_raw_stack",
    "validate_raw",
]

log = logging.getLogger("livedenoise")

RESTORED_SCHEMA = "livedenoise.restored/1"
SATURATION_WARNING = (
    "{n} saturated pixels (>= {sat} ADU) in {f} frame(s): their true photon count is unknown, "
    "so the restoration at and within a few pixels of them is unreliable"
)


class InputError(ValueError):
    """An input file or array that cannot be restored, with what to do about it."""


@dataclass
class DenoiseReport:
    """What happened during a restoration (also written into the output's metadata)."""

    shape: tuple[int, ...]
    frames: int
    saturated_pixels: int = 0
    saturated_per_frame: dict[int, int] = field(default_factory=dict)
    tiles_per_frame: int = 1
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


# -- input ----------------------------------------------------------------------------


def validate_raw(raw: np.ndarray, source: str = "input") -> None:
    """Raise :class:`InputError` unless ``raw`` is a non-empty uint16 (H, W) or (T, H, W) array."""
    expected = "uint16 camera ADU, shape (H, W) or (T, H, W)"
    if raw.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(raw)))
        nan_note = f" and holds {bad} NaN/Inf values" if bad else ""
        raise InputError(
            f"{source} is {raw.dtype} (floating point){nan_note}; expected {expected}. "
            "livedenoise denoise converts raw camera frames to photoelectrons itself: give it the "
            "frames as the camera saved them (not already converted or processed)"
        )
    if raw.dtype != np.uint16:
        raise InputError(
            f"{source} is {raw.dtype}; expected {expected}. 8-bit or 32-bit data is not raw sCMOS "
            "data: save the camera's 16-bit frames (Micro-Manager: 16-bit TIFF)"
        )
    if raw.ndim == 4 or raw.ndim > 4:
        raise InputError(
            f"{source} has {raw.ndim} dimensions {raw.shape}; expected {expected}. Split "
            "multi-channel or multi-position stacks (e.g. C, Z) into one (T, H, W) stack each"
        )
    if raw.ndim not in (2, 3):
        raise InputError(f"{source} has shape {raw.shape}; expected {expected}")
    if raw.size == 0:
        raise InputError(f"{source} is empty (shape {raw.shape}); expected at least one frame with pixels")
    if min(raw.shape[-2:]) < 8:
        raise InputError(f"{source} frames are {raw.shape[-1]}×{raw.shape[-2]} pixels; expected at least 8×8")


def read_raw_stack(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a uint16 ``(H, W)`` or ``(T, H, W)`` TIFF, with a clear error for anything else."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if path.is_dir():
        raise InputError(f"input {path} is a folder; give one TIFF file")
    try:
        with tifffile.TiffFile(path) as tf:
            all_series = list(tf.series)
            n_pages = len(tf.pages)
            if not all_series:
                raise InputError(f"{path} holds no image; expected a uint16 TIFF of raw camera frames")
            layout = [(tuple(s.shape), s.dtype, s.axes) for s in all_series]
            covered = sum(len(s.pages) for s in all_series)
            if len(all_series) > 1:
                # e.g. a recording written one page at a time, each page its own series: every
                # frame is read; series of different shapes (or stacks of stacks) are refused
                shapes = {(shape, dtype) for shape, dtype, _axes in layout}
                if len(shapes) != 1 or len(layout[0][0]) != 2:
                    kinds = ", ".join(
                        f"{'×'.join(map(str, sh))} {dt}" for sh, dt in sorted(shapes, key=str)[:4]
                    )
                    raise InputError(
                        f"{path} holds {len(all_series)} image series of different shapes or of more "
                        f"than one frame each ({kinds}); expected one (H, W) or (T, H, W) stack of uint16 "
                        "camera frames: save each series as its own TIFF"
                    )
                raw = np.stack([s.asarray() for s in all_series])
                axes = "T" + layout[0][2]
            else:
                raw = all_series[0].asarray()
                axes = layout[0][2]
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt or non-TIFF files
        raise InputError(
            f"cannot read {path} as a TIFF ({type(exc).__name__}); expected a uint16 TIFF of raw camera frames"
        ) from exc
    if covered < n_pages:
        raise InputError(
            f"{path} has {n_pages} pages but only {covered} belong to its image series; it would be "
            "restored incompletely: save the frames as one (T, H, W) stack"
        )
    if raw.ndim == 3 and axes.endswith("S") and raw.shape[-1] in (3, 4):
        raise InputError(f"{path} is an RGB image ({raw.shape}); expected monochrome uint16 camera frames")
    validate_raw(raw, str(path))
    return raw


def match_calibration(
    cal: Calibration, frame_shape: tuple[int, int], roi: tuple[int, int] | None = None, binning: int = 1
) -> Calibration:
    """Maps of ``cal`` for frames of ``frame_shape`` (H, W).

    Full-sensor maps with smaller frames need the frames' top-left corner on the sensor
    (``roi=(x, y)``, in binned pixels), else a clear error.
    """
    h, w = frame_shape
    if roi is None and binning == 1:
        if cal.shape == (h, w):
            return cal
        ch, cw = cal.shape
        hint = (
            "pass --roi X,Y (the frames' top-left corner on the sensor) to crop it"
            if ch >= h and cw >= w
            else "use the calibration of this camera and ROI, or recalibrate"
        )
        raise CalibrationError(f"calibration is {cw}×{ch} but the frames are {w}×{h}; {hint}")
    x, y = roi if roi is not None else (0, 0)
    return cal.for_roi(int(x), int(y), w, h, int(binning))


# -- the work ----------------------------------------------------------------------


def denoise_array(
    raw: np.ndarray,
    calibration: Calibration,
    engine: Engine,
    *,
    tile: int = 2048,
    overlap: int = 32,
    saturation_adu: int = 65535,
    progress: bool | None = None,
) -> tuple[np.ndarray, DenoiseReport]:
    """Restore a uint16 ``(H, W)`` or ``(T, H, W)`` stack to float32 photoelectrons.

    Parameters
    ----------
    raw : np.ndarray
        Camera frames in ADU (uint16).
    calibration : Calibration
        Maps of exactly the frames' shape (see :func:`match_calibration`).
    engine : Engine
        Any engine (``make_engine(...)``).
    tile, overlap : int
        Tiling for large frames (:class:`~livedenoise.inference.tiling.TiledRestorer`).
    saturation_adu : int
        ADU value at or above which a pixel is counted as saturated (reported, not fixed).
    progress : bool, optional
        Show a progress bar over frames (None: only on a terminal).

    Returns
    -------
    restored : np.ndarray
        float32 photoelectrons, same shape as ``raw``.
    report : DenoiseReport
    """
    import time

    from tqdm import tqdm

    validate_raw(raw)
    stack = raw if raw.ndim == 3 else raw[None]
    t_frames, h, w = stack.shape
    calibration.check_frame_shape((h, w))
    converter = PhotonConverter(calibration)
    restorer = TiledRestorer(engine, tile=tile, overlap=overlap)
    out = np.empty(stack.shape, np.float32)
    frame_e = np.empty((h, w), np.float32)
    report = DenoiseReport(shape=tuple(raw.shape), frames=t_frames)
    t0 = time.perf_counter()
    bar = tqdm(
        range(t_frames), desc="denoise", unit="frame", disable=None if progress is None else not progress
    )
    for i in bar:
        n_sat = int(np.count_nonzero(stack[i] >= saturation_adu))
        if n_sat:
            report.saturated_pixels += n_sat
            report.saturated_per_frame[i] = n_sat
        converter(stack[i], frame_e)
        restorer.restore(frame_e, out[i])
        if not np.all(np.isfinite(out[i])):
            raise RuntimeError(
                f"engine {engine.name} produced NaN/Inf on frame {i}; nothing was written. "
                "Try --engine cpu or another --model, and report it"
            )
    report.seconds = time.perf_counter() - t0
    report.tiles_per_frame = restorer.n_tiles
    if report.saturated_pixels:
        msg = SATURATION_WARNING.format(
            n=report.saturated_pixels, sat=saturation_adu, f=len(report.saturated_per_frame)
        )
        report.warnings.append(msg)
        log.warning("%s", msg)
    return (out if raw.ndim == 3 else out[0]), report


def _model_info(engine: Engine) -> dict[str, Any]:
    info: dict[str, Any] = {"model": engine.model_id, "model_sha256": None}
    card = getattr(engine, "card", None)
    if card is not None:
        info["model"] = getattr(card, "id", info["model"])
        info["model_sha256"] = getattr(card, "sha256", None)
    desc = engine.describe()
    for key in ("model_sha256", "sha256", "card_sha256"):
        if info["model_sha256"] is None and desc.get(key):
            info["model_sha256"] = desc[key]
    return info


def denoise_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    calibration: Calibration,
    engine: Engine,
    raw: np.ndarray | None = None,
    calibration_source: str | None = None,
    roi: tuple[int, int] | None = None,
    binning: int = 1,
    tile: int = 2048,
    overlap: int = 32,
    saturation_adu: int = 65535,
    progress: bool | None = None,
) -> DenoiseReport:
    """Restore the TIFF ``input_path`` into ``output_path`` (float32 photoelectrons, atomic).

    All checks (readable input, uint16, shape, calibration shape, writable output
    folder) happen before the restoration starts; on any failure nothing is written.
    ``raw``: the already read and validated input stack (saves reading it twice).
    """
    import tifffile

    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and output_path.is_dir():
        raise InputError(
            f"output {output_path} is a folder; give a file name such as {output_path / 'restored.tif'}"
        )
    if output_path.exists() and input_path.exists() and output_path.resolve() == input_path.resolve():
        raise InputError("the output would overwrite the input; choose another -o")
    out_dir = output_path.parent if str(output_path.parent) else Path(".")
    check_writable_dir(out_dir, "restored TIFF")
    if raw is None:
        raw = read_raw_stack(input_path)
    else:
        validate_raw(raw, str(input_path))
    cal = match_calibration(calibration, raw.shape[-2:], roi=roi, binning=binning)
    restored, report = denoise_array(
        raw, cal, engine, tile=tile, overlap=overlap, saturation_adu=saturation_adu, progress=progress
    )
    meta: dict[str, Any] = {
        "axes": "TYX" if raw.ndim == 3 else "YX",
        "schema": RESTORED_SCHEMA,
        "livedenoise": __version__,
        "units": "photoelectrons",
        "created": datetime.now(UTC).isoformat(),
        "input": input_path.name,
        **_model_info(engine),
        "precision": engine.describe().get("precision"),
        "ensemble": engine.describe().get("ensemble", 1),
        "engine": engine.describe(),
        "calibration": cal.id,
        "calibration_source": calibration_source,
        "calibration_roi": list(cal.roi) if cal.roi else None,
        "tile": tile,
        "overlap": overlap,
        "tiles_per_frame": report.tiles_per_frame,
        "saturation_adu": saturation_adu,
        "saturated_pixels": report.saturated_pixels,
        "saturated_frames": {str(k): v for k, v in list(report.saturated_per_frame.items())[:1000]},
        "warnings": report.warnings,
    }
    with atomic_path(output_path, "restored TIFF", need_bytes=restored.nbytes + (1 << 16)) as tmp:
        tifffile.imwrite(tmp, restored, photometric="minisblack", metadata=meta)
    log.info(
        "wrote %s: %s float32 photoelectrons, %d frame(s) in %.2f s",
        output_path,
        "×".join(map(str, restored.shape)),
        report.frames,
        report.seconds,
    )
    return report
