"""`livedenoise view` for real: a window under Xvfb, a running demo, screenshots, faults.

Needs the `view` extra (ndv, PyQt6, vispy) and Xvfb with Mesa's software OpenGL; `.ci/run`
installs them. Qt's offscreen platform cannot make an OpenGL context here, so it is only
tested for its clear refusal.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
for _mod in ("ndv", "qtpy", "vispy", "superqt"):
    pytest.importorskip(_mod, reason='the view extra is not installed: pip install -e ".[view]"')

from livedenoise.cli import main
from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL
from livedenoise.transport.client import request
from livedenoise.transport.protocol import encode_header, make_header


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    """`livedenoise demo` on a 96² ROI (the shipped RLN restoring it); yields its PUB endpoint."""
    pub, ctl = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "livedenoise", "demo", "--size", "96", "--seconds", "240"]
    proc = subprocess.Popen(
        [*cmd, "--pub", pub, "--control", ctl],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                if request(ctl, {"cmd": "status"}, timeout_s=1.0).get("state") == "running":
                    break
            except TimeoutError:
                pass
            assert time.monotonic() < deadline, "the demo did not start"
        yield pub
    finally:
        try:
            request(ctl, {"cmd": "stop"}, timeout_s=5.0)
            proc.wait(30)
        except Exception:
            proc.kill()
        proc.communicate()


def _pump(predicate: Any, timeout_s: float) -> bool:
    """Run the Qt event loop until ``predicate()`` or the timeout."""
    from livedenoise.app.viewer.window import wait_ms

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        wait_ms(20)
    return True


def _grey(qimage: Any) -> np.ndarray:
    """A QImage as a float array of grey levels."""
    from qtpy import QtGui

    img = qimage.convertToFormat(QtGui.QImage.Format.Format_Grayscale8)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits().asstring(h * bpl), np.uint8).reshape(h, bpl)
    return buf[:, :w].astype(np.float64)


def _roughness(grey: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels: noise shows up here."""
    return float(np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=0)).mean())


@pytest.fixture
def window(qapp: Any, demo: str) -> Iterator[Any]:
    from livedenoise.app.viewer.feed import FrameFeed
    from livedenoise.app.viewer.window import ViewerWindow

    feed = FrameFeed(demo, ("raw", "denoised", "truth"))
    win = ViewerWindow(feed, ("raw", "denoised", "truth"))
    win.widget.resize(1200, 520)
    win.widget.show()
    try:
        yield win
    finally:
        win.close()
        feed.close()


def test_the_window_shows_the_demo_and_restoration_removed_noise(window: Any) -> None:
    from livedenoise.app.viewer.feed import raw_to_photoelectrons

    topics = {"raw", "denoised", "truth"}
    assert _pump(lambda: window.frames_shown >= 5 and set(window.last.messages) == topics, 30)
    msgs = window.last.messages  # one camera frame as the three topics published it
    raw_e = raw_to_photoelectrons(msgs["raw"].array, msgs["raw"].header)[0]
    den, truth = msgs["denoised"].array, msgs["truth"].array
    assert raw_e.shape == den.shape == truth.shape == (96, 96)
    # raw is on the photoelectron scale (from the daemon's median calibration in the raw header)
    assert "e⁻ = (ADU −" in window.panels[0].title.text()
    assert abs(float(raw_e.mean()) - float(truth.mean())) < 0.1 * float(truth.mean()) + 1
    assert np.std(raw_e - truth) > 1.5 * np.std(den - truth)  # the restoration removed noise
    info = window.info.text()
    assert (
        "frame" in info
        and "fps received" in info
        and any(f"model {m}" in info for m in (DEFAULT_MODEL, QUALITY_MODEL))  # chosen for the camera
        and "calibration" in info
    )
    # on screen: the raw panel is visibly rougher than the restored one, with the same contrast
    assert _pump(lambda: window.frames_shown >= 8, 10)
    clims = {p.topic: (p.lut.clims.min, p.lut.clims.max) for p in window.panels}
    assert clims["raw"] == clims["denoised"] == clims["truth"]  # one contrast for all panels
    grabs = {p.topic: _grey(p.viewer.widget().grab().toImage()) for p in window.panels}
    crop = {t: g[40:-80, 20:-20] for t, g in grabs.items()}  # the image, not the buttons
    assert crop["raw"].std() > 5, "the raw panel is blank"
    assert _roughness(crop["raw"]) > 1.5 * _roughness(crop["denoised"])


def test_a_panel_redraws_every_new_frame(qapp: Any, rng: np.random.Generator) -> None:
    """What is on screen follows the buffer: noisy frames, then smooth ones, must look smooth."""
    from ndv.models import ClimsManual

    from livedenoise.app.viewer.window import _Panel

    os.environ.setdefault("NDV_SYNCHRONOUS", "1")
    panel = _Panel("raw")
    panel.lut.clims = ClimsManual(min=0, max=100)
    panel.widget.resize(500, 500)
    panel.widget.show()
    smooth = np.tile(np.linspace(0, 100, 128, dtype=np.float32), (128, 1))
    try:
        for _ in range(5):
            panel.show(smooth + rng.normal(0, 20, smooth.shape).astype(np.float32))
            _pump(lambda: False, 0.04)
        noisy = _roughness(_grey(panel.viewer.widget().grab().toImage())[60:-80, 20:-20])
        for _ in range(5):
            panel.show(smooth)
            _pump(lambda: False, 0.04)
        calm = _roughness(_grey(panel.viewer.widget().grab().toImage())[60:-80, 20:-20])
        assert calm < noisy / 4, (noisy, calm)
    finally:
        panel.viewer.close()
        panel.widget.close()


