"""Making Micro-Manager cores."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["needs_device_adapters", "new_unicore", "sensor_shape"]

# a line that loads a C++ device adapter ("Device,Label,Library,Name"); "#py pyDevice,..."
# lines load Python devices and need no Micro-Manager installation
_CPP_DEVICE = re.compile(r"^\s*Device\s*,", re.MULTILINE)


def needs_device_adapters(config_text: str | None) -> bool:
    """Whether a configuration loads C++ device adapters (a Micro-Manager installation)."""
    return bool(config_text) and _CPP_DEVICE.search(config_text) is not None


def new_unicore(config_text: str | None = None) -> Any:
    """A new ``UniMMCore``.

    A core for Python devices only (the simulator, the replay camera) is made without
    searching for a Micro-Manager installation, which would log a misleading error on a
    machine that has none; a configuration with C++ devices gets the normal search.
    """
    from pymmcore_plus.experimental.unicore import UniMMCore

    if needs_device_adapters(config_text):
        return UniMMCore()
    from livedenoise.drivers import DRIVERS_DIR

    return UniMMCore(mm_path=str(DRIVERS_DIR))


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
