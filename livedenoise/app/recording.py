"""Record a ``livedenoise/1`` topic to disk as an OME-TIFF time series, streamed frame by frame.

The file is a BigTIFF (no 4 GB limit) holding one contiguous ``(T, Y, X)`` series:

- ``tifffile.imread(path)`` returns the whole ``(T, Y, X)`` stack; Fiji (Bio-Formats) and
  napari open it as a time series, with the pixel size in µm when it is known.
- The first page's ImageDescription is OME-XML: per plane ``DeltaT`` (s since the first frame's
  ``t_acquired``) and ``ExposureTime`` (ms); a ``MapAnnotation`` (namespace
  ``livedenoise.recording/1``) with the topic, units, frame count, ``complete`` and ``stopped_by``;
  and a ``CommentAnnotation`` (namespace ``livedenoise.headers/1``) with every frame's header,
  one JSON object a line (``frame``, ``seq``, ``t_acquired``, ``exposure_ms``, ``model``,
  ``calibration``, ``qc`` when present, ...). :func:`read_recording` returns both.

Frames go to ``.NAME.PID.part`` beside the output as they arrive (nothing is held in memory but
the headers, which stream to ``.NAME.PID.headers.part``); :meth:`StackRecorder.close` writes the
metadata and renames the file into place. A stop by signal still closes the file, marked
``complete: false``. A process killed outright (SIGKILL, power loss) leaves its ``.part`` files:
the next recording to the same name removes them and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.util.atomic import check_writable_dir

__all__ = [
    "RECORDING_SCHEMA",
    "RecordingExists",
    "StackRecorder",
    "output_paths",
    "read_recording",
    "remove_stale_parts",
]

log = logging.getLogger("livedenoise")

RECORDING_SCHEMA = "livedenoise.recording/1"
HEADERS_NAMESPACE = "livedenoise.headers/1"
PLACEHOLDER = "livedenoise recording in progress (a file left like this was cut short)"


class RecordingExists(FileExistsError):
    """The output file exists and ``force`` was not given."""


def output_paths(path: str | os.PathLike[str], topics: list[str]) -> dict[str, Path]:
    """One output path per topic: ``path`` itself for one topic, ``NAME.TOPIC.tif`` for several.

    ``rec.ome.tif`` with raw and denoised gives ``rec.raw.ome.tif`` and ``rec.denoised.ome.tif``.
    """
    path = Path(path)
    if len(topics) == 1:
        return {topics[0]: path}
    name = path.name
    m = re.search(r"(\.ome)?\.tiff?$", name, re.IGNORECASE)
    stem, suffix = (name[: m.start()], name[m.start() :]) if m else (name, ".tif")
    return {t: path.with_name(f"{stem}.{t}{suffix}") for t in topics}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_parts(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.part`` files that a killed recording to ``path`` left; returns them.

    Parts of a recording that is still running (its process is alive) are left alone.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)(\.headers)?\.part$")
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue  # not a part file of this name, or one that a live recorder is writing
        size = p.stat().st_size
        p.unlink(missing_ok=True)
        removed.append(p)
        log.warning(
            "removed %s (%.1f MB), left by a recording to %s that was killed (pid %s) before it "
            "could finish; its frames cannot be recovered",
            p,
            size / 1e6,
            path,
            m.group(1),
        )
    return removed


class StackRecorder:
    """Stream one topic's frames into an OME-TIFF time series at ``path``.

    Parameters
    ----------
    path
        The output file (``.tif`` or ``.ome.tif``).
    topic
        The topic recorded (``raw``, ``denoised`` or ``truth``); written into the metadata.
    force
        Replace an existing ``path`` (otherwise :class:`RecordingExists` is raised at once).
    pixel_size_um
        Pixel size in the sample (µm), if known; a header's ``pixel_size_um`` is used otherwise.

    Frames of another shape than the first (an ROI change mid-recording) are not written: they are
    counted in ``skipped_other_shape`` and a warning says so once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        topic: str,
        *,
        force: bool = False,
        pixel_size_um: float | None = None,
    ) -> None:
        import tifffile

        self.path = Path(path)
        self.topic = topic
        self.pixel_size_um = pixel_size_um
        folder = self.path.parent if str(self.path.parent) else Path(".")
        check_writable_dir(folder, "recording")
        if self.path.exists() and not force:
            raise RecordingExists(f"{self.path} exists; choose another name or pass --force to replace it")
        remove_stale_parts(self.path)
        pid = os.getpid()
        self.tmp = folder / f".{self.path.name}.{pid}.part"
        self.tmp_headers = folder / f".{self.path.name}.{pid}.headers.part"
        self._headers = open(self.tmp_headers, "w", encoding="utf-8")  # noqa: SIM115 (closed in close/abort)
        try:
            self._writer = tifffile.TiffWriter(self.tmp, bigtiff=True)
        except BaseException:
            self._headers.close()
            self.tmp_headers.unlink(missing_ok=True)
            raise
        self.frames = 0
        self.skipped_other_shape = 0
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None
        self._t0: float | None = None
        self._delta_t: list[float] = []
        self._exposure: list[float] = []
        self._closed = False

    def write(self, header: Mapping[str, Any], array: np.ndarray) -> bool:
        """Append one frame (its header is kept); False if it was skipped for its shape."""
        if self._shape is None:
            self._shape, self._dtype = tuple(array.shape), array.dtype
            self._t0 = float(header.get("t_acquired", 0.0))
            if self.pixel_size_um is None and isinstance(header.get("pixel_size_um"), (int, float)):
                self.pixel_size_um = float(header["pixel_size_um"])
        elif tuple(array.shape) != self._shape or array.dtype != self._dtype:
            if self.skipped_other_shape == 0:
                log.warning(
                    "%s: frame %s is %s %s, the recording is %s %s (the ROI changed?): frames of another "
                    "shape are not recorded (counted in the file's metadata)",
                    self.path,
                    header.get("frame"),
                    list(array.shape),
                    array.dtype,
                    list(self._shape),
                    self._dtype,
                )
            self.skipped_other_shape += 1
            return False
        self._writer.write(
            np.ascontiguousarray(array),
            contiguous=True,
            photometric="minisblack",
            metadata=None,
            description=PLACEHOLDER if self.frames == 0 else None,
        )
        self._headers.write(json.dumps(dict(header), separators=(",", ":")) + "\n")
        t0 = self._t0 if self._t0 is not None else 0.0
        self._delta_t.append(round(float(header.get("t_acquired", t0)) - t0, 6))
        self._exposure.append(float(header.get("exposure_ms", 0.0)))
        self.frames += 1
        return True

    def close(self, *, complete: bool, stopped_by: str) -> Path | None:
        """Write the metadata and move the file into place; None (nothing written) if no frame came.

        ``complete`` says whether the recording ended as asked (``--count``/``--seconds``);
        ``stopped_by`` says what ended it (``count``, ``seconds``, ``SIGINT``, ``SIGTERM``, ...).
        """
        import tifffile

        if self._closed:
            return self.path if self.frames else None
        self._closed = True
        self._writer.close()
        self._headers.close()
        if self.frames == 0:
            self._remove_parts()
            return None
        try:
            xml = self._omexml(complete=complete, stopped_by=stopped_by)
            tifffile.tiffcomment(self.tmp, xml.encode("utf-8"))
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        except BaseException:
            self._remove_parts()
            raise
        self.tmp_headers.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Close and remove the partial files (after an error): nothing is left behind."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._writer.close()
            self._headers.close()
        self._remove_parts()

    def _remove_parts(self) -> None:
        self.tmp.unlink(missing_ok=True)
        self.tmp_headers.unlink(missing_ok=True)

    def _omexml(self, *, complete: bool, stopped_by: str) -> str:
        import tifffile

        assert self._shape is not None and self._dtype is not None
        headers = self.tmp_headers.read_text(encoding="utf-8").rstrip("\n")
        first = json.loads(headers.split("\n", 1)[0])
        n = self.frames
        summary: dict[str, Any] = {
            "schema": RECORDING_SCHEMA,
            "topic": self.topic,
            "units": first.get("units"),
            "frames": n,
            "complete": complete,
            "stopped_by": stopped_by,
            "skipped_other_shape": self.skipped_other_shape,
            "camera": first.get("camera"),
            "model": first.get("model"),
            "calibration": first.get("calibration"),
            "pixel_size_um": self.pixel_size_um,
        }
        meta: dict[str, Any] = {
            "Name": f"livedenoise {self.topic}",
            "Plane": {
                "DeltaT": self._delta_t,
                "DeltaTUnit": ["s"] * n,
                "ExposureTime": self._exposure,
                "ExposureTimeUnit": ["ms"] * n,
            },
            "MapAnnotation": {
                "Namespace": RECORDING_SCHEMA,
                "Value": {k: json.dumps(v) for k, v in summary.items()},
            },
            "CommentAnnotation": {"Namespace": HEADERS_NAMESPACE, "Value": headers},
        }
        if self.pixel_size_um:
            for ax in "XY":
                meta[f"PhysicalSize{ax}"] = self.pixel_size_um
                meta[f"PhysicalSize{ax}Unit"] = "µm"
        height, width = self._shape
        omexml = tifffile.OmeXml(Creator="livedenoise")
        omexml.addimage(
            dtype=self._dtype,
            shape=(n, *self._shape),
            storedshape=(n, 1, 1, height, width, 1),
            axes="TYX",
            **meta,
        )
        return omexml.tostring(declaration=True)

    def __enter__(self) -> StackRecorder:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close(complete=True, stopped_by="end")


