"""GPU engines against the fp32 CPU result. Marked ``gpu``: skipped, with the reason, without CUDA.

Run on a GPU machine with ``python -m pytest tests/test_gpu.py -v`` (TensorRT tests also need
``pip install -e ".[gpu]"``; they skip with the reason when torch-tensorrt is missing).
Tolerance: the engines' own precision check, ``TOLERANCE`` in ``livedenoise.inference.engines.validation``
(max |gpu - cpu fp32| <= 1e-2 of the output range for fp16, 3e-2 for bf16). An engine that runs
"fp32" is held to the fp16 tolerance against the CPU: on Ampere and newer GPUs cuDNN runs fp32
convolutions in TF32 unless ``torch.backends.cudnn.allow_tf32`` is turned off.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from livedenoise.app.bench import bench_engine
from livedenoise.inference.engines.torch_cuda import TorchCUDAEngine
from livedenoise.inference.engines.validation import TOLERANCE, relative_error, synthetic_frame

pytestmark = pytest.mark.gpu

SHAPES = [(512, 512), (2048, 2048)]
MODELS = [
    "rln-denoise-v1",
    "rln-denoise-v2",
    "resunet-denoise-v1",
    "resunet-live-v1",
    "resunet-live-v2",
    "resunet-denoise-v2",
    "resunet-live-v3",
    "resunet-live-v4",
    "resunet-live-v5",
    "resunet-live-v6",
    "resunet-live-v7",
    "resunet-live-v8",
    "resunet-denoise-v3",
    "resunet-denoise-v4",
    "resunet-denoise-v5",
    "resunet-denoise-v6",
    "resunet-denoise-v7",
]


def _model(model_id: str):
    from livedenoise.inference.modelio import load_model, resolve_model

    try:
        resolve_model(model_id)
    except FileNotFoundError:
        pytest.skip(f"model {model_id} is not installed")
    return load_model(model_id)


def _cpu_fp32(module, frame: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.float().cpu()(torch.from_numpy(frame)[None, None]).numpy()[0, 0]


def _tolerance(engine) -> float:
    precision = engine.describe()["precision"]
    return TOLERANCE["fp16"] if precision == "fp32" else TOLERANCE[precision]  # fp32 may be TF32


def _check(engine, module, shape) -> None:
    engine.prepare(shape)
    frame = synthetic_frame(shape, seed=11, peak_e=5000.0)
    out = engine.restore(frame, np.empty_like(frame))
    assert np.isfinite(out).all() and (out >= 0).all()
    err = relative_error(out, _cpu_fp32(module, frame))
    assert err <= _tolerance(engine), (engine.describe(), err)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("model_id", MODELS)
def test_cuda_engine_matches_cpu_fp32(model_id, shape):
    module, _ = _model(model_id)
    engine = TorchCUDAEngine(model_id)
    try:
        _check(engine, module, shape)
        assert engine.describe()["cuda_graphs"] is True
        # 6 distinct frames = micro-batches of 4 and 2 (double-buffered): each output must be
        # its own frame's restoration, whichever graph (batch 4, 2 or 1) produced it
        frames = [synthetic_frame(shape, seed=k, peak_e=2000.0) for k in range(6)]
        outs = [np.empty_like(f) for f in frames]
        engine.restore_many(frames, outs)
        for f, o in zip(frames, outs):
            assert relative_error(o, _cpu_fp32(module, f)) <= _tolerance(engine)
            assert relative_error(o, engine.restore(f, np.empty_like(f))) <= _tolerance(engine)
        # pinned frames and outputs take the direct DMA path (no staging copies)
        pinned = [engine.pinned_empty(shape) for _ in frames]
        pinned_out = [engine.pinned_empty(shape) for _ in frames]
        for dst, f in zip(pinned, frames):
            dst[...] = f
        engine.restore_many(pinned, pinned_out)
        for o, ref in zip(pinned_out, outs):
            np.testing.assert_array_equal(o, ref)
        assert engine.describe()["fp32_frames"] == 0
    finally:
        engine.close()


def test_cuda_engine_bright_frame_is_restored_in_fp32():
    module, _ = _model("rln-denoise-v1")
    engine = TorchCUDAEngine("rln-denoise-v1", precision="fp16")
    try:
        engine.prepare((256, 256))
        limit = engine.describe()["input_limit_e"]
        assert limit is not None
        frame = synthetic_frame((256, 256), seed=3, peak_e=2000.0)
        frame[10:20, 10:20] = 1.5 * limit
        out = engine.restore(frame, np.empty_like(frame))
        assert engine.describe()["fp32_frames"] == 1
        assert relative_error(out, _cpu_fp32(module, frame)) <= TOLERANCE["fp16"]
    finally:
        engine.close()


def _tensorrt_engine(model_id, tmp_path):
    pytest.importorskip("torch_tensorrt", reason='torch-tensorrt is not installed: pip install -e ".[gpu]"')
    from livedenoise.inference.engines.tensorrt import TensorRTEngine

    return TensorRTEngine(model_id, cache_dir=tmp_path, fallback=False)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("model_id", MODELS)
def test_tensorrt_engine_matches_cpu_fp32(model_id, shape, tmp_path):
    module, _ = _model(model_id)
    engine = _tensorrt_engine(model_id, tmp_path)
    try:
        _check(engine, module, shape)
        d = engine.describe()
        assert d["backend"] == "tensorrt" and d["precision"] == "fp16" and "fallback_reason" not in d
    finally:
        engine.close()


@pytest.mark.slow
def test_tensorrt_cache_reuse_is_fast(tmp_path):
    t0 = time.perf_counter()
    first = _tensorrt_engine("rln-denoise-v1", tmp_path)
    first.prepare((512, 512))
    build_s = time.perf_counter() - t0
    assert first.from_cache is False
    first.close()
    t0 = time.perf_counter()
    second = _tensorrt_engine("rln-denoise-v1", tmp_path)
    second.prepare((512, 512))
    reuse_s = time.perf_counter() - t0
    assert second.from_cache is True
    assert reuse_s < build_s / 2, (build_s, reuse_s)
    second.close()


@pytest.mark.parametrize("model_id", MODELS)
def test_bench_cuda(model_id, capsys):
    _model(model_id)
    engine = TorchCUDAEngine(model_id)
    try:
        for shape in SHAPES:
            r = bench_engine(engine, shape, n=50)
            with capsys.disabled():
                print(
                    f"\n{model_id} cuda {shape[0]}x{shape[1]}: {r['fps']:.0f} frames/s, "
                    f"p50 {r['latency_ms_p50']:.2f} ms, p99 {r['latency_ms_p99']:.2f} ms, {r['engine']['precision']}"
                )
            assert r["fps"] > 0
    finally:
        engine.close()
