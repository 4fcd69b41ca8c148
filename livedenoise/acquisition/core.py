"""Making Micro-Manager cores: the one place livedenoise loads a configuration (``.cfg``)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livedenoise.drivers import DRIVERS_DIR

__all__ = [
    "CameraSettings",
    "CoreError",
    "CoreSettings",
    "apply_camera_settings",
    "device_adapters",
    "find_micromanager_for",
    "load_core",
    "needs_device_adapters",
    "new_unicore",
    "sensor_shape",
]

log = logging.getLogger("livedenoise")


class CoreError(ValueError):
    """A Micro-Manager configuration cannot be loaded; the message says why and what to do."""


# a line that loads a C++ device adapter ("Device,Label,Library,Name"); "#py pyDevice,..."
# lines load Python devices and need no Micro-Manager installation
_CPP_DEVICE = re.compile(r"^\s*Device\s*,", re.MULTILINE)


_DEVICE_LINE = re.compile(r"^\s*Device\s*,\s*([^,]*?)\s*,\s*([^,]*?)\s*,", re.MULTILINE)

# what to install for the adapters a newcomer most often meets (the rest: Micro-Manager's own list)
_ADAPTER_HINTS = {
    "HamamatsuHam": "Hamamatsu's DCAM-API driver",
    "PVCAM": "Teledyne Photometrics' PVCAM",
    "AndorSDK3": "Andor's SDK3 (Andor Driver Pack)",
    "PCO_Camera": "PCO's camera SDK",
    "TeledyneCam": "Teledyne's camera SDK",
}

_OWNER_HINT = (
    "a camera has one owner at a time: if Micro-Manager's own GUI (or another program) has this "
    "camera open, close it first, or run livedenoise beside that program by attaching to its core "
    "(README: 'Attaching to a program that already drives the core')"
)


def needs_device_adapters(config_text: str | None) -> bool:
    """Whether a configuration loads C++ device adapters (a Micro-Manager installation)."""
    return config_text is not None and _CPP_DEVICE.search(config_text) is not None


def device_adapters(config_text: str) -> list[str]:
    """The C++ device adapter libraries a configuration loads, in order (``Device,Label,Library,Name``)."""
    return list(dict.fromkeys(m.group(2) for m in _DEVICE_LINE.finditer(config_text) if m.group(2)))


def _adapter_files(folder: Path, library: str) -> list[Path]:
    return [
        p for p in folder.glob(f"*mmgr_dal_{library}*") if p.suffix in {".dll", ".0", "", ".so", ".dylib"}
    ]


def find_micromanager_for(config_name: str, libraries: list[str]) -> str:
    """The Micro-Manager folder with ``libraries``; CoreError in one line saying what to install.

    pymmcore-plus looks in ``MICROMANAGER_PATH``, the folder chosen with ``mmcore use``, those
    installed with ``mmcore install`` and the usual application folders.
    """
    from pymmcore_plus import find_micromanager

    quiet = logging.getLogger("pymmcore-plus")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # its own "not found" report is many lines: ours is one
    try:
        found = find_micromanager()
    finally:
        quiet.setLevel(level)
    needed = ", ".join(libraries)
    if not found:
        raise CoreError(
            f"{config_name} needs Micro-Manager device adapters ({needed}) and pymmcore-plus found no "
            "Micro-Manager installation: install Micro-Manager 2.0 (the nightly build matching pymmcore) "
            "and set MICROMANAGER_PATH to its folder, or run `mmcore install`"
        )
    missing = [lib for lib in libraries if not _adapter_files(Path(found), lib)]
    if missing:
        extra = [f"{_ADAPTER_HINTS[m]} for {m}" for m in missing if m in _ADAPTER_HINTS]
        raise CoreError(
            f"{config_name} needs device adapter(s) {', '.join(missing)}, which the Micro-Manager "
            f"installation at {found} does not have (no mmgr_dal_{missing[0]} library): install a "
            "Micro-Manager build that includes them"
            + (f", with {'; '.join(extra)}" if extra else "")
            + ", or point MICROMANAGER_PATH at the Micro-Manager folder that has them"
        )
    return str(found)


def new_unicore(config_text: str | None = None, *, mm_path: str | None = None) -> Any:
    """A new ``UniMMCore``.

    A core for Python devices only (the simulator, the replay camera) is made without
    searching for a Micro-Manager installation, which would log a misleading error on a
    machine that has none; a configuration with C++ devices uses ``mm_path`` (see
    :func:`find_micromanager_for`), or the normal search.
    """
    from pymmcore_plus.experimental.unicore import UniMMCore

    if needs_device_adapters(config_text):
        return UniMMCore(mm_path=mm_path) if mm_path else UniMMCore()

    return UniMMCore(mm_path=str(DRIVERS_DIR))


def _one_line(exc: BaseException) -> str:
    """The message of a Micro-Manager error on one line, without pymmcore-plus's install advice."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [
        ln for ln in lines if not ln.startswith(("Discovered installations", "Please run 'mmcore install'"))
    ]
    return "; ".join(lines).replace("\x1b[0m", "") or type(exc).__name__


