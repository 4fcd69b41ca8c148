"""``livedenoise adapt --from ENDPOINT``: learn the live sample in a process of its own.

It subscribes to the ``raw`` stream of a running daemon, records the next ``frames`` frames of
one size, converts them to photoelectrons with the camera's calibration, adapts the model by
self-supervision (:func:`livedenoise.training.selfsup.adapt`), writes the new model, and, when
the held-out measure improved and a control endpoint is given, asks the daemon to switch to it
(``set_model``). Training runs here, never in the daemon: the camera never waits for it; on a
busy CPU the daemon's engine may fall behind and drop frames, each one counted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.app.offline import match_calibration
from livedenoise.calibration.maps import Calibration
from livedenoise.training.selfsup import SelfSupConfig, adapt, frames_to_e
from livedenoise.transport.client import request
from livedenoise.transport.subscriber import Subscriber

__all__ = ["AdaptResult", "adapt_from_stream", "record_raw"]

log = logging.getLogger("livedenoise")


@dataclass
class AdaptResult:
    """What :func:`adapt_from_stream` did."""

    frames: int
    method: str
    improved: bool
    before: dict[str, float]
    after: dict[str, float]
    model_path: str
    switched: bool
    reply: dict[str, Any] | None


def record_raw(
    endpoint: str,
    frames: int,
    *,
    timeout_s: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The next ``frames`` raw frames of one size from a ``livedenoise/1`` publisher.

    Returns ``(stack, last_header)``: a ``(T, H, W)`` uint16 stack. Frames of another size (the
    ROI changed) restart the recording. Raises ``TimeoutError`` if no frame arrives for
    ``timeout_s`` seconds.
    """
    if frames < 2:
        raise ValueError(f"record at least 2 frames, got {frames}")
    got: list[np.ndarray] = []
    header: dict[str, Any] = {}
    with Subscriber(endpoint, topics=("raw",)) as sub:
        last = time.monotonic()
        while len(got) < frames:
            msg = sub.recv(0.5)
            if msg is None:
                if time.monotonic() - last > timeout_s:
                    raise TimeoutError(
                        f"no raw frame from {endpoint} for {timeout_s:g} s: is the daemon running, and is "
                        "this its publishing endpoint (`livedenoise ctl status` shows it)?"
                    )
                continue
            last = time.monotonic()
            if got and msg.array.shape != got[0].shape:
                log.warning("frame size changed %s -> %s: recording again", got[0].shape, msg.array.shape)
                got.clear()
            got.append(np.array(msg.array, copy=True))
            header = msg.header
            if progress is not None:
                progress(len(got), frames)
    return np.stack(got), header


def adapt_from_stream(
    endpoint: str,
    calibration: Calibration,
    output: str | os.PathLike[str],
    *,
    frames: int = 40,
    init: str | None = None,
    config: SelfSupConfig | None = None,
    control: str | None = None,
    frames_corner: tuple[int, int] | None = None,
    progress: bool = True,
    timeout_s: float = 30.0,
) -> AdaptResult:
    """Record, adapt, save and (if better and ``control`` is given) switch the daemon's model.

    ``init`` defaults to the model the stream names (the daemon's current one).
    """
    out = Path(output)
    stack, header = record_raw(endpoint, frames, timeout_s=timeout_s)
    cal = match_calibration(calibration, stack.shape[1:], roi=frames_corner)
    frames_e = frames_to_e(stack, cal)
    start = init or header.get("model") or None
    _, card, history = adapt(
        frames_e,
        start,
        out,
        config,
        source=f"{len(stack)} raw frames from {endpoint} (camera {header.get('camera')})",
        progress=progress,
    )
    h = card.quality["heldout_frames"]
    reply = None
    switched = False
    if control is not None and history["improved"]:
        reply = request(control, {"cmd": "set_model", "model": str(card.path)}, timeout_s=120.0)
        switched = bool(reply.get("ok"))
    return AdaptResult(
        frames=len(stack),
        method=history["method"],
        improved=bool(history["improved"]),
        before=h["before"],
        after=h["after"],
        model_path=str(card.path),
        switched=switched,
        reply=reply,
    )
