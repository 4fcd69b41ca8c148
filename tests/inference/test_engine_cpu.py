from __future__ import annotations

import numpy as np
import pytest
import torch

from livedenoise.inference.engines import Engine, make_engine
from livedenoise.inference.engines.torch_cpu import TorchCPUEngine
from livedenoise.inference.modelio import ModelCard, save_model
from livedenoise.inference.nets import build_network


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(1)
    net = build_network("rln")
    net.train()
    with torch.no_grad():  # give batch norm non-trivial running statistics
        for _ in range(3):
            net(torch.rand(2, 1, 32, 32) * 50)
    path = tmp_path_factory.mktemp("models") / "engine-rln.pt"
    save_model(net.eval(), ModelCard(id="engine-rln", architecture="rln"), path)
    return path


def test_restore_matches_the_module_in_fp32(model_path, rng):
    from livedenoise.inference.modelio import load_model

    module, _ = load_model(model_path)
    eng = TorchCPUEngine(model_path, precision="fp32", threads=1)
    assert isinstance(eng, Engine)
    frame = rng.poisson(15.0, (45, 61)).astype(np.float32) - 0.5
    eng.prepare(frame.shape)
    out = np.empty_like(frame)
    assert eng.restore(frame, out) is out
    with torch.no_grad():
        ref = module(torch.from_numpy(frame)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    d = eng.describe()
    assert d["precision"] == "fp32" and d["model"] == "engine-rln" and d["shape"] == [45, 61]
    eng.close()


def test_bf16_decision_is_validated_and_recorded(model_path, rng):
    eng = TorchCPUEngine(model_path, precision="bf16")
    eng.prepare((64, 64))
    d = eng.describe()
    assert d["precision"] in ("bf16", "fp32")
    assert d["precision_reason"]
    if d["precision"] == "bf16":
        v = d["bf16_validation"]
        assert v["max_psnr_diff_db"] <= 0.1 and v["max_mean_rel_err"] <= 0.005
        frame = rng.poisson(30.0, (64, 64)).astype(np.float32)
        out = np.empty_like(frame)
        ref = np.empty_like(frame)
        eng.restore(frame, out)
        TorchCPUEngine(model_path, precision="fp32").restore(frame, ref)
        assert abs(out.mean() / ref.mean() - 1) < 0.01


def test_non_finite_input_is_replaced_and_counted(model_path, rng):
    eng = TorchCPUEngine(model_path, precision="fp32")
    frame = rng.poisson(10.0, (32, 32)).astype(np.float32)
    frame[1, 2] = np.nan
    frame[3, 4] = np.inf
    frame[5, 6] = -np.inf
    out = np.empty_like(frame)
    eng.restore(frame, out)  # prepares itself on first use
    assert np.isfinite(out).all() and (out >= 0).all()
    assert eng.nonfinite_frames == 1 and eng.nonfinite_pixels == 3
    assert eng.describe()["nonfinite_pixels"] == 3


def test_non_finite_output_raises(model_path, monkeypatch):
    eng = TorchCPUEngine(model_path, precision="fp32")
    eng.prepare((16, 16))
    monkeypatch.setattr(eng, "_module", lambda x: torch.full_like(x, float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite"):
        eng.restore(np.ones((16, 16), np.float32), np.empty((16, 16), np.float32))


def test_shape_change_and_bad_out(model_path):
    eng = make_engine("cpu", model=str(model_path), precision="fp32")
    a = np.full((16, 20), 5.0, np.float32)
    b = np.full((24, 18), 5.0, np.float32)
    assert eng.restore(a, np.empty_like(a)).shape == (16, 20)
    assert eng.restore(b, np.empty_like(b)).shape == (24, 18)  # ROI change: re-prepared
    with pytest.raises(ValueError, match="float32"):
        eng.restore(b, np.empty(b.shape, np.float64))
    with pytest.raises(ValueError, match="precision"):
        TorchCPUEngine(model_path, precision="int8")
