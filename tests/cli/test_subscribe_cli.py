"""``livedenoise subscribe``: statistics, recording, Ctrl-C and crashes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zmq")
tifffile = pytest.importorskip("tifffile")

from livedenoise.cli import main
from livedenoise.transport.publisher import Publisher

SHAPE = (48, 64)


@pytest.fixture(autouse=True)
def _restore_logger() -> Iterator[None]:
    """main() configures the livedenoise logger; give later tests the logger they had."""
    lg = logging.getLogger("livedenoise")
    saved = (lg.handlers[:], lg.level, lg.propagate)
    yield
    lg.handlers[:], lg.level, lg.propagate = saved


@pytest.fixture
def stream() -> Iterator[str]:
    """A publisher thread sending raw + denoised frames at about 200 frames/s; yields its endpoint."""
    pub = Publisher("tcp://127.0.0.1:*", sndhwm=200)
    stop = threading.Event()

    def feed() -> None:
        raw = np.empty(SHAPE, np.uint16)
        den = np.empty(SHAPE, np.float32)
        i = 0
        while not stop.is_set():
            raw[:] = i % 65536
            den[:] = i / 2
            kw = dict(
                frame=i, exposure_ms=5.0, t_acquired=time.time(), dropped=0, camera="Camera", calibration="c"
            )
            pub.publish("raw", raw, model=None, **kw)
            pub.publish("denoised", den, model="m", **kw)
            i += 1
            stop.wait(0.005)

    th = threading.Thread(target=feed, daemon=True)
    th.start()
    yield pub.endpoint
    stop.set()
    th.join(5)
    pub.close()


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize(("topic", "dtype"), [("denoised", np.float32), ("raw", np.uint16)])
def test_save_records_a_valid_tiff_with_headers(stream, tmp_path, capsys, topic, dtype) -> None:
    out = tmp_path / "rec.tif"
    rc = main(
        [
            "subscribe",
            "--endpoint",
            stream,
            "--count",
            "6",
            "--save",
            str(out),
            "--save-topic",
            topic,
            "--topics",
            "raw",
            "--json",
            "--seconds",
            "20",
        ]
    )
    assert rc == 0
    assert _leftovers(tmp_path) == []
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == 6
        headers = [json.loads(p.description) for p in tf.pages]
        data = np.stack([p.asarray() for p in tf.pages])
    assert data.dtype == dtype and data.shape == (6, *SHAPE)
    assert all(h["stream"] == topic and h["protocol"] == "livedenoise/1" for h in headers)
    seqs = [h["seq"] for h in headers]
    assert seqs == list(range(seqs[0], seqs[0] + 6))
    scale = 0.5 if topic == "denoised" else 1.0
    np.testing.assert_array_equal(data[:, 0, 0], [h["frame"] * scale for h in headers])
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["saved"] == 6 and final["summary"][topic]["frames"] >= 6


def test_statistics_lines(stream, capsys) -> None:
    rc = main(["subscribe", "--endpoint", stream, "--topics", "raw,denoised", "--seconds", "1.6"])
    assert rc == 0
    out, err = capsys.readouterr()
    lines = [ln for ln in out.splitlines() if ln.startswith(("raw", "denoised"))]
    assert len(lines) == 2 and "fps" in lines[0] and "latency p50" in lines[0] and "gaps" in lines[0]
    assert "done after" in err and "denoised:" in err


def test_crash_leaves_no_file(stream, tmp_path, monkeypatch) -> None:
    from livedenoise.transport.subscriber import Subscriber

    real = Subscriber.recv
    calls = {"n": 0}

    def failing(self, timeout_s=None):
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("disk on fire")
        return real(self, timeout_s)

    monkeypatch.setattr(Subscriber, "recv", failing)
    out = tmp_path / "rec.tif"
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["subscribe", "--endpoint", stream, "--save", str(out), "--seconds", "20"])
    assert not out.exists() and _leftovers(tmp_path) == []


def test_ctrl_c_finishes_the_recording_cleanly(stream, tmp_path) -> None:
    out = tmp_path / "rec.tif"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livedenoise",
            "subscribe",
            "--endpoint",
            stream,
            "--save",
            str(out),
            "--json",
            "--seconds",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if json.loads(line)["topics"]["denoised"]["frames"] > 0:
                break
        proc.send_signal(signal.SIGINT)
        out_s, err_s = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err_s
    assert "interrupted after" in err_s and "recorded" in err_s
    assert json.loads(out_s.strip().splitlines()[-1])["interrupted"] is True
    assert _leftovers(tmp_path) == []
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) > 0
        assert tf.pages[0].dtype == np.float32
        assert json.loads(tf.pages[-1].description)["stream"] == "denoised"


def test_nothing_arrives(tmp_path, capsys) -> None:
    out = tmp_path / "rec.tif"
    rc = main(["subscribe", "--endpoint", "tcp://127.0.0.1:9", "--seconds", "0.3", "--save", str(out)])
    assert rc == 1
    assert "no message arrived from tcp://127.0.0.1:9" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--topics", "raw,video"], "--topics takes some of raw,denoised,truth"),
        (["--save-topic", "video", "--save", "x.tif"], "--save-topic must be one of"),
        (["--count", "0"], "--count must be positive"),
        (["--key", "a.key_secret"], "--key and --server-key go together"),
    ],
)
def test_bad_arguments(argv, match, capsys) -> None:
    assert main(["subscribe", *argv]) == 2
    assert match in capsys.readouterr().err
