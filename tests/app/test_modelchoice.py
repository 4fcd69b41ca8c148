"""The live model chosen by hardware: the best one that keeps up with the camera; --model wins."""

from __future__ import annotations

import io

import numpy as np
import pytest

from livedenoise.app import daemon, modelchoice
from livedenoise.app.modelchoice import CPU_PIPELINE_SLOWDOWN, KEEP_UP, card_frame_ms, choose_model
from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL, read_card, resolve_model


def _quality_ms_512() -> float:
    est = card_frame_ms(read_card(resolve_model(QUALITY_MODEL)), (512, 512))
    assert est is not None, "the quality model's card carries its CPU speed"
    return est * CPU_PIPELINE_SLOWDOWN  # what it takes inside the pipeline


def test_cpu_uses_the_fast_model_where_the_quality_model_cannot_keep_up():
    ms = _quality_ms_512()
    choice = choose_model("cpu", None, frame_shape=(512, 512), frame_interval_ms=ms)
    assert choice.model == DEFAULT_MODEL and choice.engine is None
    assert QUALITY_MODEL in choice.reason and "--model" in choice.reason


def test_cpu_uses_the_quality_model_on_a_slow_or_small_frame():
    ms = _quality_ms_512()
    choice = choose_model(None, None, frame_shape=(512, 512), frame_interval_ms=2 * ms / KEEP_UP)
    assert choice.model == QUALITY_MODEL and "keeps up" in choice.reason
    small = choose_model("cpu", None, frame_shape=(64, 64), frame_interval_ms=ms)  # 1/64 of the pixels
    assert small.model == QUALITY_MODEL


def test_an_explicit_model_always_wins_and_passthrough_needs_none():
    assert choose_model("cpu", "rln-denoise-v2", frame_shape=(512, 512), frame_interval_ms=1).reason == (
        "asked for with --model"
    )
    assert choose_model("passthrough", None, frame_shape=(8, 8), frame_interval_ms=1).model is None


class _TimedEngine:
    """An engine whose restore takes a set time (stands in for a GPU engine here)."""

    name = "cuda"

    def __init__(self, ms: float) -> None:
        self.ms, self.closed, self.shape = ms, False, None

    def prepare(self, shape):
        self.shape = shape

    def restore(self, frame_e, out):
        modelchoice.time.sleep(self.ms / 1e3)
        out[...] = frame_e
        return out

    def describe(self):
        return {"backend": "cuda", "model": QUALITY_MODEL}

    def close(self):
        self.closed = True


@pytest.mark.parametrize("ms, keeps_up", [(1.0, True), (30.0, False)])
def test_gpu_times_the_quality_model_on_the_camera_frame(monkeypatch, ms, keeps_up):
    made = []

    def fake_make_engine(kind, model=None, **options):
        assert kind == "cuda" and model == QUALITY_MODEL
        made.append(_TimedEngine(ms))
        return made[-1]

    monkeypatch.setattr(modelchoice, "make_engine", fake_make_engine)
    choice = choose_model("cuda", None, frame_shape=(64, 96), frame_interval_ms=20.0)
    assert made[0].shape == (64, 96)
    if keeps_up:
        assert choice.model == QUALITY_MODEL and choice.engine is made[0] and not made[0].closed
    else:
        assert choice.model == DEFAULT_MODEL and choice.engine is None and made[0].closed
        assert "more than 80%" in choice.reason


def test_gpu_failure_falls_back_to_the_fast_model_and_says_why(monkeypatch):
    def broken(kind, model=None, **options):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(modelchoice, "make_engine", broken)
    choice = choose_model("tensorrt", None, frame_shape=(64, 64), frame_interval_ms=20.0)
    assert choice.model == DEFAULT_MODEL and "CUDA out of memory" in choice.reason


class _Core:
    def getImageHeight(self):
        return 64

    def getImageWidth(self):
        return 64

    def getExposure(self):
        return 10_000.0


def test_the_choice_is_printed_first_and_the_engine_built_for_it():
    out = io.StringIO()
    engine = daemon.start_live_engine(
        "cpu", None, _Core(), fallback=False, options={"precision": "fp32"}, out=out
    )
    try:
        line = out.getvalue().splitlines()[0]
        assert line.startswith(f"livedenoise: model {QUALITY_MODEL}: the quality model")
        assert engine.describe()["model"] == QUALITY_MODEL
        x = np.full((64, 64), 5.0, np.float32)
        engine.prepare((64, 64))
        assert np.isfinite(engine.restore(x, np.empty_like(x))).all()
    finally:
        engine.close()


def test_a_live_cpu_engine_leaves_one_core_to_the_pipeline(monkeypatch):
    from livedenoise.app.modelchoice import live_engine_options

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(modelchoice.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert live_engine_options("cpu", None) == {"threads": 1}
    assert live_engine_options(None, {"precision": "fp32"}) == {"precision": "fp32", "threads": 1}
    assert live_engine_options("cpu", {"threads": 2}) == {"threads": 2}  # --threads wins
    monkeypatch.setattr(modelchoice.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert live_engine_options("onnx", None) == {"threads": 7}
    monkeypatch.setattr(modelchoice.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert live_engine_options("cpu", None) == {"threads": 1}
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's setting stands
    assert live_engine_options("cpu", None) == {}
    assert live_engine_options("passthrough", {"threads": None}) == {}
    with pytest.raises(ValueError, match="the cuda engine takes none"):
        live_engine_options("cuda", {"threads": 2})


def test_the_cpu_estimate_uses_the_cards_figure_for_the_engines_threads():
    card = read_card(resolve_model(QUALITY_MODEL))
    one, two = card_frame_ms(card, (256, 256), threads=1), card_frame_ms(card, (256, 256))
    assert one is not None and two is not None and one > two  # one thread is slower alone
    assert one == pytest.approx(min(card.speed["fp32_1t_ms_median"], card.speed["bf16_1t_ms_median"]) / 4)
    choice = choose_model(
        "cpu",
        None,
        frame_shape=(256, 256),
        frame_interval_ms=1.1 * one * 1.4 / KEEP_UP,
        options={"threads": 1},
    )
    assert choice.model == QUALITY_MODEL
