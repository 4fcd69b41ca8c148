"""Wire format ``livedenoise/1``: three-frame ZeroMQ messages ``[topic, header, payload]``.

This docstring is the protocol's reference; programs in any language rely on it. This module
builds and checks headers and has no ZeroMQ dependency, so any Python program can reuse it.

Data stream
-----------
A ZeroMQ PUB socket, by default ``tcp://127.0.0.1:5555`` (loopback unless the operator opts
in to remote access, which then requires CURVE keys). Every message has exactly three frames:

1. **topic**: ASCII ``raw``, ``denoised`` or ``truth`` (the simulator's noise-free expected
   image; demo only). Subscribe by topic prefix.
2. **header**: a UTF-8 JSON object with at least

   - ``protocol``: ``"livedenoise/1"``; ``stream``: the topic as a string;
   - ``frame``: camera frame number since acquisition start, the same for the ``raw``,
     ``denoised`` and ``truth`` messages of one camera frame;
   - ``seq``: per-topic message counter from 0, +1 per message (a gap means the subscriber
     lost messages, e.g. to its own queue limit);
   - ``shape``: ``[H, W]``; ``dtype``: NumPy dtype string (``"<u2"``, ``"<f4"``);
     ``units``: ``"adu"`` or ``"photoelectrons"``;
   - ``exposure_ms``; ``t_acquired`` (the frame left the core) and ``t_published`` (just
     before sending), in seconds since the Unix epoch;
   - ``dropped``: cumulative count of frames the daemon did not restore, up to this message;
   - ``camera`` (device label), ``model`` (model id or null), ``calibration`` (calibration
     id or null);
   - on ``denoised`` only, when the daemon computes it: ``qc``, the frame's trust score
     ``{"chi2": float, "structure": float, "ok": bool}``: the residual ``raw_e - denoised``
     checked against the calibrated Poisson + read-noise model (``chi2`` ≈ 1 and
     ``structure`` ≈ 0 when consistent; see :mod:`livedenoise.live.qc`);
   - on ``raw`` only: ``median_offset_adu`` and ``median_gain_adu_per_e``, the medians of the
     calibration maps over the current ROI, so that a viewer can show raw frames approximately
     in photoelectrons, ``(adu - median_offset_adu) / median_gain_adu_per_e`` (the per-pixel
     maps differ by a few %).
   - present when known: where the frame belongs in an MDA (attached mode), so that a
     subscriber can place each frame even after a drop:

     - ``index``: the useq MDA event index, e.g. ``{"t": 3, "c": 1, "z": 5, "p": 0}``;
     - ``channel``: the channel's config name, e.g. ``"GFP"``;
     - ``position_um``: the stage position ``{"x": .., "y": .., "z": ..}`` in µm (the axes
       known; measured when the MDA recorded it, else the event's requested position).

   Subscribers must ignore keys they do not know: keys are added without changing the
   protocol name.
3. **payload**: the array's bytes in C order, exactly ``prod(shape) * itemsize`` long.
   ``raw`` carries ``uint16`` ADU; ``denoised`` and ``truth`` carry ``float32``
   photoelectrons of the frame's own exposure, so ``raw_e - denoised`` is pure noise.

Control
-------
A ZeroMQ REP socket, by default ``tcp://127.0.0.1:5556``. A request is one JSON object
``{"cmd": NAME, ...arguments}``; the reply is ``{"ok": true, ...}`` or
``{"ok": false, "error": "what was wrong and what to do"}``. Every request gets a reply and
the daemon keeps running. Commands: ``status``, ``set_model`` (``model``; the new model is
prepared and validated first and takes over between two frames; the reply describes the engine
in use), ``set`` (any of ``exposure_ms``, ``binning``, ``roi`` ``[x, y, width, height]`` in
binned pixels; applied between two frames, the calibration re-cropped; refused when attached to
another program's core or when the calibration does not cover the ROI), ``collect_pairs``
(replies with a job id at once; sent during the start-up, it waits for the stream), ``job``
(``id``), ``stop``. ``livedenoise ctl`` sends them from the shell. See
:mod:`livedenoise.transport.control`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = [
    "PROTOCOL",
    "TOPICS",
    "UNITS",
    "ProtocolError",
    "decode",
    "encode_header",
    "make_header",
]

PROTOCOL = "livedenoise/1"
TOPICS = ("raw", "denoised", "truth")
UNITS = {"raw": "adu", "denoised": "photoelectrons", "truth": "photoelectrons"}
DTYPES: dict[str, np.dtype[Any]] = {
    "raw": np.dtype("<u2"),
    "denoised": np.dtype("<f4"),
    "truth": np.dtype("<f4"),
}
REQUIRED = (
    "protocol",
    "stream",
    "frame",
    "seq",
    "shape",
    "dtype",
    "units",
    "exposure_ms",
    "t_acquired",
    "t_published",
    "dropped",
    "camera",
    "model",
    "calibration",
)


class ProtocolError(ValueError):
    """A message that does not follow ``livedenoise/1``."""


def make_header(
    stream: str,
    *,
    frame: int,
    seq: int,
    array: np.ndarray,
    exposure_ms: float,
    t_acquired: float,
    t_published: float,
    dropped: int,
    camera: str | None,
    model: str | None,
    calibration: str | None,
    **extra: Any,
) -> dict[str, Any]:
    """The header dict of one message (``extra`` keys are added; subscribers ignore them)."""
    if stream not in TOPICS:
        raise ProtocolError(f"stream must be one of {TOPICS}, got {stream!r}")
    if array.dtype != DTYPES[stream]:
        raise ProtocolError(f"{stream} payload must be {DTYPES[stream].str}, got {array.dtype.str}")
    header = {
        "protocol": PROTOCOL,
        "stream": stream,
        "frame": int(frame),
        "seq": int(seq),
        "shape": [int(s) for s in array.shape],
        "dtype": array.dtype.str,
        "units": UNITS[stream],
        "exposure_ms": float(exposure_ms),
        "t_acquired": float(t_acquired),
        "t_published": float(t_published),
        "dropped": int(dropped),
        "camera": camera,
        "model": model,
        "calibration": calibration,
    }
    header.update(extra)
    return header


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode("utf-8")


def decode(frames: list[bytes] | list[Any], *, copy: bool = True) -> tuple[str, dict[str, Any], np.ndarray]:
    """Check and decode one message; returns ``(topic, header, array)``.

    ``frames`` are the three message parts (``bytes`` or ``zmq.Frame``). With
    ``copy=False`` the array is a read-only view of the last part's buffer.
    """
    if len(frames) != 3:
        raise ProtocolError(f"a {PROTOCOL} message has 3 frames, got {len(frames)}")
    topic_b, header_b, payload = frames
    topic = bytes(getattr(topic_b, "bytes", topic_b)).decode("ascii", "replace")
    try:
        header = json.loads(bytes(getattr(header_b, "bytes", header_b)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise ProtocolError(f"header lacks {missing}")
    if header["protocol"] != PROTOCOL:
        raise ProtocolError(f"protocol is {header['protocol']!r}, expected {PROTOCOL!r}")
    if header["stream"] != topic:
        raise ProtocolError(f"header stream {header['stream']!r} differs from topic {topic!r}")
    try:
        dtype = np.dtype(header["dtype"])
        shape = tuple(int(s) for s in header["shape"])
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad dtype {header['dtype']!r} or shape {header['shape']!r}: {exc}") from exc
    if dtype.hasobject or any(s < 0 for s in shape):
        raise ProtocolError(f"dtype {dtype.str} / shape {list(shape)} cannot describe an array payload")
    buf = memoryview(getattr(payload, "buffer", payload))
    expected = math.prod(shape) * dtype.itemsize
    if buf.nbytes != expected:
        raise ProtocolError(
            f"payload is {buf.nbytes} bytes, shape {list(shape)} {dtype.str} needs {expected}"
        )
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    if copy:
        arr = arr.copy()
    return topic, header, arr
