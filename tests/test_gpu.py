"""GPU engines against the fp32 CPU result. Marked ``gpu``: skipped, with the reason, without CUDA.

Run on a GPU machine with ``python -m pytest tests/test_gpu.py -v`` (TensorRT tests also need
``pip install -e ".[gpu]"``; they skip with the reason when torch-tensorrt is missing).
Tolerance: the engines' own precision check, ``TOLERANCE`` in ``livedenoise.engines.torch_cuda``
(max |gpu - cpu fp32| <= 1e-2 of the output range for fp16, 3e-2 for bf16).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from livedenoise.engines.torch_cuda import TOLERANCE, TorchCUDAEngine, bench_engine, relative_error, synthetic_frame  # noqa: E402

pytestmark = pytest.mark.gpu

SHAPES = [(512, 512), (2048, 2048)]
MODELS = ["rln-denoise-v1", "resunet-denoise-v1"]


def _model(model_id: str):
    from livedenoise.modelio import load_model, resolve_model

    try:
        resolve_model(model_id)
    except FileNotFoundError:
        pytest.skip(f"model {model_id} is not installed")
    return load_model(model_id)


def _cpu_fp32(module, frame: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.float().cpu()(torch.from_numpy(frame)[None, None]).numpy()[0, 0]


def _check(engine, module, shape) -> None:
    engine.prepare(shape)
    frame = synthetic_frame(shape, seed=11, peak_e=5000.0)
    out = engine.restore(frame, np.empty_like(frame))
    assert np.isfinite(out).all() and (out >= 0).all()
    err = relative_error(out, _cpu_fp32(module, frame))
    assert err <= TOLERANCE[engine.describe()["precision"]], (engine.describe(), err)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("model_id", MODELS)
def test_cuda_engine_matches_cpu_fp32(model_id, shape):
    module, _ = _model(model_id)
    engine = TorchCUDAEngine(model_id)
    try:
        _check(engine, module, shape)
        assert engine.describe()["cuda_graphs"] is True
        frames = [synthetic_frame(shape, seed=k, peak_e=2000.0) for k in range(6)]
        outs = [np.empty_like(f) for f in frames]
        engine.restore_many(frames, outs)
        for f, o in zip(frames, outs):
            np.testing.assert_allclose(o, engine.restore(f, np.empty_like(f)), rtol=1e-3, atol=1e-2)
        pinned = engine.pinned_empty(shape)
        pinned[...] = frames[0]
        pinned_out = engine.pinned_empty(shape)
        np.testing.assert_array_equal(engine.restore(pinned, pinned_out), engine.restore(frames[0], outs[0]))
    finally:
        engine.close()


def _tensorrt_engine(model_id, tmp_path):
    pytest.importorskip("torch_tensorrt", reason='torch-tensorrt is not installed: pip install -e ".[gpu]"')
    from livedenoise.engines.tensorrt import TensorRTEngine

    return TensorRTEngine(model_id, cache_dir=tmp_path, fallback=False)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("model_id", MODELS)
def test_tensorrt_engine_matches_cpu_fp32(model_id, shape, tmp_path):
    module, _ = _model(model_id)
    engine = _tensorrt_engine(model_id, tmp_path)
    try:
        _check(engine, module, shape)
        assert engine.describe()["backend"] == "tensorrt"
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
                print(f"\n{model_id} cuda {shape[0]}x{shape[1]}: {r['fps']:.0f} frames/s, "
                      f"p50 {r['latency_ms_p50']:.2f} ms, p99 {r['latency_ms_p99']:.2f} ms, {r['engine']['precision']}")  # fmt: skip
            assert r["fps"] > 0
    finally:
        engine.close()
