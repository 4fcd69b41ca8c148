"""The trust score of restored frames (livedenoise.live.qc), on the simulated sCMOS camera."""

from __future__ import annotations

import numpy as np
import pytest
from _pipeline_helpers import sim_core, wait_for
from scipy.ndimage import gaussian_filter

from livedenoise.calibration.maps import Calibration, PhotonConverter
from livedenoise.inference.engines import PassthroughEngine, make_engine
from livedenoise.live.config import PipelineConfig
from livedenoise.live.pipeline import Pipeline
from livedenoise.live.qc import QCBounds, QCSummary, frame_qc, qc_verdict
from livedenoise.live.sources import CoreSource
from livedenoise.transport.publisher import Publisher
from livedenoise.transport.subscriber import Subscriber


def _frames(n: int = 4, size: int = 96, exposure_ms: float = 50.0) -> tuple[list[np.ndarray], Calibration]:
    """``n`` raw frames of the simulator's cells scene, and its true calibration."""
    core, cam = sim_core(size, exposure_ms=exposure_ms, seed=3)
    core.setProperty(core.getCameraDevice(), "Scene", "cells")
    frames = []
    for _ in range(n):
        core.snapImage()
        frames.append(np.array(core.getImage(), copy=True))
    return frames, cam.true_calibration()


@pytest.fixture(scope="module")
def sim_frames() -> tuple[list[np.ndarray], Calibration]:
    return _frames()


def _scores(frames: list[np.ndarray], cal: Calibration, restore) -> list[dict]:
    conv = PhotonConverter(cal)
    out = []
    for raw in frames:
        e = conv.convert(raw)
        out.append(frame_qc(e, restore(e), cal.read_var_e2))
    return out


def _engine_restore(engine):
    def restore(e: np.ndarray) -> np.ndarray:
        out = np.empty_like(e)
        engine.prepare(e.shape)
        return engine.restore(e, out)

    return restore


def _with_gain(cal: Calibration, factor: float) -> Calibration:
    return Calibration(cal.offset_adu, cal.gain_adu_per_e * factor, cal.read_var_e2, meta=dict(cal.meta))


def test_default_model_with_the_true_maps_is_ok(sim_frames) -> None:
    frames, cal = sim_frames
    scores = _scores(frames, cal, _engine_restore(make_engine("cpu")))
    assert all(s["ok"] for s in scores), scores
    assert all(0.70 <= s["chi2"] <= 1.1 for s in scores)  # 0.71-0.80 (README, Trust score)
    assert qc_verdict(scores[0]).startswith("qc ok")


@pytest.mark.parametrize(
    ("gain_factor", "chi2_side", "phrase"),
    [(0.5, "high", "gain in the calibration too low"), (2.0, "low", "gain in the calibration too high")],
)
def test_a_wrong_gain_is_flagged_and_says_which_way(sim_frames, gain_factor, chi2_side, phrase) -> None:
    frames, cal = sim_frames
    scores = _scores(frames, _with_gain(cal, gain_factor), _engine_restore(make_engine("cpu")))
    b = QCBounds()
    for s in scores:
        assert not s["ok"]
        assert s["chi2"] > b.chi2_high if chi2_side == "high" else s["chi2"] < b.chi2_low
        assert phrase in qc_verdict(s)


def test_passthrough_output_follows_the_noise(sim_frames) -> None:
    frames, cal = sim_frames
    scores = _scores(frames, cal, _engine_restore(PassthroughEngine()))
    assert all(not s["ok"] and s["chi2"] < 0.1 for s in scores)
    assert "follows the noise" in qc_verdict(scores[0])


def test_an_oversmoothing_restoration_leaves_structure_in_the_residual(sim_frames) -> None:
    frames, cal = sim_frames
    good = _engine_restore(make_engine("cpu"))

    def blurred(e: np.ndarray) -> np.ndarray:  # a model meant for much wider structure
        return gaussian_filter(good(e), 3.0)

    scores = _scores(frames, cal, blurred)
    b = QCBounds()
    assert all(not s["ok"] for s in scores)
    assert all(s["structure"] > b.structure_max or s["chi2"] > b.chi2_high for s in scores)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_pure_noise_residual_scores_one_and_zero(stride: int) -> None:
    rng = np.random.default_rng(0)
    mu = np.full((256, 256), 20.0, np.float32)
    read_var = np.full(mu.shape, 2.0, np.float32)
    raw = (rng.poisson(mu) + rng.normal(0, np.sqrt(2.0), mu.shape)).astype(np.float32)
    qc = frame_qc(raw, mu, read_var, stride=stride)
    assert qc["ok"] and abs(qc["chi2"] - 1.0) < 0.05 and abs(qc["structure"]) < 0.03


def test_bad_input_is_refused_with_the_shapes() -> None:
    a = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"\(8, 8\), \(8, 9\)"):
        frame_qc(a, np.zeros((8, 9), np.float32), a)
    with pytest.raises(ValueError, match="stride"):
        frame_qc(a, a, a, stride=0)
    nan = np.full((8, 8), np.nan, np.float32)
    assert frame_qc(nan, a, a) == {"chi2": None, "structure": None, "ok": False}


def test_summary_counts_ok_frames() -> None:
    s = QCSummary()
    assert s.snapshot()["ok_fraction"] is None
    s.add({"chi2": 1.0, "structure": 0.0, "ok": True})
    s.add({"chi2": 2.0, "structure": 0.0, "ok": False})
    snap = s.snapshot()
    assert snap["frames"] == 2 and snap["ok_fraction"] == 0.5 and snap["chi2_mean"] == 1.5


def test_pipeline_publishes_qc_on_denoised_only() -> None:
    core, cam = sim_core(64, exposure_ms=5.0)
    pub = Publisher("tcp://127.0.0.1:*")
    sub = Subscriber(pub.endpoint, topics=("raw", "denoised"))
    pipe = Pipeline(
        CoreSource(core), make_engine("cpu"), pub, cam.true_calibration(), PipelineConfig(qc_stride=2)
    )
    got: dict[str, dict] = {}
    try:
        assert wait_for(lambda: pub.has_subscribers("denoised") and pub.has_subscribers("raw"))
        pipe.start()

        def both() -> bool:
            msg = sub.recv(0.05)
            if msg is not None:
                got.setdefault(msg.topic, msg.header)
            return len(got) == 2

        assert wait_for(both, 30.0)
        assert wait_for(lambda: pipe.status()["qc"]["frames"] > 0)
    finally:
        pipe.close()
        sub.close()
    assert "qc" not in got["raw"]
    qc = got["denoised"]["qc"]
    assert set(qc) == {"chi2", "structure", "ok"} and qc["ok"] is True
    assert pipe.status()["qc"]["ok_fraction"] > 0.5
