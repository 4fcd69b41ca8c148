"""Typed events of the pipeline (one psygnal SignalGroup).

Workers emit from their own threads; a consumer that needs another thread (a GUI)
connects with ``thread=`` (psygnal queues the call). Handlers must be quick: they run
on the emitting thread, which is the acquisition or the restoration thread.
"""

from __future__ import annotations

from psygnal import Signal, SignalGroup

__all__ = ["PipelineEvents"]


class PipelineEvents(SignalGroup):
    """Signals of a running pipeline.

    Attributes
    ----------
    frameAcquired : Signal(int, float)
        ``(frame, t_acquired)``: a camera frame left the core and entered the ring.
    frameRestored : Signal(int, float)
        ``(frame, latency_s)``: the engine restored a frame; latency from acquisition.
    frameDropped : Signal(int, str, int)
        ``(frame, reason, dropped_total)``: a frame that will not be restored.
        ``reason`` is one of ``"ring-full"`` (drop-oldest overwrote it), ``"camera"``
        (the core's own buffer overflowed: frame numbers skipped), ``"engine-error"``,
        ``"bad-frame"``, ``"not-seen"`` (attached to another program's core, which popped
        the frame before livedenoise could read it), ``"stopped"`` (the ring closed while
        the frame waited under the ``block`` policy).
    error : Signal(str, str)
        ``(where, message)``: a fault that was reported and handled.
    stateChanged : Signal(str)
        ``"starting" | "running" | "paused" | "stopping" | "stopped" | "failed"``.
    modelChanged : Signal(str)
        The model id now in use.
    """

    frameAcquired = Signal(int, float)
    frameRestored = Signal(int, float)
    frameDropped = Signal(int, str, int)
    error = Signal(str, str)
    stateChanged = Signal(str)
    modelChanged = Signal(str)
