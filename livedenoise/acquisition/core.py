"""Making Micro-Manager cores."""

from __future__ import annotations

import re
from typing import Any

from livedenoise.drivers import DRIVERS_DIR

__all__ = ["needs_device_adapters", "new_unicore"]

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

    return UniMMCore(mm_path=str(DRIVERS_DIR))