def load_core(config: str | os.PathLike[str], *, text: str | None = None) -> Any:
    """A ``UniMMCore`` with the configuration ``config`` loaded and a camera set.

    Parameters
    ----------
    config : path
        A Micro-Manager configuration file (``#py pyDevice`` lines load Python devices).
    text : str, optional
        Load this text instead of the file's own (the simulator adds pre-init properties);
        relative paths in it resolve as for ``config``.

    Raises
    ------
    CoreError
        The file does not exist, does not load, or sets no camera.
    """
    path = Path(config)
    if text is None and not path.is_file():
        raise CoreError(f"Micro-Manager configuration {path} does not exist")
    config_text = path.read_text(errors="replace") if text is None else text
    libraries = device_adapters(config_text)
    mm_path = find_micromanager_for(str(path), libraries) if libraries else None
    core = new_unicore(config_text, mm_path=mm_path)
    log.info("loading the Micro-Manager configuration %s ...", path)
    try:
        if text is None:
            core.loadSystemConfiguration(str(path))
        else:
            with tempfile.TemporaryDirectory(prefix="livedenoise-cfg-") as tmp:
                cfg = Path(tmp) / path.name
                cfg.write_text(text)
                core.loadSystemConfiguration(str(cfg))
    except Exception as exc:
        hint = f"; {_OWNER_HINT}" if libraries else ""
        raise CoreError(f"cannot load Micro-Manager configuration {path}: {_one_line(exc)}{hint}") from exc
    if not core.getCameraDevice():
        raise CoreError(
            f"{path} defines no camera (Core-Camera is empty); add one and set it as the core camera"
        )
    return core


class CoreSettings:
    """Remember the user's microscope settings and put every one back (a context manager).

    Remembered: exposure, auto-shutter, shutter state, ROI, XY and Z position, and every
    property changed through :meth:`set_property` (binning first, since the ROI is in binned
    pixels). On restore each setting is put back even if another fails; failures are logged
    together with ``what`` (e.g. ``"calibrate"``). pymmcore-plus's ``setContext`` covers the
    simple getters and setters but stops at the first setter that raises and does not unpack
    the XY position or the ROI, so this class does the restoring itself.
    """

    def __init__(self, core: Any, what: str = "livedenoise") -> None:
        self.core = core
        self.what = what
        self.camera = core.getCameraDevice()
        if not self.camera:
            raise CoreError(
                "no camera in this configuration (Core-Camera is empty); load a configuration with a camera"
            )
        self.shutter = core.getShutterDevice()
        self.exposure_ms = core.getExposure()
        self.auto_shutter = core.getAutoShutter()
        self.shutter_open: bool | None = None
        with contextlib.suppress(Exception):
            self.shutter_open = bool(core.getShutterOpen()) if self.shutter else None
        self.roi = tuple(core.getROI())
        self.xy = tuple(core.getXYPosition()) if core.getXYStageDevice() else None
        self.z = core.getPosition() if core.getFocusDevice() else None
        self._props: dict[tuple[str, str], str] = {}

    def set_property(self, device: str, prop: str, value: Any) -> None:
        """Set a device property, remembering its first value for :meth:`restore`."""
        core = self.core
        if not core.hasProperty(device, prop):
            raise CoreError(
                f"device {device!r} has no property {prop!r}; its properties are: "
                + ", ".join(core.getDevicePropertyNames(device))
            )
        key = (device, prop)
        old = core.getProperty(device, prop)
        core.setProperty(device, prop, value)
        self._props.setdefault(key, old)

    def restore(self) -> None:
        """Put everything back; a setting that cannot be restored is logged, the rest still are."""
        core = self.core
        errors = []

        def attempt(what: str, fn: Any, *a: Any) -> None:
            try:
                fn(*a)
            except Exception as exc:  # keep restoring the rest; report at the end
                errors.append(f"{what}: {exc}")

        with contextlib.suppress(Exception):
            if core.isSequenceRunning():
                core.stopSequenceAcquisition()
        binning = (self.camera, "Binning")
        if binning in self._props:  # binning first: the ROI is in binned pixels
            attempt("binning", core.setProperty, *binning, self._props.pop(binning))
        for (dev, prop), value in reversed(list(self._props.items())):
            attempt(f"{dev}.{prop}", core.setProperty, dev, prop, value)
        self._props.clear()
        if tuple(core.getROI()) != self.roi:
            attempt("ROI", core.setROI, *self.roi)
        attempt("exposure", core.setExposure, self.exposure_ms)
        if self.xy is not None:
            attempt("XY position", core.setXYPosition, *self.xy)
        if self.z is not None:
            attempt("Z position", core.setPosition, self.z)
        if self.shutter and self.shutter_open is not None:
            attempt("shutter", core.setShutterOpen, self.shutter_open)
        attempt("auto-shutter", core.setAutoShutter, self.auto_shutter)
        with contextlib.suppress(Exception):
            core.waitForSystem()
        if errors:
            log.error("%s: could not restore some microscope settings: %s", self.what, "; ".join(errors))

    def __enter__(self) -> CoreSettings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def sensor_shape(core: Any) -> tuple[int, int]:
    """``(H, W)`` of the camera's full sensor in unbinned pixels.

    The ROI is cleared to read the full size and set back; call it while the camera is idle.
    """
    x, y, w, h = (int(v) for v in core.getROI())
    core.clearROI()
    try:
        full_h, full_w = int(core.getImageHeight()), int(core.getImageWidth())
    finally:
        core.setROI(x, y, w, h)  # the user's ROI back
    binning = 1
    label = core.getCameraDevice()
    try:
        if label and core.hasProperty(label, "Binning"):
            m = re.match(r"\d+", str(core.getProperty(label, "Binning")))
            binning = int(m[0]) if m else 1
    except Exception:  # a camera without a readable binning is taken as unbinned
        binning = 1
    return full_h * binning, full_w * binning


