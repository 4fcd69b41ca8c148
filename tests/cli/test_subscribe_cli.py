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

from _pipeline_helpers import wait_for

from livedenoise.app.recording import read_recording
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
            qc = {"chi2": 0.9 if i % 4 else 2.0, "structure": -0.05, "ok": bool(i % 4)}
            pub.publish("denoised", den, model="m", qc=qc, **kw)
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
    data = tifffile.imread(out)  # plain imread: the whole (T, Y, X) stack
    with tifffile.TiffFile(out) as tf:
        assert tf.is_ome and tf.series[0].axes == "TYX" and len(tf.series) == 1
    summary, headers = read_recording(out)
    assert data.dtype == dtype and data.shape == (6, *SHAPE)
    assert summary["complete"] is True and summary["stopped_by"] == "count" and summary["frames"] == 6
    assert summary["topic"] == topic and summary["units"] == (
        "photoelectrons" if topic == "denoised" else "adu"
    )
    assert len(headers) == 6
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


def test_the_summary_carries_the_trust_score(stream, capsys) -> None:
    assert (
        main(["subscribe", "--endpoint", stream, "--topics", "raw,denoised", "--count", "20", "--json"]) == 0
    )
    out, err = capsys.readouterr()
    final = json.loads(out.strip().splitlines()[-1])
    qc = final["summary"]["denoised"]["qc"]
    assert (
        qc["frames"] > 0 and 0.5 < qc["ok_fraction"] < 1.0 and set(qc["last"]) == {"chi2", "structure", "ok"}
    )
    assert final["summary"]["raw"]["qc"] is None
    assert "trust score:" in err and "of " in err


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


def _start_recording(endpoint: str, out: Path, *extra: str) -> subprocess.Popen:
    """`subscribe --save` in a subprocess; returns once it has received denoised frames."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livedenoise",
            "subscribe",
            "--endpoint",
            endpoint,
            "--save",
            str(out),
            "--json",
            "--seconds",
            "30",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or json.loads(line)["topics"]["denoised"]["frames"] > 0:
            break
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_recording_cleanly(stream, tmp_path, sig) -> None:
    """Ctrl-C or SIGTERM (a service manager, `kill`): a valid file, marked incomplete."""
    out = tmp_path / "rec.tif"
    proc = _start_recording(stream, out)
    try:
        proc.send_signal(sig)
        out_s, err_s = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err_s
    assert "interrupted after" in err_s and f"stopped by {sig.name}: marked incomplete" in err_s
    assert json.loads(out_s.strip().splitlines()[-1])["interrupted"] is True
    assert _leftovers(tmp_path) == []
    data = tifffile.imread(out)
    summary, headers = read_recording(out)
    assert data.ndim == 3 and data.shape[0] == summary["frames"] == len(headers) > 0
    assert data.dtype == np.float32 and headers[-1]["stream"] == "denoised"
    assert summary["complete"] is False and summary["stopped_by"] == sig.name


def test_sigkill_leftovers_are_removed_and_named_by_the_next_run(stream, tmp_path, capsys) -> None:
    out = tmp_path / "rec.tif"
    proc = _start_recording(stream, out)
    part = tmp_path / f".rec.tif.{proc.pid}.part"
    try:
        assert wait_for(lambda: part.exists() and part.stat().st_size > 0, 10)  # streamed to disk
        proc.kill()
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert sorted(_leftovers(tmp_path)) == sorted([part.name, f".rec.tif.{proc.pid}.headers.part"])
    assert not out.exists()
    rc = main(["subscribe", "--endpoint", stream, "--save", str(out), "--count", "3", "--seconds", "20"])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"removed {part}" in err and "was killed" in err
    assert _leftovers(tmp_path) == [] and tifffile.imread(out).shape == (3, *SHAPE)


def test_fifty_frames_read_back_as_fifty(stream, tmp_path) -> None:
    out = tmp_path / "rec.tif"
    rc = main(["subscribe", "--endpoint", stream, "--save", str(out), "--count", "50", "--seconds", "30"])
    assert rc == 0
    data = tifffile.imread(out)
    assert data.shape == (50, *SHAPE)
    _, headers = read_recording(out)
    np.testing.assert_array_equal(data[:, 0, 0], [h["frame"] / 2 for h in headers])


def test_raw_and_denoised_at_once_write_two_files(stream, tmp_path, capsys) -> None:
    out = tmp_path / "run.ome.tif"
    argv = ["subscribe", "--endpoint", stream, "--save", str(out), "--save-topic", "raw,denoised"]
    rc = main([*argv, "--count", "5", "--seconds", "20", "--pixel-size-um", "0.108"])
    assert rc == 0
    raw, den = tmp_path / "run.raw.ome.tif", tmp_path / "run.denoised.ome.tif"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([raw.name, den.name])
    assert tifffile.imread(raw).dtype == np.uint16 and tifffile.imread(den).dtype == np.float32
    assert tifffile.imread(raw).shape[0] >= 5 and tifffile.imread(den).shape[0] >= 5
    with tifffile.TiffFile(den) as tf:
        pixels = tifffile.xml2dict(tf.pages.first.description)["OME"]["Image"]["Pixels"]
    assert pixels["PhysicalSizeX"] == pytest.approx(0.108) and pixels["PhysicalSizeXUnit"] == "µm"
    assert pixels["SizeT"] == tifffile.imread(den).shape[0]
    assert pixels["Plane"][1]["DeltaT"] > 0 and pixels["Plane"][0]["ExposureTime"] == 5.0
    capsys.readouterr()
    assert main([*argv, "--count", "1", "--seconds", "5"]) == 2  # no silent overwrite
    assert "exists; choose another --save name or pass --force" in capsys.readouterr().err
    assert main([*argv, "--count", "1", "--seconds", "20", "--force"]) == 0
    assert tifffile.imread(den).shape == SHAPE  # one frame (tifffile squeezes T=1)


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
        (["--save-topic", "video", "--save", "x.tif"], "--save-topic must be some of"),
        (["--pixel-size-um", "-1"], "--pixel-size-um must be positive"),
        (["--count", "0"], "--count must be positive"),
        (["--key", "a.key_secret"], "--key and --server-key go together"),
    ],
)
def test_bad_arguments(argv, match, capsys) -> None:
    assert main(["subscribe", *argv]) == 2
    assert match in capsys.readouterr().err
