"""The live model chosen by hardware: the best one that keeps up with the camera; --model wins."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

from livedenoise.app import daemon, modelchoice
from livedenoise.app.modelchoice import CPU_PIPELINE_SLOWDOWN_1T, KEEP_UP, choose_model
from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL


def _timed(monkeypatch, ms: float, precision: str = "bf16") -> list:
    """The quality model takes ``ms`` a 256² frame alone on this CPU (what cpu_frame_ms measures)."""
    calls = []

    def fake(model, *, threads=None, **kw):
        calls.append({"model": model, "threads": threads, **kw})
        return {
            "ms": ms,
            "precision": precision,
            "threads": threads or 2,
            "shape": [256, 256],
            "source": "measured",
        }

    monkeypatch.setattr(modelchoice, "cpu_frame_ms", fake)
    return calls


def test_cpu_uses_the_fast_model_where_the_quality_model_cannot_keep_up(monkeypatch):
    calls = _timed(monkeypatch, 30.0)
    # 512² is 4x the timed frame, 2x in the pipeline on two threads: 240 ms against 0.8 x 100 ms
    choice = choose_model("cpu", None, frame_shape=(512, 512), frame_interval_ms=100.0)
    assert calls[0]["model"] == QUALITY_MODEL
    assert choice.model == DEFAULT_MODEL and choice.engine is None
    assert QUALITY_MODEL in choice.reason and "--model" in choice.reason
    assert (
        "~240 ms a 512×512 frame in the pipeline on this CPU (30.0 ms a 256×256 frame alone, bf16"
        in choice.reason
    )


def test_cpu_uses_the_quality_model_where_it_keeps_up(monkeypatch):
    calls = _timed(monkeypatch, 10.0)
    choice = choose_model(None, None, frame_shape=(512, 512), frame_interval_ms=80 / KEEP_UP)
    assert choice.model == QUALITY_MODEL and "keeps up" in choice.reason and "~80 ms" in choice.reason
    small = choose_model("cpu", None, frame_shape=(64, 64), frame_interval_ms=10.0)  # 1/16 of the pixels
    assert small.model == QUALITY_MODEL
    # one engine thread: the pipeline's slowdown for one thread (1.4x), the engine's precision asked for
    calls.clear()
    one = choose_model(
        "cpu",
        None,
        frame_shape=(256, 256),
        frame_interval_ms=10.0 * CPU_PIPELINE_SLOWDOWN_1T / KEEP_UP + 0.1,
        options={"threads": 1, "precision": "fp32"},
    )
    assert one.model == QUALITY_MODEL and calls[0]["threads"] == 1 and calls[0]["precision"] == "fp32"
    two = choose_model(
        "cpu",
        None,
        frame_shape=(256, 256),
        frame_interval_ms=10.0 * CPU_PIPELINE_SLOWDOWN_1T / KEEP_UP + 0.1,
        options={"threads": 2},
    )
    assert two.model == DEFAULT_MODEL  # two threads: 2x in the pipeline


def test_cpu_timing_failure_falls_back_to_the_fast_model_and_says_why(monkeypatch):
    def broken(model, **kw):
        raise RuntimeError("weights do not match their card")

    monkeypatch.setattr(modelchoice, "cpu_frame_ms", broken)
    choice = choose_model("cpu", None, frame_shape=(64, 64), frame_interval_ms=1000.0)
    assert choice.model == DEFAULT_MODEL and "weights do not match their card" in choice.reason


def test_cpu_frame_ms_measures_once_then_reads_the_cache(monkeypatch, tmp_path):
    from livedenoise.inference.engines import torch_cpu

    monkeypatch.setenv("LIVEDENOISE_CACHE", str(tmp_path))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))  # a quiet machine
    built = []
    real = torch_cpu.TorchCPUEngine

    class Counting(real):
        def __init__(self, *a, **kw):
            built.append(kw)
            super().__init__(*a, **kw)

    monkeypatch.setattr(torch_cpu, "TorchCPUEngine", Counting)
    ms = torch_cpu.cpu_frame_ms
    first = ms("rln-denoise-v2", threads=1, precision="fp32", shape=(64, 64))
    assert first["source"] == "measured" and first["ms"] > 0 and first["precision"] == "fp32"
    assert first["threads"] == 1 and first["shape"] == [64, 64] and first["load"] == 0.5 and len(built) == 1
    again = ms("rln-denoise-v2", threads=1, precision="fp32", shape=(64, 64))
    assert again == {**first, "source": "cached probe"} and len(built) == 1  # no model loaded again
    # another shape, thread count or precision asked for is another probe
    assert ms("rln-denoise-v2", threads=1, precision="fp32", shape=(32, 32))["source"] == "measured"
    assert ms("rln-denoise-v2", threads=2, precision="fp32", shape=(64, 64))["source"] == "measured"
    assert ms("rln-denoise-v2", threads=1, precision="auto", shape=(64, 64))["source"] == "measured"
    assert len(built) == 4
    # measured on a machine busier than its cores: measured again next time, and the quiet figure kept
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    busy = ms("rln-denoise-v2", threads=1, precision="fp32", shape=(16, 16))
    assert busy["source"] == "measured" and busy["load"] == 9.0
    assert ms("rln-denoise-v2", threads=1, precision="fp32", shape=(16, 16))["source"] == "measured"
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert ms("rln-denoise-v2", threads=1, precision="fp32", shape=(16, 16))["source"] == "measured"
    assert ms("rln-denoise-v2", threads=1, precision="fp32", shape=(16, 16))["source"] == "cached probe"


def test_a_quality_model_whose_weights_changed_is_never_timed_from_the_cache(monkeypatch, tmp_path):
    import shutil

    from livedenoise.inference.engines import torch_cpu
    from livedenoise.inference.modelio import ModelError, resolve_model

    monkeypatch.setenv("LIVEDENOISE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    src = resolve_model("rln-denoise-v2")
    copy = tmp_path / "q.pt"
    shutil.copy(src, copy)
    shutil.copy(src.with_suffix(".json"), copy.with_suffix(".json"))
    assert torch_cpu.cpu_frame_ms(str(copy), threads=1, precision="fp32", shape=(32, 32))["ms"] > 0
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF  # damaged on disk after its speed was cached
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="not the ones its card names"):
        torch_cpu.cpu_frame_ms(str(copy), threads=1, precision="fp32", shape=(32, 32))
    monkeypatch.setattr(modelchoice, "QUALITY_MODEL", str(copy))
    choice = choose_model("cpu", None, frame_shape=(32, 32), frame_interval_ms=10_000.0)
    assert choice.model == DEFAULT_MODEL and "not the ones its card names" in choice.reason


def test_onnx_is_estimated_from_the_float32_cpu_time(monkeypatch):
    calls = _timed(monkeypatch, 10.0, precision="fp32")
    choice = choose_model(
        "onnx", None, frame_shape=(256, 256), frame_interval_ms=30.0, options={"threads": 1}
    )
    assert calls[0]["precision"] == "fp32" and choice.model == QUALITY_MODEL  # 14 ms against 24
    assert "onnxruntime's is about the same" in choice.reason


def test_the_pipeline_slowdown_follows_the_threads_the_engine_ran_on(monkeypatch):
    _timed(monkeypatch, 10.0)
    # OMP_NUM_THREADS set: no thread count in the options, the timed engine ran on what torch had (2 here)
    two = choose_model("cpu", None, frame_shape=(256, 256), frame_interval_ms=15.0 / KEEP_UP)
    assert two.model == DEFAULT_MODEL and "~20 ms" in two.reason  # x2 on two threads
    monkeypatch.setattr(
        modelchoice,
        "cpu_frame_ms",
        lambda model, **kw: {
            "ms": 10.0,
            "precision": "fp32",
            "threads": 1,
            "shape": [256, 256],
            "source": "cached probe",
        },
    )
    one = choose_model("cpu", None, frame_shape=(256, 256), frame_interval_ms=15.0 / KEEP_UP)
    assert one.model == QUALITY_MODEL and "~14 ms" in one.reason  # x1.4 on one


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
        time.sleep(self.ms / 1e3)
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
