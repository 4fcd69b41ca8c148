"""livedenoise: restore every camera frame as it arrives.

``import livedenoise`` is light: it imports neither torch nor pyzmq. The names in
``__all__`` are loaded on first use from the modules that hold them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

PROTOCOL = "livedenoise/1"

# public name -> module that defines it
_LAZY = {
    "Calibration": "livedenoise.calibration",
    "PhotonConverter": "livedenoise.calibration",
    "read_calibration": "livedenoise.calibration",
    "write_calibration": "livedenoise.calibration",
    "PipelineEvents": "livedenoise.events",
    "RingBuffer": "livedenoise.ringbuffer",
    "Engine": "livedenoise.engines",
    "make_engine": "livedenoise.engines",
    "Publisher": "livedenoise.publisher",
    "Subscriber": "livedenoise.subscriber",
    "Pipeline": "livedenoise.daemon",
    "PipelineConfig": "livedenoise.config",
    "load_model": "livedenoise.modelio",
    "ModelCard": "livedenoise.modelio",
}

__all__ = ["PROTOCOL", "__version__", *sorted(_LAZY)]

if TYPE_CHECKING:  # pragma: no cover
    from .calibration import Calibration, PhotonConverter, read_calibration, write_calibration
    from .config import PipelineConfig
    from .daemon import Pipeline
    from .engines import Engine, make_engine
    from .events import PipelineEvents
    from .modelio import ModelCard, load_model
    from .publisher import Publisher
    from .ringbuffer import RingBuffer
    from .subscriber import Subscriber


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'livedenoise' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