def test_linked_zoom_and_flip(window: Any) -> None:
    assert _pump(lambda: window.frames_shown >= 2, 30)
    raw_panel, den_panel = window.panels[0], window.panels[1]
    raw_panel.viewer._canvas.zoom(0.5, (48, 48))  # zoom in on one panel...
    assert _pump(lambda: np.allclose(raw_panel.camera.rect.size, den_panel.camera.rect.size), 5)
    assert raw_panel.camera.rect.width < 60  # ...the others follow
    window.flip_box.setChecked(True)
    window.flip_slider.setValue(1)
    assert _pump(lambda: window.frames_shown >= 4, 10)
    assert raw_panel.topic == "denoised" and not den_panel.widget.isVisible()
    assert raw_panel.widget.isVisible() and "flip" in raw_panel.title.text()


def test_view_command_writes_a_screenshot_of_the_window(demo: str, display: str, tmp_path: Path) -> None:
    shot = tmp_path / "view.png"
    argv = ["view", "--endpoint", demo, "--seconds", "3", "--screenshot", str(shot), "--size", "1200x500"]
    proc = subprocess.run(
        [sys.executable, "-m", "livedenoise", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "showed" in proc.stderr and f"screenshot of the window: {shot}" in proc.stderr
    import matplotlib.image

    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (500, 1200)
    grey = image[..., :3].mean(axis=2)
    canvas = grey[80:400, 20:380]  # inside the first panel's image
    assert canvas.std() > 0.02, "the screenshot shows no image"


def test_nothing_arrives_exits_1_with_the_reason(qapp: Any, tmp_path: Path, capsys: Any) -> None:
    shot = tmp_path / "empty.png"
    rc = main(["view", "--endpoint", "tcp://127.0.0.1:9", "--seconds", "0.5", "--screenshot", str(shot)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no frame arrived: nothing from tcp://127.0.0.1:9" in err and "livedenoise demo" in err
    assert shot.stat().st_size > 0  # the window, with its message, for a bug report


def _raw_pub(port: int) -> Any:
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    return sock


def _send(sock: Any, topic: str, frame: int, seq: int, shape: tuple[int, int], **over: Any) -> None:
    arr = np.full(shape, 100 + frame % 50, np.uint16 if topic == "raw" else np.float32)
    h = make_header(
        topic,
        frame=frame,
        seq=seq,
        array=arr,
        exposure_ms=5.0,
        t_acquired=time.time(),
        t_published=time.time(),
        dropped=0,
        camera="cam",
        model="m",
        calibration="c",
    )
    h.update(over)
    sock.send_multipart([topic.encode(), encode_header(h), arr.tobytes()])


def test_restart_new_roi_and_foreign_messages(qapp: Any) -> None:
    """The daemon restarts (same endpoint, counters from 0) with another ROI; foreign headers."""
    from livedenoise.app.viewer.feed import FrameFeed
    from livedenoise.app.viewer.window import ViewerWindow

    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    feed = FrameFeed(endpoint, ("raw", "denoised"))
    win = ViewerWindow(feed, ("raw", "denoised"))
    win.widget.show()
    socks = [_raw_pub(port)]
    try:
        frame = 0

        def tick(shape: tuple[int, int], base: int) -> bool:
            nonlocal frame
            for t in ("raw", "denoised"):
                _send(socks[-1], t, base + frame, frame, shape)
            _send(socks[-1], "denoised", frame, frame, shape, protocol="other/2")  # not ours: skipped
            frame += 1
            return False

        assert _pump(lambda: tick((32, 48), 1000) or win.panels[1].shape == (32, 48), 20)
        socks[-1].close(0)  # the daemon stops...
        assert _pump(lambda: "no frame from" in win.status.text(), 10)
        assert "reconnects by itself" in win.status.text() and feed.status().state == "stalled"
        socks.append(_raw_pub(port))  # ...and comes back with a new ROI, counting from 0
        frame = 0
        assert _pump(lambda: tick((40, 40), 0) or win.panels[1].shape == (40, 40), 20)
        assert win.panels[0].shape == (40, 40) and win.images["raw"].shape == (40, 40)
        st = feed.status()
        assert st.restarts >= 1 and st.malformed >= 2 and st.state == "live"
        assert _pump(lambda: "skipped" in win.info.text() and "restarted" in win.info.text(), 5)
    finally:
        for sock in socks:
            sock.close(0)
        win.close()
        feed.close()


def test_no_display_names_xvfb_and_screenshot(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert main(["view", "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "no display" in err and "xvfb-run -a livedenoise view" in err and "--screenshot" in err


def test_offscreen_platform_without_opengl_is_refused_clearly() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["QT_QPA_PLATFORM"] = "offscreen"
    proc = subprocess.run(
        [sys.executable, "-m", "livedenoise", "view", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if proc.returncode == 1:  # this Qt build has OpenGL offscreen: the viewer ran (nothing published)
        assert "no frame arrived" in proc.stderr
        return
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "has no OpenGL here" in proc.stderr and "xvfb-run" in proc.stderr


def test_missing_extra_names_the_pip_command(monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setitem(sys.modules, "ndv", None)  # as if not installed
    assert main(["view", "--seconds", "1"]) == 2
    assert 'pip install "livedenoise[view]"' in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--topics", "raw,video"], "--topics takes some of"),
        (["--screenshot", "x.png"], "--screenshot needs --seconds"),
        (["--seconds", "0"], "--seconds must be positive"),
        (["--size", "big"], "--size takes WIDTHxHEIGHT"),
    ],
)
def test_bad_arguments(argv: list[str], match: str, capsys: Any) -> None:
    assert main(["view", *argv]) == 2
    assert match in capsys.readouterr().err


def test_help_has_an_example(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["view", "--help"])
    out = capsys.readouterr().out
    assert "Example" in out and "--screenshot" in out and json is not None
