"""Writing a paired dataset: :class:`PairWriter` appends pairs, each completely or not at all.

The folder format is :mod:`livedenoise.acquisition.pairs`'s (and the README's "File formats");
a pair's files are written under temporary names, renamed into place, and only then is the
index rewritten atomically, so a crash loses at most the pair in flight.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from livedenoise.acquisition.pairs import (
    _OWN_TEMPORARY,
    _PAIR_FILE,
    CALIBRATION_NAME,
    FORMAT_VERSION,
    FRAMES_DIR,
    INDEX_NAME,
    PairDataset,
    PairsError,
    QualityThresholds,
    _calibrations,
    _camera_key,
    _now,
    _pid_alive,
    check_pair,
)
from livedenoise.calibration.maps import Calibration, PhotonConverter, write_calibration
from livedenoise.util.atomic import atomic_path, check_writable_dir, current_umask, disk_full_error
from livedenoise.util.jsonutil import json_default

__all__ = ["PairWriter"]

log = logging.getLogger("livedenoise")


def _write_tiff(path: Path, array: np.ndarray, description: str) -> None:
    """Write one TIFF (the single place frames hit the disk; tests inject faults here)."""
    tifffile.imwrite(path, array, photometric="minisblack", description=description, metadata=None)


class PairWriter:
    """Append pairs to a dataset folder, each completely or not at all.

    Nothing is written until the first :meth:`add` (bad arguments and an aborted first
    pair leave no folder behind). An existing dataset is appended to if its camera,
    ROI, binning and calibration match, else :class:`PairsError` says what differs.

    Parameters
    ----------
    path : path-like
        The dataset folder (created if needed; its parent must exist and be writable).
    camera : dict
        ``label`` (device label), ``shape`` ([H, W]), ``roi`` ([x, y, w, h]),
        ``binning``, ``bit_depth``; anything else JSON-able is kept.
    calibration : Calibration
        Full-sensor maps used to convert the frames (written as ``calibration.tif``).
    calibration_file : path-like, optional
        The calibration TIFF to copy instead of writing ``calibration`` (a real rig's file).
    thresholds : QualityThresholds, optional
        Limits for the quality flags (stored in the index).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        camera: Mapping[str, Any],
        calibration: Calibration,
        calibration_file: str | os.PathLike[str] | None = None,
        thresholds: QualityThresholds | None = None,
    ) -> None:
        self.path = Path(path)
        self.camera = dict(camera)
        self.calibration_file = Path(calibration_file) if calibration_file else None
        self.thresholds = thresholds or QualityThresholds()
        shape = tuple(self.camera.get("shape") or ())
        if len(shape) != 2:
            raise PairsError(f"camera description needs shape [H, W], got {self.camera.get('shape')!r}")
        self.max_adu = int(2 ** int(self.camera.get("bit_depth", 16)) - 1)
        self.calibration, self.frame_calibration = _calibrations(calibration, self.camera)
        self._convert = PhotonConverter(self.frame_calibration)
        self.index: dict[str, Any] | None = None
        self._check_destination()

    # -- destination --------------------------------------------------------------

    def _check_destination(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise PairsError(f"output {p} exists and is not a folder; choose a new folder for the dataset")
        self._remove_stale_creations()
        if (p / INDEX_NAME).is_file():
            existing = PairDataset(p)
            self._check_compatible(existing.index)
            self.index = existing.index
            check_writable_dir(p, "paired dataset")
            self._discard_strays(existing)
        elif p.is_dir():
            if any(p.iterdir()) and not self._recover_half_made():
                raise PairsError(
                    f"output folder {p} is not empty and holds no {INDEX_NAME}; "
                    "choose a new folder (or an existing paired dataset to append to)"
                )
            check_writable_dir(p, "paired dataset")
        else:
            parent = p.parent if str(p.parent) else Path(".")
            check_writable_dir(parent, "paired dataset")

    def _creation_prefix(self) -> str:
        return f".{self.path.name}.creating-"

    def _remove_stale_creations(self) -> None:
        """Remove hidden half-built dataset folders left beside the target by a killed process."""
        parent = self.path.parent if str(self.path.parent) else Path(".")
        prefix = self._creation_prefix()
        try:
            stale = [q for q in parent.iterdir() if q.name.startswith(prefix) and q.is_dir()]
        except OSError:
            return
        for q in stale:
            pid = q.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and _pid_alive(int(pid)):
                continue  # another collection is building it right now
            log.warning("removing %s, a dataset folder a killed collection did not finish", q)
            shutil.rmtree(q, ignore_errors=True)

    def _recover_half_made(self) -> bool:
        """A folder holding only livedenoise's own files but no index: discard them; True if so."""
        p = self.path
        files: list[Path] = []
        for q in p.iterdir():
            if q.name == FRAMES_DIR and q.is_dir():
                inner = list(q.iterdir())
                if not all(f.is_file() and _PAIR_FILE.fullmatch(f.name) for f in inner):
                    return False
                files += inner
            elif q.is_file() and (q.name == CALIBRATION_NAME or _OWN_TEMPORARY.fullmatch(q.name)):
                files.append(q)
            else:
                return False
        for f in files:
            f.unlink()
        if (p / FRAMES_DIR).is_dir():
            (p / FRAMES_DIR).rmdir()
        log.warning(
            "%s was left half-made by an interrupted collection (no %s); recovered it: the incomplete "
            "first pair was discarded (%d file(s))",
            p,
            INDEX_NAME,
            len(files),
        )
        return True

    def _discard_strays(self, existing: PairDataset) -> None:
        """Remove the frames of pairs whose index entry never landed (a crash mid-pair)."""
        strays = [
            f for f in existing.stray if f.parent == self.path / FRAMES_DIR and _PAIR_FILE.fullmatch(f.name)
        ]
        for f in strays:
            f.unlink(missing_ok=True)
        if strays:
            log.warning(
                "%s: discarded %d file(s) of an incomplete pair (an interrupted collection)",
                self.path,
                len(strays),
            )

    def _check_compatible(self, index: Mapping[str, Any]) -> None:
        old_cam = index.get("camera", {})
        if _camera_key(old_cam) != _camera_key(self.camera):
            raise PairsError(
                f"cannot append to {self.path}: it holds pairs of camera {old_cam.get('label')!r} "
                f"{old_cam.get('shape')} (ROI {old_cam.get('roi')}, binning {old_cam.get('binning')}) "
                f"but this collection is {self.camera.get('label')!r} {list(self.camera['shape'])} "
                f"(ROI {self.camera.get('roi')}, binning {self.camera.get('binning')}); "
                "collect into a new folder or restore the camera settings"
            )
        old_cal = index.get("calibration", {}).get("id")
        if old_cal != self.calibration.id:
            raise PairsError(
                f"cannot append to {self.path}: it was collected with calibration {old_cal!r}, "
                f"this collection uses {self.calibration.id!r}; collect into a new folder"
            )

    def _create(self) -> dict[str, Any]:
        """Build the new dataset under a hidden name beside it, then rename it into place."""
        parent = self.path.parent if str(self.path.parent) else Path(".")
        tmp = Path(tempfile.mkdtemp(prefix=f"{self._creation_prefix()}{os.getpid()}-", dir=parent))
        try:
            (tmp / FRAMES_DIR).mkdir()
            cal_path = tmp / CALIBRATION_NAME
            if self.calibration_file is not None:
                with atomic_path(cal_path, "calibration copy") as part:
                    shutil.copyfile(self.calibration_file, part)
            else:
                write_calibration(cal_path, self.calibration)
            index = {
                "livedenoise_pairs": FORMAT_VERSION,
                "camera": self.camera,
                "calibration": {"file": CALIBRATION_NAME, "id": self.calibration.id},
                "thresholds": asdict(self.thresholds),
                "created": _now(),
                "updated": _now(),
                "pairs": [],
            }
            with atomic_path(tmp / INDEX_NAME, "pairs index") as part:
                part.write_text(json.dumps(index, indent=1, default=json_default))
            mode = 0o777 & ~current_umask()
            for d in (tmp, tmp / FRAMES_DIR):
                os.chmod(d, mode)  # mkdtemp makes it private; a dataset folder follows the umask
            if self.path.is_dir():
                self.path.rmdir()  # empty (checked); the rename needs the name free everywhere
            os.rename(tmp, self.path)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise disk_full_error(
                    f"new paired dataset {self.path} (its calibration copy and index)",
                    parent,
                    3 * 4 * self.calibration.offset_adu.size + (1 << 20),
                ) from exc
            raise
        return index

    def _write_index(self, index: Mapping[str, Any]) -> None:
        with atomic_path(self.path / INDEX_NAME, "pairs index") as tmp:
            tmp.write_text(json.dumps(index, indent=1, default=json_default))

    # -- pairs ----------------------------------------------------------------------

    @property
    def n_pairs(self) -> int:
        return 0 if self.index is None else len(self.index["pairs"])

    def to_e(self, raw: np.ndarray) -> np.ndarray:
        """Raw ADU frame(s) -> photoelectrons with the dataset's calibration."""
        raw = np.asarray(raw)
        if raw.ndim == 2:
            return self._convert(raw)
        return np.stack([self._convert(f) for f in raw])

    def add(
        self,
        short_adu: np.ndarray,
        long_adu: np.ndarray,
        *,
        short_exposure_ms: float,
        long_exposure_ms: float,
        position_um: Mapping[str, float | None] | None = None,
        t_short: Sequence[float] = (),
        t_long: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Check and write one pair; return its index entry.

        ``short_adu`` is ``(H, W)`` or ``(K, H, W)`` uint16, ``long_adu`` ``(H, W)`` uint16.
        On any error (a full disk included) nothing of this pair remains and the index
        is as it was.
        """
        short_adu = np.asarray(short_adu)
        long_adu = np.asarray(long_adu)
        if short_adu.ndim == 2:
            short_adu = short_adu[None]
        shape = tuple(self.camera["shape"])
        if short_adu.shape[1:] != shape or long_adu.shape != shape:
            raise PairsError(
                f"pair frames are {short_adu.shape[1:]} (short) and {long_adu.shape} (long) "
                f"but this dataset is {shape}"
            )
        if short_adu.dtype != np.uint16 or long_adu.dtype != np.uint16:
            raise PairsError(f"pair frames must be uint16 ADU, got {short_adu.dtype} and {long_adu.dtype}")
        if not (0 < short_exposure_ms < long_exposure_ms):
            raise PairsError(
                f"short exposure ({short_exposure_ms} ms) must be > 0 and shorter than the "
                f"long one ({long_exposure_ms} ms)"
            )
        ratio = float(long_exposure_ms) / float(short_exposure_ms)
        quality, flags = check_pair(
            self.to_e(short_adu),
            self.to_e(long_adu),
            long_adu,
            exposure_ratio=ratio,
            max_adu=self.max_adu,
            thresholds=self.thresholds,
        )
        if self.index is None:
            self.index = self._create()
        index = self.index
        pair_id = max((p["id"] for p in index["pairs"]), default=-1) + 1
        names = {role: f"{FRAMES_DIR}/pair-{pair_id:05d}-{role}.tif" for role in ("short", "long")}
        entry = {
            "id": pair_id,
            "short": names["short"],
            "long": names["long"],
            "short_exposure_ms": float(short_exposure_ms),
            "n_short": int(short_adu.shape[0]),
            "long_exposure_ms": float(long_exposure_ms),
            "ratio": ratio,
            "position_um": dict(position_um or {"x": None, "y": None, "z": None}),
            "t_short": [float(t) for t in t_short],
            "t_long": t_long,
            "quality": quality,
            "flags": flags,
        }
        if extra:
            entry.update(extra)
        written: list[Path] = []
        try:
            for role, arr in (("short", short_adu), ("long", long_adu)):
                final = self.path / names[role]
                tmp = final.with_name("." + final.name + ".part")
                written.append(tmp)
                desc = json.dumps(
                    {"livedenoise_pair": pair_id, "role": role, "exposure_ms": entry[f"{role}_exposure_ms"]}
                )
                _write_tiff(tmp, arr, desc)
            for role in ("short", "long"):
                final = self.path / names[role]
                os.replace(final.with_name("." + final.name + ".part"), final)
                written.append(final)
            new_index = dict(index, pairs=[*index["pairs"], entry], updated=_now())
            self._write_index(new_index)
        except BaseException as exc:
            for p in written:
                p.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise disk_full_error(
                    f"pair {pair_id} ({short_adu.nbytes + long_adu.nbytes} bytes of frames)",
                    self.path,
                    short_adu.nbytes + long_adu.nbytes + (1 << 16),
                    note=f"the dataset keeps its {len(index['pairs'])} complete pairs: collect again to append",
                ) from exc
            raise
        self.index = new_index
        if flags:
            log.warning("pair %s flagged %s: %s", pair_id, ",".join(flags), quality)
        return entry