def read_recording(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary and the per-frame headers of a recording written by :class:`StackRecorder`.

    Returns ``(summary, headers)``: ``summary`` has ``topic``, ``units``, ``frames``, ``complete``,
    ``stopped_by``, ...; ``headers`` holds one dict per frame, in the order of the stack.
    """
    import tifffile

    with tifffile.TiffFile(path) as tf:
        description = tf.pages.first.description
    ome = tifffile.xml2dict(description).get("OME", {})
    annotations = ome.get("StructuredAnnotations", {})
    summary: dict[str, Any] = {}
    headers: list[dict[str, Any]] = []
    for entry in _as_list(annotations.get("MapAnnotation")):
        if entry.get("Namespace") == RECORDING_SCHEMA:
            for m in _as_list(entry["Value"]["M"]):
                summary[m["K"]] = _parse_value(m.get("value"))
    for entry in _as_list(annotations.get("CommentAnnotation")):
        if entry.get("Namespace") == HEADERS_NAMESPACE:
            headers = [json.loads(line) for line in str(entry["Value"]).splitlines() if line]
    if not summary:
        raise ValueError(f"{path} is not a livedenoise recording (no {RECORDING_SCHEMA} annotation)")
    return summary, headers


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _parse_value(v: Any) -> Any:
    # xml2dict already turns "true", "3", "1.5" into Python values; the rest is JSON text
    if isinstance(v, str):
        with contextlib.suppress(ValueError):
            return json.loads(v)
    return v
