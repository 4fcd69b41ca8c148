"""Where the pipeline sends its frames: the :class:`FrameSink` protocol.

:class:`livedenoise.transport.publisher.Publisher` is the one implementation livedenoise ships
(ZeroMQ, protocol ``livedenoise/1``); a recorder or an in-process consumer can be another. The
pipeline calls it from its worker thread only.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["FrameSink"]


@runtime_checkable
class FrameSink(Protocol):
    """What the pipeline needs from its output.

    Contract
    --------
    - ``publish(topic, array, frame=..., exposure_ms=..., t_acquired=..., dropped=...,
      camera=..., model=..., calibration=..., **extra)`` sends one message (topics ``raw``,
      ``denoised``, ``truth``) and says whether it did; it must not keep ``array`` unless it
      was lent by ``borrow``.
    - ``borrow(topic, shape, dtype)`` lends an array the engine may restore into, which a later
      ``publish`` of that array sends without a copy; None when it has none to lend.
      ``give_back(topic, array)`` returns a lent array that was not published.
    - ``endpoint`` names where subscribers connect (None if nowhere).
    """

    @property
    def endpoint(self) -> str | None: ...

    def publish(
        self,
        topic: str,
        array: np.ndarray,
        *,
        frame: int,
        exposure_ms: float,
        t_acquired: float,
        dropped: int,
        camera: str | None,
        model: str | None,
        calibration: str | None,
        **extra: Any,
    ) -> bool: ...

    def borrow(self, topic: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray | None: ...

    def give_back(self, topic: str, array: np.ndarray) -> None: ...

    def close(self) -> None: ...
