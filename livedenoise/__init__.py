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
    from livedenoise.calibration.maps import Calibration as Calibration
    from livedenoise.calibration.maps import PhotonConverter as PhotonConverter
    from livedenoise.calibration.maps import read_calibration as read_calibration
    from livedenoise.calibration.maps import write_calibration as write_calibration
    from livedenoise.inference.engines import Engine as Engine
    from livedenoise.inference.engines import make_engine as make_engine
    from livedenoise.inference.modelio import ModelCard as ModelCard
    from livedenoise.inference.modelio import load_model as load_model
    from livedenoise.live.config import PipelineConfig as PipelineConfig
    from livedenoise.live.events import PipelineEvents as PipelineEvents
    from livedenoise.live.pipeline import Pipeline as Pipeline
    from livedenoise.live.ringbuffer import RingBuffer as RingBuffer
    from livedenoise.transport.publisher import Publisher as Publisher
    from livedenoise.transport.subscriber import Subscriber as Subscriber


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'livedenoise' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
