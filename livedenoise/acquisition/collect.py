"""Collect short/long exposure pairs through the pymmcore-plus MDA machinery.

Each pair is a few :class:`useq.MDAEvent` at one stage position: ``K`` short exposures
and one long exposure (``MDAEvent.exposure`` per event), fed to ``core.mda.run`` as a
generator (queue-driven acquisition: the engine does not merge or reorder them). Frames
come back through ``core.mda.events.frameReady``; a pair is written to the dataset
(:class:`livedenoise.acquisition.writer.PairWriter`) as soon as its last frame arrives.

Exposures are batched: consecutive pairs alternate their order (long, shorts | shorts,
long | long, shorts ...), so one exposure change is made per pair instead of two (a real
adapter can take ~100 ms per change). The first frame of the run is a long exposure, so
a saturating long exposure is caught before anything is written.

The user's exposure, stage position and shutter settings are restored afterwards, on
errors and Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.acquisition.core import CoreSettings
from livedenoise.acquisition.pairs import PairsError, QualityThresholds
from livedenoise.acquisition.writer import PairWriter
from livedenoise.calibration.maps import Calibration
from livedenoise.util.paths import PathError, confine

__all__ = [
    "CameraBusyError",
    "CollectCancelled",
    "CollectRequest",
    "SaturationError",
    "camera_description",
    "collect_pairs",
    "parse_positions",
    "validate_request",
]

log = logging.getLogger("livedenoise")

ProgressFn = Callable[[int, int], None]

ABORT_SATURATED_FRACTION = 1e-3
"""A first long frame with more saturated pixels than this stops the collection (fewer: the
pair is only flagged, see :class:`livedenoise.acquisition.pairs.QualityThresholds`)."""


class CameraBusyError(PairsError):
    """The camera is already acquiring (live mode or another MDA)."""


class SaturationError(PairsError):
    """The long exposure saturates the camera."""


class CollectCancelled(RuntimeError):
    """The collection was stopped before all pairs were taken (the dataset stays valid)."""


# -- arguments ------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectRequest:
    """Validated arguments of one collection.

    Attributes
    ----------
    short_ms, long_ms : float
        Exposures in milliseconds, ``0 < short_ms < long_ms``.
    pairs : int
        Number of pairs to take (>= 1).
    shorts_per_pair : int
        Short exposures per pair (>= 1).
    output : Path
        The dataset folder (created or appended to).
    """

    short_ms: float
    long_ms: float
    pairs: int
    output: Path
    shorts_per_pair: int = 1

    @property
    def ratio(self) -> float:
        return self.long_ms / self.short_ms


def _number(name: str, value: Any, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise PairsError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise PairsError(f"{name} must be finite, got {value!r}")
    if integer and int(value) != value:
        raise PairsError(f"{name} must be an integer, got {value!r}")
    return value


def validate_request(
    short_ms: Any, long_ms: Any, pairs: Any, output: Any, shorts_per_pair: Any = 1
) -> CollectRequest:
    """Check collection arguments (from the CLI or a control request); raise :class:`PairsError`.

    Nothing is touched on disk.
    """
    missing = [
        n
        for n, v in (("short_ms", short_ms), ("long_ms", long_ms), ("pairs", pairs), ("output", output))
        if v is None
    ]
    if missing:
        raise PairsError(
            f"missing {', '.join(missing)}: give short_ms, long_ms (exposures in ms), pairs "
            "(how many) and output (dataset folder)"
        )
    s = float(_number("short_ms", short_ms))
    lng = float(_number("long_ms", long_ms))
    n = int(_number("pairs", pairs, integer=True))
    k = int(_number("shorts_per_pair", shorts_per_pair, integer=True))
    if s <= 0:
        raise PairsError(f"short exposure must be > 0 ms, got {s:g} ms")
    if s >= lng:
        raise PairsError(
            f"short exposure ({s:g} ms) must be shorter than the long exposure ({lng:g} ms); "
            "the long one is the training target, e.g. --short-ms 10 --long-ms 100"
        )
    if n < 1:
        raise PairsError(f"pairs must be >= 1, got {n}")
    if k < 1:
        raise PairsError(f"shorts_per_pair must be >= 1, got {k}")
    if not isinstance(output, (str, Path)) or not str(output).strip():
        raise PairsError(f"output must be a folder path, got {output!r}")
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise PairsError(f"output {out} exists and is not a folder; choose a folder for the dataset")
    return CollectRequest(short_ms=s, long_ms=lng, pairs=n, output=out, shorts_per_pair=k)


MAX_POSITIONS_FILE_BYTES = 1 << 20
"""Largest positions list accepted (1 MiB: tens of thousands of positions)."""


def parse_positions(
    spec: Sequence[str] | str | None, core: Any, *, root: str | os.PathLike[str] | None = None
) -> list[dict[str, float | None]] | None:
    """Stage positions (µm) from ``current``, ``list FILE`` or ``grid NxM STEP_UM``.

    ``None`` or ``current`` means no stage moves (returns ``None``). A list file holds
    one position per line, ``x y`` or ``x y z`` (commas or spaces; ``#`` comments), at most
    :data:`MAX_POSITIONS_FILE_BYTES`. A grid of N columns × M rows, ``STEP_UM`` apart, is
    centred on the current position. With ``root`` (control requests), the list file must
    lie inside that folder (:func:`livedenoise.util.paths.confine`). Errors name the line but
    never quote the file's contents.
    """
    if spec is None:
        return None
    parts = spec.split() if isinstance(spec, str) else list(spec)
    if not parts or parts[0] == "current":
        if len(parts) > 1:
            raise PairsError(f"--positions current takes no arguments, got {' '.join(parts)!r}")
        return None
    if parts[0] == "list":
        _positions_file(parts, root)  # an invalid or outside path is refused first
    xy = core.getXYStageDevice()
    if not xy:
        raise PairsError(
            f"--positions {parts[0]} needs an XY stage, and the configuration has none; "
            "use --positions current"
        )
    if parts[0] == "list":
        path = _positions_file(parts, root)
        if not path.is_file():
            raise PairsError(f"positions file {path} does not exist")
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_POSITIONS_FILE_BYTES + 1)
        except OSError as exc:
            raise PairsError(f"positions file {path} cannot be read ({exc.strerror})") from None
        if len(data) > MAX_POSITIONS_FILE_BYTES:
            raise PairsError(
                f"positions file {path} is larger than {MAX_POSITIONS_FILE_BYTES} bytes; a list of stage "
                "positions ('x y' or 'x y z' in µm per line) is a few kB"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PairsError(
                f"positions file {path} is not UTF-8 text; expected one 'x y' or 'x y z' (µm) per line"
            ) from None
        out: list[dict[str, float | None]] = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields_ = [v for v in re.split(r"[,\s]+", line) if v]
            try:
                vals = [float(v) for v in fields_]
            except ValueError:
                vals = []
            if len(vals) not in (2, 3) or not all(math.isfinite(v) for v in vals):
                what = f"{len(fields_)} field(s)" if not vals else f"{len(vals)} number(s)"
                raise PairsError(
                    f"{path} line {n}: expected 'x y' or 'x y z' (2 or 3 finite numbers in µm), "
                    f"found {what} that do not fit; fix that line"
                )
            out.append({"x": vals[0], "y": vals[1], "z": vals[2] if len(vals) == 3 else None})
        if not out:
            raise PairsError(f"positions file {path} lists no positions")
        return out
    if parts[0] == "grid":
        m = re.fullmatch(r"(\d+)x(\d+)", parts[1]) if len(parts) == 3 else None
        try:
            step = float(parts[2]) if m else 0.0
        except ValueError:
            step = 0.0
        if not m or step <= 0 or int(m[1]) < 1 or int(m[2]) < 1:
            raise PairsError(
                f"expected --positions grid NxM STEP_UM (e.g. grid 3x2 50), got {' '.join(parts)!r}"
            )
        nx, ny = int(m[1]), int(m[2])
        x0, y0 = core.getXYPosition()
        grid = []
        for j in range(ny):
            cols = range(nx) if j % 2 == 0 else range(nx - 1, -1, -1)  # snake: short moves
            for i in cols:
                grid.append(
                    {"x": x0 + (i - (nx - 1) / 2) * step, "y": y0 + (j - (ny - 1) / 2) * step, "z": None}
                )
        return grid
    raise PairsError(f"unknown --positions {parts[0]!r}: use current, list FILE or grid NxM STEP_UM")


def _positions_file(parts: Sequence[str], root: str | os.PathLike[str] | None) -> Path:
    if len(parts) != 2:
        raise PairsError("--positions list takes one file: --positions list POSITIONS.txt")
    try:
        return Path(parts[1]) if root is None else confine(parts[1], [root], what="positions file")
    except PathError as exc:
        raise PairsError(f"{exc}; put the positions file in the data folder") from None


def camera_description(core: Any) -> dict[str, Any]:
    """What the dataset records of the camera: label, shape, ROI, binning, bit depth."""
    label = core.getCameraDevice()
    if not label:
        raise PairsError("the configuration has no camera device; load a configuration with a camera")
    binning = 1
    with contextlib.suppress(Exception):
        if core.hasProperty(label, "Binning"):
            binning = int(re.match(r"\d+", str(core.getProperty(label, "Binning")))[0])  # type: ignore[index]
    x, y, w, h = (int(v) for v in core.getROI())
    return {
        "label": label,
        "shape": [int(core.getImageHeight()), int(core.getImageWidth())],
        "roi": [x, y, w, h],
        "binning": binning,
        "bit_depth": int(core.getImageBitDepth()),
    }


# -- the collection -------------------------------------------------------------------


@dataclass
class _Run:
    """Shared state between the event generator, the frame handler and the caller."""

    request: CollectRequest
    writer: PairWriter
    positions: list[dict[str, float | None]] | None
    here: dict[str, float | None]
    progress: ProgressFn | None
    cancel: threading.Event
    check_saturation: bool
    frames: dict[int, dict[str, Any]] = field(default_factory=dict)
    written: int = 0
    flagged: int = 0
    incomplete: int = 0
    error: BaseException | None = None
    first_long_checked: bool = False

    def position(self, i: int) -> dict[str, float | None]:
        if not self.positions:
            return dict(self.here)
        p = self.positions[i * len(self.positions) // self.request.pairs]
        return {"x": p["x"], "y": p["y"], "z": p["z"] if p.get("z") is not None else self.here.get("z")}


def _events(run: _Run) -> Iterator[Any]:
    import useq

    req = run.request
    for i in range(req.pairs):
        pos = run.position(i)
        roles = ["short"] * req.shorts_per_pair
        roles = ["long", *roles] if i % 2 == 0 else [*roles, "long"]
        k = 0
        for role in roles:
            if run.cancel.is_set() or run.error is not None:
                return
            moves: dict[str, Any] = {}
            if run.positions:
                moves = {"x_pos": pos["x"], "y_pos": pos["y"]}
                if pos.get("z") is not None:
                    moves["z_pos"] = pos["z"]
            event: dict[str, Any] = {
                "index": {"p": i * len(run.positions or [0]) // req.pairs, "t": i},
                "exposure": req.short_ms if role == "short" else req.long_ms,
                "metadata": {"livedenoise_pair": i, "role": role, "k": k if role == "short" else 0},
                **moves,
            }
            yield useq.MDAEvent(**event)
            if role == "short":
                k += 1


def _on_frame(run: _Run, core: Any, img: np.ndarray, event: Any, meta: Mapping[str, Any]) -> None:
    md = event.metadata or {}
    i = md.get("livedenoise_pair")
    if i is None or run.error is not None:
        return
    try:
        # a pair whose frames never all came (a failed snap) is dropped, not written
        for stale in [j for j in run.frames if j < i]:
            run.frames.pop(stale)
            run.incomplete += 1
            log.warning("pair %s is incomplete (a frame was not acquired); not written", stale)
        buf = run.frames.setdefault(i, {"short": {}, "long": None, "t_short": {}, "t_long": None, "meta": {}})
        frame = np.array(img, dtype=np.uint16, copy=True)
        now = time.time()
        if md["role"] == "long":
            if run.check_saturation and not run.first_long_checked:
                run.first_long_checked = True
                frac = float(np.count_nonzero(frame >= run.writer.max_adu)) / frame.size
                if frac > max(ABORT_SATURATED_FRACTION, run.writer.thresholds.max_saturated_fraction):
                    raise SaturationError(
                        f"the long exposure ({run.request.long_ms:g} ms) saturates {100 * frac:.2g}% of "
                        f"the pixels (at {run.writer.max_adu} ADU); shorten --long-ms or lower the light"
                    )
            buf["long"], buf["t_long"] = frame, now
        else:
            buf["short"][md["k"]], buf["t_short"][md["k"]] = frame, now
        if "SimFrame" in meta:
            buf["meta"].setdefault("sim_frames", {})[f"{md['role']}{md['k']}"] = meta["SimFrame"]
        if buf["long"] is None or len(buf["short"]) < run.request.shorts_per_pair:
            return
        run.frames.pop(i)
        ks = sorted(buf["short"])
        entry = run.writer.add(
            np.stack([buf["short"][k] for k in ks]),
            buf["long"],
            short_exposure_ms=run.request.short_ms,
            long_exposure_ms=run.request.long_ms,
            position_um=run.position(i),
            t_short=[buf["t_short"][k] for k in ks],
            t_long=buf["t_long"],
            extra=buf["meta"] or None,
        )
        run.written += 1
        run.flagged += bool(entry["flags"])
        if run.progress is not None:
            run.progress(run.written, run.request.pairs)
    except BaseException as exc:
        run.error = exc
        core.mda.cancel()


def _space_needed(req: CollectRequest, camera: Mapping[str, Any], writer: PairWriter) -> tuple[int, str]:
    """Bytes a collection needs, and what they are: the frames, plus the calibration for a new dataset."""
    h, w = camera["shape"]
    frames = req.pairs * (req.shorts_per_pair + 1) * h * w * 2
    parts = [f"{frames / 1e6:.1f} MB of frames"]
    need = frames + (1 << 20)  # + the index and TIFF headers
    if writer.index is None:  # a new dataset also stores its calibration; an existing one has it
        cal = 3 * 4 * writer.calibration.offset_adu.size
        need += cal
        parts.append(f"{cal / 1e6:.1f} MB for the calibration copy")
    return need, " + ".join(parts)


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def collect_pairs(
    core: Any,
    output: str | Path,
    *,
    short_ms: float,
    long_ms: float,
    pairs: int,
    calibration: Calibration,
    shorts_per_pair: int = 1,
    positions: Sequence[Mapping[str, float | None]] | None = None,
    calibration_file: str | Path | None = None,
    thresholds: QualityThresholds | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    stop_when: Callable[[], bool] | None = None,
    check_saturation: bool = True,
) -> dict[str, Any]:
    """Take ``pairs`` short/long pairs with ``core`` and append them to the dataset ``output``.

    Parameters
    ----------
    core : pymmcore_plus.CMMCorePlus
        A loaded core (``UniMMCore`` with the simulated camera, or a real rig), idle.
    output : path-like
        The dataset folder; created on the first complete pair, appended to if it exists.
    short_ms, long_ms, pairs, shorts_per_pair
        As in :func:`validate_request`.
    calibration : Calibration
        The camera's maps (full sensor, or already cropped to the current ROI).
    positions : list of dict, optional
        Stage positions ``{"x", "y", "z"}`` in µm (:func:`parse_positions`); None = stay.
    calibration_file : path-like, optional
        The calibration TIFF to copy into the dataset (else ``calibration`` is written).
    progress : callable, optional
        ``progress(pairs_done, pairs_total)``, called on the acquisition thread.
    cancel : threading.Event, optional
        Set it to stop after the frame in flight (raises :class:`CollectCancelled`).
    stop_when : callable, optional
        Polled every 0.1 s; True stops like ``cancel`` (e.g. "the daemon is stopping").

    Returns
    -------
    dict
        ``output``, ``pairs_written``, ``pairs_in_dataset``, ``flagged``, ``incomplete``,
        ``seconds``.

    Raises
    ------
    PairsError
        Bad arguments, an incompatible existing dataset, too little disk space, a busy
        camera (:class:`CameraBusyError`), a saturating long exposure (:class:`SaturationError`).
    OSError
        The disk filled up mid-run (the dataset keeps its complete pairs).
    CollectCancelled, KeyboardInterrupt
        Stopped early; the complete pairs are kept.
    """
    req = validate_request(short_ms, long_ms, pairs, output, shorts_per_pair)
    if core.isSequenceRunning() or core.mda.is_running():
        raise CameraBusyError(
            "the camera is busy with another acquisition (live mode or an MDA is running); "
            "stop it first (or ask the daemon: the collect_pairs command pauses its stream)"
        )
    camera = camera_description(core)
    writer = PairWriter(
        req.output,
        camera=camera,
        calibration=calibration,
        calibration_file=calibration_file,
        thresholds=thresholds,
    )
    need, detail = _space_needed(req, camera, writer)
    free = _free_bytes(req.output)
    if free < need * 1.1:
        raise PairsError(
            f"not enough disk space for {req.pairs} pairs of {camera['shape'][1]}×{camera['shape'][0]}: "
            f"need about {need / 1e6:.1f} MB ({detail}), {free / 1e6:.1f} MB free at {req.output}; "
            "free space or collect fewer pairs"
        )
    settings = CoreSettings(core, what="collect-pairs")
    here = {
        "x": settings.xy[0] if settings.xy is not None else None,
        "y": settings.xy[1] if settings.xy is not None else None,
        "z": settings.z,
    }
    run = _Run(
        req,
        writer,
        [dict(p) for p in positions] if positions else None,
        here,
        progress,
        cancel or threading.Event(),
        check_saturation,
    )

    def on_frame(img: np.ndarray, event: Any, meta: Mapping[str, Any]) -> None:
        _on_frame(run, core, img, event, meta)

    failure: list[BaseException] = []

    def worker() -> None:
        try:
            core.mda.run(_events(run))
        except BaseException as exc:
            failure.append(exc)

    t0 = time.perf_counter()
    log.info(
        "collecting %d pairs (%g ms / %g ms, %d short per pair) into %s",
        req.pairs,
        req.short_ms,
        req.long_ms,
        req.shorts_per_pair,
        req.output,
    )
    if settings.auto_shutter and not core.getShutterDevice():
        core.setAutoShutter(False)  # MDA would try to close a shutter that is not there
    core.mda.events.frameReady.connect(on_frame)
    thread = threading.Thread(target=worker, name="livedenoise-collect", daemon=True)
    try:
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.1)
                if stop_when is not None and not run.cancel.is_set() and stop_when():
                    run.cancel.set()
                if run.cancel.is_set() and core.mda.is_running():
                    core.mda.cancel()
        except BaseException:  # Ctrl-C: stop the MDA, keep the complete pairs
            run.cancel.set()
            core.mda.cancel()
            thread.join(30)
            raise
    finally:
        core.mda.events.frameReady.disconnect(on_frame)
        settings.restore()
    run.incomplete += len(run.frames)
    if run.error is not None:
        raise run.error
    if failure:
        raise failure[0]
    result = {
        "output": str(req.output),
        "pairs_written": run.written,
        "pairs_in_dataset": writer.n_pairs,
        "flagged": run.flagged,
        "incomplete": run.incomplete,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if run.cancel.is_set() and run.written < req.pairs:
        raise CollectCancelled(
            f"collection stopped after {run.written} of {req.pairs} pairs; the dataset at "
            f"{req.output} holds {writer.n_pairs} complete pairs"
        )
    log.info(
        "collected %d pairs (%d flagged, %d incomplete) in %.1f s",
        run.written,
        run.flagged,
        run.incomplete,
        result["seconds"],
    )
    return result
