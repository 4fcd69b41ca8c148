"""The hot path's small value types: the camera geometry and the names of states, policies, drops.

The enums are ``StrEnum``: each member *is* its string (``DropReason.RING_FULL == "ring-full"``),
so status replies, events and logs read exactly as before, and JSON writes the string.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DropReason", "PipelineState", "RingPolicy", "Roi"]


@dataclass(frozen=True, slots=True)
class Roi:
    """The camera's region of interest, in binned pixels of the current binning.

    ``x``, ``y``: offset on the sensor; ``width``, ``height``: frame size; ``binning``: 1, 2, ...
    """

    x: int
    y: int
    width: int
    height: int
    binning: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``: the shape of the frames."""
        return (self.height, self.width)

    def as_list(self) -> list[int]:
        """``[x, y, width, height, binning]`` (the ``roi`` of a status reply)."""
        return [self.x, self.y, self.width, self.height, self.binning]


class PipelineState(StrEnum):
    """Life cycle of a pipeline (``stateChanged`` payload, ``status()["state"]``)."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class RingPolicy(StrEnum):
    """What the ring buffer does when it is full."""

    DROP_OLDEST = "drop-oldest"
    """Overwrite the oldest unrestored frame (counted as ``ring-full``); the camera never waits."""
    BLOCK = "block"
    """The acquisition waits for a free slot: nothing is lost, but the camera may be slowed."""


class DropReason(StrEnum):
    """Why a frame was not restored (``frameDropped`` payload, ``status()["drops"]`` keys)."""

    RING_FULL = "ring-full"
    """drop-oldest overwrote it."""
    CAMERA = "camera"
    """The core's own buffer overflowed: frame numbers skipped."""
    NOT_SEEN = "not-seen"
    """Attached to another program's core, which popped it before livedenoise read it."""
    ENGINE_ERROR = "engine-error"
    """The engine raised on it."""
    BAD_FRAME = "bad-frame"
    """Not a uint16 2D frame, or of a geometry the calibration cannot cover."""
    STOPPED = "stopped"
    """The ring closed while it was being acquired (stop or failure)."""
