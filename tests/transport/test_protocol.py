"""The ``livedenoise/1`` wire format, without sockets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livedenoise.transport.protocol import (
    PROTOCOL,
    REQUIRED,
    TOPICS,
    ProtocolError,
    decode,
    encode_header,
    make_header,
)


def _message(stream: str = "denoised", array: np.ndarray | None = None, **over: object) -> list[bytes]:
    if array is None:
        array = np.arange(12, dtype="<u2" if stream == "raw" else "<f4").reshape(3, 4)
    h = make_header(
        stream,
        frame=7,
        seq=3,
        array=array,
        exposure_ms=10.0,
        t_acquired=1.5,
        t_published=1.6,
        dropped=0,
        camera="Camera",
        model=None,
        calibration="cal-1",
    )
    h.update(over)
    return [stream.encode(), encode_header(h), array.tobytes()]


@pytest.mark.parametrize("stream", TOPICS)
def test_round_trip_keeps_header_and_values(stream: str) -> None:
    dtype = "<u2" if stream == "raw" else "<f4"
    arr = (np.arange(20).reshape(4, 5) * 3).astype(dtype)
    topic, header, out = decode(_message(stream, arr))
    assert topic == stream
    assert set(REQUIRED) <= set(header)
    assert header["protocol"] == PROTOCOL and header["stream"] == stream
    assert header["shape"] == [4, 5] and header["dtype"] == dtype
    assert header["units"] == ("adu" if stream == "raw" else "photoelectrons")
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_header_is_compact_utf8_json_object() -> None:
    raw = _message()[1]
    assert json.loads(raw.decode("utf-8"))["frame"] == 7
    assert b" " not in raw


def test_extra_keys_are_kept_and_unknown_keys_ignored() -> None:
    arr = np.zeros((2, 2), "<f4")
    h = make_header(
        "denoised",
        frame=0,
        seq=0,
        array=arr,
        exposure_ms=1,
        t_acquired=0,
        t_published=0,
        dropped=0,
        camera=None,
        model="rln",
        calibration=None,
        roi=[0, 0, 2, 2],
    )
    assert h["roi"] == [0, 0, 2, 2]
    _, header, _ = decode(_message(future_key={"anything": 1}))
    assert header["future_key"] == {"anything": 1}


def test_decode_without_copy_is_a_view() -> None:
    parts = _message()
    payload = bytearray(parts[2])
    _, _, arr = decode([parts[0], parts[1], payload], copy=False)
    payload[0:4] = np.float32(42).tobytes()
    assert arr[0, 0] == 42


@pytest.mark.parametrize(
    ("stream", "dtype", "match"),
    [
        ("raw", "<f4", "raw payload must be <u2"),
        ("denoised", "<u2", "denoised payload must be <f4"),
        ("movie", "<f4", "stream must be one of"),
    ],
)
def test_make_header_rejects_wrong_dtype_or_stream(stream: str, dtype: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        make_header(
            stream,
            frame=0,
            seq=0,
            array=np.zeros((2, 2), dtype),
            exposure_ms=1,
            t_acquired=0,
            t_published=0,
            dropped=0,
            camera=None,
            model=None,
            calibration=None,
        )


def _bad(kind: str) -> list[bytes]:
    m = _message()
    if kind == "two_frames":
        return m[:2]
    if kind == "not_json":
        return [m[0], b"{nope", m[2]]
    if kind == "not_object":
        return [m[0], b"[1, 2]", m[2]]
    if kind == "missing_key":
        h = json.loads(m[1])
        del h["seq"]
        return [m[0], json.dumps(h).encode(), m[2]]
    if kind == "other_protocol":
        return _message(protocol="livedenoise/0")
    if kind == "topic_mismatch":
        return [b"raw", m[1], m[2]]
    if kind == "short_payload":
        return [m[0], m[1], m[2][:-1]]
    if kind == "bad_dtype":
        return _message(dtype="not-a-dtype")
    if kind == "object_dtype":
        return _message(dtype="|O")
    if kind == "bad_shape":
        return _message(shape="3x4")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("two_frames", "has 3 frames, got 2"),
        ("not_json", "not UTF-8 JSON"),
        ("not_object", "JSON object"),
        ("missing_key", r"lacks \['seq'\]"),
        ("other_protocol", "expected 'livedenoise/1'"),
        ("topic_mismatch", "differs from topic"),
        ("short_payload", "needs 48"),
        ("bad_dtype", "bad dtype"),
        ("object_dtype", "cannot describe"),
        ("bad_shape", "bad dtype"),
    ],
)
def test_decode_rejects_malformed_messages(kind: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(_bad(kind))
