"""The viewer's feed without a window: pairing by frame, restarts, photoelectrons, the info line."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _pipeline_helpers import wait_for

pytest.importorskip("zmq")

from livedenoise.app.viewer.feed import (
    FeedStatus,
    FrameFeed,
    Snapshot,
    format_info,
    raw_to_photoelectrons,
    shared_limits,
)
from livedenoise.transport.publisher import Publisher


def _publish(pub: Publisher, frame: int, shape=(24, 32), **extra) -> None:
    kw = dict(frame=frame, exposure_ms=5.0, t_acquired=time.time(), dropped=0, camera="cam", calibration="c1")
    pub.publish("raw", np.full(shape, 100 + frame, np.uint16), model=None, **kw)
    pub.publish("denoised", np.full(shape, frame, np.float32), model="m1", **kw, **extra)


def test_take_returns_the_newest_frame_that_every_topic_has_once() -> None:
    pub = Publisher("tcp://127.0.0.1:*")
    feed = FrameFeed(pub.endpoint, ("raw", "denoised"))
    try:
        i = 0
        snap = None

        def got() -> bool:
            nonlocal i, snap
            _publish(pub, i, qc={"chi2": 1.03, "structure": 0.01, "ok": True})
            i += 1
            snap = feed.take()  # the very first may hold only raw (its denoised not yet here)
            return snap is not None and set(snap.messages) == {"raw", "denoised"}

        assert wait_for(got, 10)
        assert snap.messages["raw"].header["frame"] == snap.messages["denoised"].header["frame"] == snap.frame
        assert snap.header["model"] == "m1"  # the denoised header
        last = snap

        def newest() -> bool:  # frame i - 1 may not have been paired yet
            nonlocal last
            last = feed.take() or last
            return last.frame == i - 1

        assert wait_for(newest, 10) and set(last.messages) == {"raw", "denoised"}
        assert feed.take() is None  # the same frame is not handed out twice
        assert feed.status().state == "live"
        line = format_info(snap, feed.status())
        assert f"frame {snap.frame}" in line and "model m1" in line and "calibration c1" in line
        assert "QC χ² 1.03 structure 0.01 ok" in line
    finally:
        feed.close()
        pub.close()


def test_nothing_published_says_so() -> None:
    with FrameFeed("tcp://127.0.0.1:9", ("denoised",)) as feed:
        st = feed.status()
        assert st.state == "waiting" and feed.take() is None
        assert "is `livedenoise demo` or `livedenoise serve` running there" in st.message()


def test_raw_in_photoelectrons_from_the_header_or_fitted(rng) -> None:
    truth = rng.uniform(0, 50, (64, 64)).astype(np.float32)
    raw = np.round(truth * 2.0 + 100).astype(np.uint16)
    e, how = raw_to_photoelectrons(raw, {"median_offset_adu": 100.0, "median_gain_adu_per_e": 2.0})
    assert how.startswith("e⁻ = (ADU − 100.0)/2") and np.abs(e - truth).max() < 0.3
    e, how = raw_to_photoelectrons(raw, {}, denoised=truth)  # another publisher: fitted
    assert "fitted" in how and np.abs(e - truth).max() < 0.5
    e, how = raw_to_photoelectrons(raw, {})
    assert how.startswith("ADU") and e.dtype == np.float32


def test_shared_limits_and_the_info_line_without_qc() -> None:
    lo, hi = shared_limits(np.arange(10000, dtype=np.float32).reshape(100, 100))
    assert 0 <= lo < 20 and 9980 < hi <= 9999
    assert shared_limits(np.zeros((8, 8), np.float32)) == (0.0, 1.0)
    snap = Snapshot(7, {}, 19.5, 33.0, {"dropped": 2, "model": None, "calibration": None})
    line = format_info(snap, FeedStatus("tcp://x", "live", malformed=3, restarts=1))
    assert "QC" not in line and "dropped 2" in line and "skipped 3 non-livedenoise/1" in line
    assert "daemon restarted 1×" in line
