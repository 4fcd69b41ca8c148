"""The simulated shutter and the light paths that couple it to simulated cameras.

Python devices get no handle on the core or on each other, and UniMMCore's auto-shutter does
not operate Python shutters. So shutters register here under their pre-init
``Illumination`` name, and a camera sees light unless a shutter of the same name, loaded in
the same core, is closed. "Same core" is told by the core's own ``propertyChanged`` signal,
which UniMMCore hands to every device it loads: cores living side by side (tests, two
programs in one process) never darken each other.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from pymmcore_plus.experimental.unicore import ShutterDevice, pymm_property

__all__ = ["SimShutter", "light_on"]


class _Choices(tuple):
    """Allowed values that also accept their string form ("2" for 2), as .cfg files give."""

    def __contains__(self, value: object) -> bool:
        return any(str(value).strip() == str(c) for c in self)


_LIGHT_PATHS: dict[str, weakref.WeakSet[SimShutter]] = {}
_LIGHT_LOCK = threading.Lock()


def _core_token(dev: Any) -> object | None:
    proxy = getattr(dev, "_core_proxy_", None)
    if proxy is None:
        return None
    try:
        return proxy.events.propertyChanged
    except AttributeError:  # pragma: no cover - a future pymmcore-plus without it
        return proxy


class SimShutter(ShutterDevice):
    """Simulated shutter (or light-source enable) of a light path.

    Closing it (``core.setShutterOpen("Shutter", False)`` or ``State`` = 0) makes every
    :class:`SimSCMOSCamera` of the same core and ``Illumination`` name see no light.
    It starts open, so live streaming shows the sample without touching it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._open = True
        self._path = "default"
        self._ready = False

    @pymm_property(is_pre_init=True, property_type=str, name="Illumination")
    def illumination(self) -> str:
        """Light path this shutter controls (cameras with the same name see it)."""
        return self._path

    @illumination.setter
    def illumination(self, value: str) -> None:
        if self._ready:
            raise ValueError(
                "Illumination is a pre-initialization property; set it before the shutter "
                "is initialized (in the .cfg, above 'Property,Core,Initialize,1')"
            )
        self._path = str(value).strip() or "default"

    def initialize(self) -> None:
        with _LIGHT_LOCK:
            _LIGHT_PATHS.setdefault(self._path, weakref.WeakSet()).add(self)
        self._ready = True

    def shutdown(self) -> None:
        # No lock and no registry change here: UniMMCore also calls this from a weakref
        # finalizer when a core is garbage-collected, which can run on a thread that is
        # inside light_on() holding _LIGHT_LOCK (a deadlock with a plain lock). An unloaded
        # shutter is ignored by light_on(); the WeakSet forgets it once it is collected.
        self._ready = False

    def get_open(self) -> bool:
        return self._open

    def set_open(self, open: bool) -> None:
        self._open = bool(open)

    @pymm_property(allowed_values=_Choices((0, 1)), property_type=int, name="State")
    def state(self) -> int:
        """1 = open, 0 = closed."""
        return int(self._open)

    @state.setter
    def state(self, value: int | str) -> None:
        self._open = bool(int(float(value)))


SimShutter.__module__ = "livedenoise.drivers.simcam"  # the public, config-file name


def light_on(camera: Any, path: str) -> bool:
    """True unless a SimShutter of light path ``path``, in ``camera``'s core, is closed."""
    token = _core_token(camera)
    with _LIGHT_LOCK:
        shutters = list(_LIGHT_PATHS.get(path, ()))
    return all(s._open for s in shutters if s._ready and _core_token(s) is token)
