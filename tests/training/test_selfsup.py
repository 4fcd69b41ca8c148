"""Self-supervised adaptation (livedenoise.training.selfsup, `train --self-supervised`, `adapt --from`)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livedenoise.app.adapt import adapt_from_stream
from livedenoise.calibration.maps import Calibration, write_calibration
from livedenoise.cli import main
from livedenoise.inference.modelio import load_model
from livedenoise.training.finetune import FinetuneConfig
from livedenoise.training.selfsup import SelfSupConfig, _neighbor_views, adapt, frames_to_e, make_pairs
from livedenoise.transport.control import ControlServer
from livedenoise.transport.publisher import Publisher

SIZE = 48


def _scene(seed: int = 0) -> np.ndarray:
    """A still field unlike the training phantoms: blobs on a haze of 7 e- background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img = np.full((SIZE, SIZE), 7.0, np.float32)
    for _ in range(12):
        cy, cx, s = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(1.5, 4.0)
        img += 10.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return img


def _camera() -> Calibration:
    rng = np.random.default_rng(1)
    return Calibration(
        (100 + rng.normal(0, 1, (SIZE, SIZE))).astype(np.float32),
        (2.0 + rng.normal(0, 0.05, (SIZE, SIZE))).astype(np.float32),
        np.full((SIZE, SIZE), 1.5, np.float32),
        meta={"camera": "test"},
    )


def _frames(n: int, seed: int = 2) -> np.ndarray:
    cal, truth, rng = _camera(), _scene(), np.random.default_rng(seed)
    e = rng.poisson(truth, (n, SIZE, SIZE)) + rng.normal(0, np.sqrt(1.5), (n, SIZE, SIZE))
    return np.clip(np.rint(cal.offset_adu + cal.gain_adu_per_e * e), 0, 65535).astype(np.uint16)


FAST = FinetuneConfig(steps=40, batch=4, patch=32, eval_every=10, patience=4, threads=1, lr=1e-3)


def test_neighbor_views_take_two_different_pixels_of_every_cell() -> None:
    frame = np.arange(16, dtype=np.float32).reshape(4, 4)
    a, b = _neighbor_views(frame, np.random.default_rng(0))
    assert a.shape == b.shape == (2, 2)
    cells = frame.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(2, 2, 4)
    for i in range(2):
        for j in range(2):
            assert a[i, j] in cells[i, j] and b[i, j] in cells[i, j] and a[i, j] != b[i, j]


def test_temporal_pairs_are_consecutive_frames_with_ratio_one() -> None:
    frames = np.stack([np.full((4, 4), k, np.float32) for k in range(5)])
    pairs = make_pairs(frames, "temporal", np.random.default_rng(0))
    assert [(p.short[0, 0, 0], p.long[0, 0], p.ratio) for p in pairs] == [(k, k + 1, 1.0) for k in range(4)]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((3, SIZE, SIZE), np.float32), "uint16 frames"),
        (np.zeros((3, 4, SIZE, SIZE), np.uint16), "uint16 frames"),
        (np.zeros((3, SIZE, SIZE + 2), np.uint16), "calibration"),
    ],
)
def test_frames_that_do_not_fit_are_refused(frames: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        frames_to_e(frames, _camera())


def test_too_few_frames_for_temporal_is_refused() -> None:
    e = frames_to_e(_frames(3), _camera())
    with pytest.raises(ValueError, match="at least 4 frames"):
        adapt(e, "rln-denoise-v2", config=SelfSupConfig(method="temporal", finetune=FAST), progress=False)


def test_adapting_on_noisy_frames_alone_improves_the_held_out_measure(tmp_path: Path) -> None:
    e = frames_to_e(_frames(12), _camera())
    out = tmp_path / "adapted.pt"
    _, card, history = adapt(
        e, "rln-denoise-v2", out, SelfSupConfig(method="temporal", finetune=FAST), progress=False
    )
    h = card.quality["heldout_frames"]
    assert history["method"] == "temporal" and history["improved"] is True
    assert h["after"]["poisson_deviance"] < h["before"]["poisson_deviance"]
    assert card.training["kind"] == "self-supervised" and card.training["frames"]["count"] == 12
    module, loaded = load_model(out)
    assert loaded.id == "adapted" and loaded.training["method"] == "temporal"


def test_train_self_supervised_from_a_tiff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tifffile.imwrite(tmp_path / "frames.tif", _frames(12))
    write_calibration(tmp_path / "cal.tif", _camera())
    out = tmp_path / "mine.pt"
    argv = [
        "train",
        "--self-supervised",
        str(tmp_path / "frames.tif"),
        "--calibration",
        str(tmp_path / "cal.tif"),
    ]
    argv += ["--init", "rln-denoise-v2", "-o", str(out), "--steps", "40", "--batch", "4", "--patch", "32"]
    assert main([*argv, "--threads", "1", "--no-progress"]) == 0
    assert "by temporal self-supervision on 12 frames" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["method"] == "temporal" and card["quality"]["heldout_frames"]["improved"]


def test_train_self_supervised_needs_a_calibration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tifffile.imwrite(tmp_path / "frames.tif", _frames(6))
    assert (
        main(["train", "--self-supervised", str(tmp_path / "frames.tif"), "-o", str(tmp_path / "x.pt")]) == 2
    )
    assert "needs --calibration" in capsys.readouterr().err


def test_adapt_from_a_live_stream_switches_the_daemon(tmp_path: Path) -> None:
    stack = _frames(60, seed=5)
    pub = Publisher("tcp://127.0.0.1:*")
    asked: list[dict] = []
    server = ControlServer(
        "tcp://127.0.0.1:*", {"set_model": lambda req: asked.append(req) or {"engine": {"model": "adapted"}}}
    )
    server.start()
    stop = threading.Event()

    def camera() -> None:  # a daemon's raw stream, frame after frame
        k = 0
        while not stop.is_set():
            pub.publish(
                "raw",
                stack[k % len(stack)],
                frame=k,
                exposure_ms=20.0,
                t_acquired=time.time(),
                dropped=0,
                camera="Camera",
                model="rln-denoise-v2",
                calibration="test",
            )
            k += 1
            time.sleep(0.005)

    t = threading.Thread(target=camera, daemon=True)
    t.start()
    try:
        res = adapt_from_stream(
            pub.endpoint,
            _camera(),
            tmp_path / "adapted.pt",
            frames=12,
            config=SelfSupConfig(method="temporal", finetune=FAST),
            control=server.endpoint,
            progress=False,
        )
    finally:
        stop.set()
        t.join(5)
        server.close()
        pub.close()
    assert res.frames == 12 and res.improved and res.switched
    assert asked == [{"cmd": "set_model", "model": str(tmp_path / "adapted.pt")}]


def test_adapt_says_when_no_frame_arrives(tmp_path: Path) -> None:
    pub = Publisher("tcp://127.0.0.1:*")
    try:
        with pytest.raises(TimeoutError, match="no raw frame"):
            adapt_from_stream(
                pub.endpoint, _camera(), tmp_path / "x.pt", frames=4, timeout_s=1.0, progress=False
            )
    finally:
        pub.close()
