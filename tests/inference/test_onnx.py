"""ONNX export (the graph TensorRT builds from) checked against PyTorch with onnxruntime on the CPU.

Tolerance: onnxruntime and PyTorch run the same float32 graph with different convolution
algorithms and summation orders, so outputs differ by float32 rounding only. Measured:
max |ort - torch| / (|torch| + 1 e-) <= 1e-6 for both architectures. The tests allow
``rtol=2e-5`` plus ``atol=1e-3`` photoelectrons (20x margin; far below one photon).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from livedenoise.inference.engines import Engine, make_engine
from livedenoise.inference.engines.onnx import (
    OnnxRuntimeEngine,
    export_module_onnx,
    export_onnx,
    read_onnx_metadata,
)

RTOL, ATOL_E = 2e-5, 1e-3
# sizes that need the networks' internal padding and sizes that do not
SIZES = [(64, 64), (67, 93), (130, 77)]
SHIPPED = ["rln-denoise-v1", "resunet-denoise-v1", "resunet-live-v8", "rln-deconvolve-v2"]
# small arch params so the fresh-weights tests stay fast
FRESH = {"rln": {}, "resunet": {"channels": (8, 16, 32), "mid_blocks": 1}}


def _torch_out(module, frame: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(frame)[None, None]).numpy()[0, 0]


def _frame(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Photoelectrons with structure, shot noise and read-noise negatives."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    expected = 20 + 800 * np.exp(-((yy - shape[0] / 3) ** 2 + (xx - shape[1] / 2) ** 2) / 60.0)
    return (rng.poisson(expected) + rng.normal(0, 2, shape)).astype(np.float32)


def _save_fresh(arch: str, folder):
    from livedenoise.inference.modelio import ModelCard, load_model, save_model
    from livedenoise.inference.nets import build_network

    torch.manual_seed(7)
    net = build_network(arch, **FRESH[arch])
    card = ModelCard(id=f"test-{arch}", architecture=arch, arch_params=dict(FRESH[arch]))
    path = folder / f"test-{arch}.pt"
    save_model(net, card, path)
    module, card = load_model(path)
    return path, module, card


@pytest.fixture(scope="module", params=sorted(FRESH))
def fresh_model(request, tmp_path_factory):
    """A freshly built network of each architecture (random weights), saved as a model file."""
    return _save_fresh(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def rln_model(tmp_path_factory):
    """The RLN alone, for the tests of file handling that do not depend on the architecture."""
    return _save_fresh("rln", tmp_path_factory.mktemp("rln"))


@pytest.fixture(scope="module")
def fresh_onnx(fresh_model, tmp_path_factory):
    path, module, card = fresh_model
    out = tmp_path_factory.mktemp("onnx") / f"{card.id}.onnx"
    export_onnx(path, out)
    return out, module, card


@pytest.mark.parametrize("shape", SIZES)
def test_onnxruntime_matches_torch_fp32(fresh_onnx, shape, rng):
    out, module, _ = fresh_onnx
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    frame = _frame(rng, shape)
    got = sess.run(None, {"x": frame[None, None]})[0][0, 0]
    ref = _torch_out(module, frame)
    assert got.shape == shape
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL_E)


def test_dynamic_batch(fresh_onnx, rng):
    """N is dynamic too (micro-batches)."""
    out, module, _ = fresh_onnx
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    frames = np.stack([_frame(rng, (33, 17)) for _ in range(3)])[:, None]
    got = sess.run(None, {"x": frames})[0]
    for k in range(3):
        np.testing.assert_allclose(got[k, 0], _torch_out(module, frames[k, 0]), rtol=RTOL, atol=ATOL_E)


@pytest.mark.parametrize("model_id", SHIPPED)
def test_shipped_models_export_and_match(model_id, tmp_path, rng):
    from livedenoise.inference.modelio import load_model, resolve_model

    try:
        resolve_model(model_id)
    except FileNotFoundError:
        pytest.skip(f"shipped model {model_id} is not in models/ yet")
    module, card = load_model(model_id)
    out = export_onnx(model_id, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(64, 64), (97, 131)]:
        frame = _frame(rng, shape)
        got = sess.run(None, {"x": frame[None, None]})[0][0, 0]
        np.testing.assert_allclose(got, _torch_out(module, frame), rtol=RTOL, atol=ATOL_E)
    assert read_onnx_metadata(out)["model_card"]["sha256"] == card.sha256


def test_metadata_carries_the_model_card(fresh_onnx):
    out, _, card = fresh_onnx
    meta = read_onnx_metadata(out)
    assert meta["model_id"] == card.id
    assert meta["architecture"] == card.architecture
    assert meta["units"] == "photoelectrons"
    assert meta["shape"] == "dynamic"
    assert meta["model_card"]["sha256"] == card.sha256
    assert meta["model_card"]["arch_params"] == {
        k: list(v) if isinstance(v, tuple) else v for k, v in card.arch_params.items()
    }
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 1, "H", "W"]


def test_fixed_shape_export(rln_model, tmp_path, rng):
    path, module, _ = rln_model
    out = export_onnx(path, tmp_path / "fixed.onnx", shape=(48, 80))
    proto = onnx.load(str(out))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 48, 80]
    frame = _frame(rng, (48, 80))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        sess.run(None, {"x": frame[None, None]})[0][0, 0], _torch_out(module, frame), rtol=RTOL, atol=ATOL_E
    )
    engine = OnnxRuntimeEngine(out)
    with pytest.raises(ValueError, match="exported for 48x80 frames but the frames are 64x64"):
        engine.prepare((64, 64))


def test_export_is_atomic(rln_model, tmp_path, monkeypatch):
    path, module, card = rln_model
    with pytest.raises(OSError, match="does not exist"):
        export_module_onnx(module, tmp_path / "missing" / "m.onnx", card=card)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="simulated exporter failure"):
        export_module_onnx(module, target, card=card)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bad_shape_argument(rln_model, tmp_path):
    _, module, _ = rln_model
    with pytest.raises(ValueError, match=r"shape must be \(H, W\)"):
        export_module_onnx(module, None, shape=(64,))


def test_engine_protocol(fresh_onnx, rng):
    out, module, card = fresh_onnx
    engine = OnnxRuntimeEngine(out, threads=1)
    assert isinstance(engine, Engine)
    assert engine.name == "onnxruntime" and engine.model_id == card.id
    with pytest.raises(RuntimeError, match="prepare"):
        engine.restore(np.zeros((67, 93), np.float32), np.zeros((67, 93), np.float32))
    engine.prepare((67, 93))
    frame = _frame(rng, (67, 93))
    dst = np.full((67, 93), -1.0, np.float32)
    assert engine.restore(frame, dst) is dst
    np.testing.assert_allclose(dst, _torch_out(module, frame), rtol=RTOL, atol=ATOL_E)
    assert (dst >= 0).all()
    with pytest.raises(ValueError, match="prepared shape"):
        engine.restore(np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32))
    engine.prepare((64, 64))  # ROI change
    small = _frame(rng, (64, 64))
    np.testing.assert_allclose(
        engine.restore(small, np.empty_like(small)), _torch_out(module, small), rtol=RTOL, atol=ATOL_E
    )
    bad = small.copy()
    bad[3, 4] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        engine.restore(bad, np.empty_like(bad))
    d = engine.describe()
    assert d["backend"] == "onnxruntime" and d["device"] == "cpu" and d["model"] == card.id
    assert d["providers"] == ["CPUExecutionProvider"]
    import json

    json.dumps(d)
    engine.close()


def test_engine_from_model_file_via_make_engine(rln_model, rng):
    path, module, card = rln_model
    engine = make_engine("onnxruntime", model=str(path))
    assert isinstance(engine, OnnxRuntimeEngine) and engine.model_id == card.id
    engine.prepare((40, 56))
    frame = _frame(rng, (40, 56))
    np.testing.assert_allclose(
        engine.restore(frame, np.empty_like(frame)), _torch_out(module, frame), rtol=RTOL, atol=ATOL_E
    )


def test_engine_rejects_unknown_provider_and_foreign_onnx(fresh_onnx, tmp_path):
    out, _, _ = fresh_onnx
    with pytest.raises(ValueError, match="unknown onnxruntime provider"):
        OnnxRuntimeEngine(out, providers=["warp-drive"])
    plain = tmp_path / "plain.onnx"
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    with pytest.warns(DeprecationWarning):  # the TorchScript exporter, used directly here
        torch.onnx.export(
            net, (torch.zeros(1, 1, 8, 8),), str(plain), dynamo=False, input_names=["x"], output_names=["y"]
        )
    with pytest.raises(ValueError, match="not a livedenoise export"):
        OnnxRuntimeEngine(plain)
    with pytest.raises(FileNotFoundError, match="livedenoise export"):
        OnnxRuntimeEngine(tmp_path / "nope.onnx")


@pytest.fixture
def _restore_log():
    """``main()`` configures the package logger (handlers, propagation): undo it afterwards."""
    import logging

    log = logging.getLogger("livedenoise")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def test_export_cli(rln_model, tmp_path, capsys, _restore_log):
    from livedenoise.cli import main

    path, _, card = rln_model
    out = tmp_path / "cli.onnx"
    assert main(["export", "--model", str(path), "--format", "onnx", "-o", str(out), "--shape", "64x96"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    meta = read_onnx_metadata(out)
    assert meta["shape"] == "64x96" and meta["model_id"] == card.id
    # an existing file is not overwritten without --force
    assert main(["export", "--model", str(path), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--model", str(path), "-o", str(out), "--force"]) == 0
    assert read_onnx_metadata(out)["shape"] == "dynamic"
    assert main(["export", "--model", str(path), "-o", str(tmp_path / "x.bin")]) == 2
    assert ".onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--model", str(path), "-o", str(tmp_path / "y.onnx"), "--shape", "64by64"])
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "z.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "z.onnx").exists()