@dataclass(frozen=True)
class CameraSettings:
    """Exposure, binning and ROI to give the camera; None leaves a setting as it is.

    ``roi`` is ``(x, y, width, height)`` in binned pixels (as Micro-Manager sets it), applied
    after the binning; ``roi=None`` with a new binning gives the full sensor at that binning.
    """

    exposure_ms: float | None = None
    binning: int | None = None
    roi: tuple[int, int, int, int] | None = None

    @classmethod
    def from_request(cls, req: dict[str, Any]) -> CameraSettings:
        """Read ``exposure_ms``, ``binning`` and ``roi`` of a control request; CoreError names a bad one."""
        exposure, binning, roi = req.get("exposure_ms"), req.get("binning"), req.get("roi")
        if exposure is not None and (
            isinstance(exposure, bool) or not isinstance(exposure, int | float) or not 0 < exposure <= 3.6e6
        ):
            raise CoreError(f"exposure_ms must be a number of milliseconds > 0, got {exposure!r}")
        if binning is not None and (isinstance(binning, bool) or not isinstance(binning, int) or binning < 1):
            raise CoreError(f"binning must be an integer >= 1 (1, 2, 4...), got {binning!r}")
        if roi is not None:
            ok = isinstance(roi, list | tuple) and len(roi) == 4
            ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in roi)
            if not ok or min(roi) < 0 or roi[2] < 1 or roi[3] < 1:
                raise CoreError(
                    f"roi must be [x, y, width, height] in pixels (x, y >= 0; width, height >= 1), got {roi!r}"
                )
            roi = tuple(roi)
        if exposure is None and binning is None and roi is None:
            raise CoreError('set needs at least one of "exposure_ms", "binning", "roi"')
        return cls(None if exposure is None else float(exposure), binning, roi)


def _binning_value(core: Any, camera: str, binning: int) -> str:
    """The camera's own value for ``binning`` (``2`` or ``2x2``...); CoreError lists the allowed ones."""
    if not core.hasProperty(camera, "Binning"):
        if binning == 1:
            return "1"
        raise CoreError(f"camera {camera!r} has no Binning property: it cannot bin {binning}×{binning}")
    allowed = list(core.getAllowedPropertyValues(camera, "Binning"))
    for value in allowed or [str(binning)]:
        try:
            if int(str(value).split("x")[0]) == binning:
                return str(value)
        except ValueError:
            continue
    raise CoreError(f"camera {camera!r} cannot bin {binning}: its Binning values are {', '.join(allowed)}")


def apply_camera_settings(core: Any, settings: CameraSettings) -> None:
    """Set binning, then ROI, then exposure on the core's camera (not while it streams).

    Raises
    ------
    CoreError
        A value the camera refuses; the message says what it allows.
    """
    camera = core.getCameraDevice()
    if not camera:
        raise CoreError("the core has no camera (Core-Camera is empty)")
    if settings.binning is not None:
        core.setProperty(camera, "Binning", _binning_value(core, camera, settings.binning))
        if settings.roi is None:
            core.clearROI()
    if settings.roi is not None:
        x, y, w, h = settings.roi
        core.clearROI()
        sw, sh = int(core.getImageWidth()), int(core.getImageHeight())
        if x + w > sw or y + h > sh:
            raise CoreError(
                f"ROI {w}×{h} at ({x}, {y}) does not fit the {sw}×{sh} sensor of {camera!r} (in binned "
                "pixels at the current binning); choose a smaller ROI"
            )
        try:
            core.setROI(x, y, w, h)
        except Exception as exc:
            raise CoreError(f"camera {camera!r} refused ROI {w}×{h} at ({x}, {y}): {exc}") from exc
    if settings.exposure_ms is not None:
        try:
            core.setExposure(settings.exposure_ms)
        except Exception as exc:
            raise CoreError(f"camera {camera!r} refused exposure {settings.exposure_ms:g} ms: {exc}") from exc
