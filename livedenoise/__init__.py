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
    "Calibration": "livedenoise.calibration.maps",
    "PhotonConverter": "livedenoise.calibration.maps",
    "read_calibration": "livedenoise.calibration.maps",
    "write_calibration": "livedenoise.calibration.maps",
    "PipelineEvents": "livedenoise.live.events",
    "RingBuffer": "livedenoise.live.ringbuffer",
    "Engine": "livedenoise.inference.engines",
    "make_engine": "livedenoise.inference.engines",
    "Publisher": "livedenoise.transport.publisher",
    "Subscriber": "livedenoise.transport.subscriber",
    "Pipeline": "livedenoise.live.pipeline",
    "PipelineConfig": "livedenoise.live.config",
    "load_model": "livedenoise.inference.modelio",
    "ModelCard": "livedenoise.inference.modelio",
}

__all__ = ["PROTOCOL", "__version__", *sorted(_LAZY)]

if TYPE_CHECKING:  # pragma: no cover
    from livedenoise.calibration.maps import Calibration, PhotonConverter, read_calibration, write_calibration
    from livedenoise.live.config import PipelineConfig
    from livedenoise.live.pipeline import Pipeline
    from livedenoise.inference.engines import Engine, make_engine
    from livedenoise.live.events import PipelineEvents
    from livedenoise.inference.modelio import ModelCard, load_model
    from livedenoise.transport.publisher import Publisher
    from livedenoise.live.ringbuffer import RingBuffer
    from livedenoise.transport.subscriber import Subscriber


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'livedenoise' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
