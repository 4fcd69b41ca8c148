"""Engine selection, the TensorRT -> CUDA fallback, the engine cache, and the CUDA engine's
scheduling and precision logic run on the CPU (``device="cpu"``: no graphs, no streams)."""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from livedenoise.app.bench import bench_engine
from livedenoise.inference.engines import (
    Engine,
    EngineUnavailable,
    available_backends,
    make_engine,
    validation,
)
from livedenoise.inference.engines import tensorrt as trt_mod
from livedenoise.inference.engines._cache import CacheKey, EngineCache, default_cache_dir
from livedenoise.inference.engines._cuda import NO_CUDA, CudaEngine
from livedenoise.inference.engines.tensorrt import TensorRTEngine, model_sha256, state_dict_sha256
from livedenoise.inference.engines.torch_cuda import TorchCUDAEngine
from livedenoise.inference.engines.validation import relative_error, synthetic_frame

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")

KEY = CacheKey(
    model_sha256="ab" * 32,
    shape=(1, 1, 512, 512),
    precision="fp16",
    tensorrt_version="10.3.0",
    torch_tensorrt_version="2.4.0",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    livedenoise_version="0.1.0",
)


@pytest.fixture(autouse=True)
def _propagating_log(monkeypatch):
    """caplog listens on the root logger; ``livedenoise.cli.main()`` (run by other test files in
    the same session) turns propagation off on the package logger, so turn it back on here."""
    monkeypatch.setattr(logging.getLogger("livedenoise"), "propagate", True)


def _rln():
    from livedenoise.inference.nets import build_network

    torch.manual_seed(3)
    return build_network("rln")


def _ref(module, frame: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(frame)[None, None]).numpy()[0, 0]


# -- cache keys and layout ------------------------------------------------------------


def test_cache_key_is_a_pure_function_of_its_inputs():
    again = CacheKey(**dataclasses.asdict(KEY))
    assert again.digest() == KEY.digest()
    assert len(KEY.digest()) == 64 and int(KEY.digest(), 16) >= 0
    # lists and tuples are the same key
    assert dataclasses.replace(KEY, shape=[1, 1, 512, 512]).digest() == KEY.digest()


@pytest.mark.parametrize(
    "field, value",
    [
        ("model_sha256", "cd" * 32),
        ("shape", (1, 1, 2048, 2048)),
        ("shape", (1, 1, 512, 511)),
        ("precision", "fp32"),
        ("tensorrt_version", "10.3.1"),
        ("torch_tensorrt_version", "2.5.0"),
        ("gpu_name", "NVIDIA A100-SXM4-80GB"),
        ("compute_capability", (8, 0)),
        ("livedenoise_version", "0.1.1"),
    ],
)
def test_any_changed_input_changes_the_key(field, value):
    assert dataclasses.replace(KEY, **{field: value}).digest() != KEY.digest()


def test_cache_key_rejects_unknown_fields():
    with pytest.raises(ValueError, match="gpu_name"):
        dataclasses.replace(KEY, gpu_name="")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LIVEDENOISE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "trt"
    monkeypatch.delenv("LIVEDENOISE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "livedenoise" / "trt"


def _writer(payload: bytes, calls: list):
    def build(path):
        calls.append(path)
        path.write_bytes(payload)

    return build


def test_cache_layout_and_reuse(tmp_path):
    cache = EngineCache(tmp_path)
    calls: list = []
    loaded, from_cache = cache.load_or_build(
        KEY, _writer(b"engine-1", calls), lambda p: p.read_bytes(), model="m"
    )
    assert (loaded, from_cache, len(calls)) == (b"engine-1", False, 1)
    digest = KEY.digest()
    entry = tmp_path / digest[:2] / digest
    assert sorted(p.name for p in entry.iterdir()) == ["engine.pt2", "meta.json"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["key"]["gpu_name"] == KEY.gpu_name and meta["digest"] == digest and meta["model"] == "m"
    # nothing else left behind (no temporary folders)
    assert [p.name for p in (tmp_path / digest[:2]).iterdir()] == [digest]
    loaded, from_cache = cache.load_or_build(KEY, _writer(b"engine-2", calls), lambda p: p.read_bytes())
    assert (loaded, from_cache, len(calls)) == (b"engine-1", True, 1)
    other = dataclasses.replace(KEY, precision="fp32")
    loaded, from_cache = cache.load_or_build(other, _writer(b"engine-3", calls), lambda p: p.read_bytes())
    assert (loaded, from_cache, len(calls)) == (b"engine-3", False, 2)


@pytest.mark.parametrize("damage", ["truncate", "meta", "no-meta", "other-key"])
def test_damaged_entry_is_rebuilt(tmp_path, damage, caplog):
    cache = EngineCache(tmp_path)
    calls: list = []
    cache.load_or_build(KEY, _writer(b"good engine", calls), lambda p: p.read_bytes())
    entry = cache.entry_dir(KEY)
    if damage == "truncate":
        (entry / "engine.pt2").write_bytes(b"good")
    elif damage == "meta":
        (entry / "meta.json").write_text("{not json")
    elif damage == "no-meta":
        (entry / "meta.json").unlink()
    else:
        meta = json.loads((entry / "meta.json").read_text())
        meta["key"]["precision"] = "fp32"
        (entry / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="livedenoise"):
        loaded, from_cache = cache.load_or_build(KEY, _writer(b"rebuilt", calls), lambda p: p.read_bytes())
    assert (loaded, from_cache, len(calls)) == (b"rebuilt", False, 2)
    assert "damaged" in caplog.text


def test_entry_that_fails_to_load_is_rebuilt(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    calls: list = []
    cache.load_or_build(KEY, _writer(b"old format", calls), lambda p: p.read_bytes())

    def load(path):
        data = path.read_bytes()
        if data == b"old format":
            raise RuntimeError("deserialization failed")
        return data

    with caplog.at_level(logging.WARNING, logger="livedenoise"):
        loaded, from_cache = cache.load_or_build(KEY, _writer(b"new format", calls), load)
    assert (loaded, from_cache, len(calls)) == (b"new format", False, 2)
    assert "failed to load" in caplog.text


def test_failed_build_leaves_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def build(path):
        path.write_bytes(b"half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        cache.load_or_build(KEY, build, lambda p: p.read_bytes())
    assert cache.lookup(KEY) is None
    assert list((tmp_path / KEY.digest()[:2]).iterdir()) == []


# -- engine selection -------------------------------------------------------------------


@no_cuda
def test_available_backends_lists_all_with_reasons():
    backends = available_backends()
    assert set(backends) == {"passthrough", "cpu", "onnxruntime", "cuda", "tensorrt"}
    for name, (ok, why) in backends.items():
        assert isinstance(ok, bool) and why, name
    assert backends["cuda"] == (False, TorchCUDAEngine.available()[1])
    assert backends["cuda"][1].startswith(NO_CUDA)
    assert backends["tensorrt"][0] is False and backends["tensorrt"][1].startswith(NO_CUDA)
    assert backends["onnxruntime"][0] is True and "CPUExecutionProvider" in backends["onnxruntime"][1]


@no_cuda
@pytest.mark.parametrize("kind", ["cuda", "tensorrt"])
def test_gpu_engines_raise_with_the_reason(kind):
    with pytest.raises(EngineUnavailable, match=r"torch\.cuda\.is_available\(\) is False"):
        make_engine(kind)


def test_tensorrt_reason_names_the_install_line(monkeypatch):
    monkeypatch.setattr(CudaEngine, "available", classmethod(lambda cls: (True, "a fake GPU")))

    def missing():
        raise ModuleNotFoundError("No module named 'torch_tensorrt'", name="torch_tensorrt")

    monkeypatch.setattr(trt_mod, "_trt_versions", missing)
    ok, why = TensorRTEngine.available()
    assert not ok and "torch_tensorrt is not installed" in why and ".[gpu]" in why


@no_cuda
def test_auto_picks_cpu_and_says_why(caplog):
    pytest.importorskip("livedenoise.inference.engines.torch_cpu")
    from livedenoise.inference.modelio import resolve_model

    try:
        resolve_model(None)
    except FileNotFoundError:
        pytest.skip("the default model is not in models/ yet")
    with caplog.at_level(logging.INFO, logger="livedenoise"):
        engine = make_engine("auto")
    assert engine.name == "cpu"
    assert "engine auto -> cpu" in caplog.text
    engine.close()


@no_cuda
def test_auto_reports_every_reason_when_nothing_runs(monkeypatch):
    from livedenoise.inference import engines

    monkeypatch.setitem(engines.BACKENDS, "cpu", "livedenoise.inference.engines.no_such_module:Nothing")
    with pytest.raises(EngineUnavailable) as err:
        make_engine("auto")
    msg = str(err.value)
    assert (
        "tensorrt: no CUDA device" in msg
        and "cuda: no CUDA device" in msg
        and "cpu: engine 'cpu' cannot load" in msg
    )


# -- TensorRT -> CUDA fallback, and the cache flow, on the CPU ------------------------------


def _fake_toolchain(monkeypatch, calls: list, *, fail: bool = False):
    """Stand torch.export in for torch-tensorrt so the engine's build/cache/validate flow runs."""

    def compile_(module, example, precision):
        calls.append(precision)
        if fail:
            raise RuntimeError("simulated: no converter for aten.softplus")
        return torch.export.export(module, (example,))

    monkeypatch.setattr(trt_mod, "_trt_versions", lambda: ("10.0-fake", "2.0-fake"))
    monkeypatch.setattr(trt_mod, "_compile", compile_)

    def save(ep, path, example):
        with warnings.catch_warnings():
            # torch.export.save notes that the RLN's parameters share storage; harmless on the CPU
            warnings.filterwarnings(
                "ignore", message="No complete tensor found in the group", category=UserWarning
            )
            torch.export.save(ep, str(path))

    monkeypatch.setattr(trt_mod, "_save", save)
    monkeypatch.setattr(trt_mod, "_load", lambda path: torch.export.load(str(path)).module())


def test_compile_failure_falls_back_to_cuda_engine(monkeypatch, tmp_path, rng, caplog):
    calls: list = []
    _fake_toolchain(monkeypatch, calls, fail=True)
    net = _rln()
    engine = TensorRTEngine(net, device="cpu", card={"id": "rln-test"}, cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="livedenoise"):
        engine.prepare((48, 40))
    assert calls == ["fp16"]
    assert "running the PyTorch CUDA engine instead" in caplog.text and "no converter" in caplog.text
    assert engine.name == "cuda"
    d = engine.describe()
    assert d["backend"] == "cuda" and d["requested"] == "tensorrt" and "no converter" in d["fallback_reason"]
    frame = synthetic_frame((48, 40), peak_e=300.0)
    out = engine.restore(frame, np.empty_like(frame))
    assert relative_error(out, _ref(net, frame)) < 3e-2
    assert list(tmp_path.rglob("*.pt2")) == []
    engine.prepare((40, 48))  # a new shape does not retry the failed build
    assert calls == ["fp16"]


def test_compile_failure_raises_without_fallback(monkeypatch, tmp_path):
    _fake_toolchain(monkeypatch, [], fail=True)
    engine = TensorRTEngine(
        _rln(), device="cpu", card={"id": "rln-test"}, cache_dir=tmp_path, fallback=False, precision="fp32"
    )
    with pytest.raises(
        EngineUnavailable, match=r"TensorRT engine for rln-test at 32x32 fp32 failed.*--engine cuda"
    ):
        engine.prepare((32, 32))


def test_build_is_cached_and_reused(monkeypatch, tmp_path, caplog):
    calls: list = []
    _fake_toolchain(monkeypatch, calls)
    net = _rln()
    first = TensorRTEngine(net, device="cpu", card={"id": "rln-test"}, cache_dir=tmp_path, precision="fp32")
    first.prepare((32, 48))
    assert calls == ["fp32"] and first.from_cache is False and first.name == "tensorrt"
    assert first.describe()["backend"] == "tensorrt"
    frame = synthetic_frame((32, 48), peak_e=500.0)
    np.testing.assert_allclose(
        first.restore(frame, np.empty_like(frame)), _ref(net, frame), rtol=1e-5, atol=1e-3
    )
    second = TensorRTEngine(net, device="cpu", card={"id": "rln-test"}, cache_dir=tmp_path, precision="fp32")
    with caplog.at_level(logging.INFO, logger="livedenoise"):
        second.prepare((32, 48))
    assert calls == ["fp32"] and second.from_cache is True and "loaded from cache" in caplog.text
    np.testing.assert_allclose(
        second.restore(frame, np.empty_like(frame)), _ref(net, frame), rtol=1e-5, atol=1e-3
    )
    key = second.cache_key((32, 48))
    assert key.model_sha256 == model_sha256(net, {"id": "rln-test"}) and key.shape == (1, 1, 32, 48)
    assert [p.parent.name for p in tmp_path.rglob("engine.pt2")] == [key.digest()]


def test_engine_that_fails_validation_falls_back(monkeypatch, tmp_path):
    _fake_toolchain(monkeypatch, [])
    wrong = _rln()
    with torch.no_grad():
        for p in wrong.parameters():
            p.mul_(1.5)
    monkeypatch.setattr(trt_mod, "_compile", lambda module, ex, prec: torch.export.export(wrong, (ex,)))
    engine = TensorRTEngine(
        _rln(), device="cpu", card={"id": "rln-test"}, cache_dir=tmp_path, precision="fp32"
    )
    engine.prepare((32, 32))
    assert engine.name == "cuda" and "differs from fp32" in engine.fallback_reason
    # a build that fails validation is not kept (it would be loaded again at every start)
    assert list(tmp_path.rglob("engine.pt2")) == []


def test_cached_engine_that_fails_validation_is_rebuilt(monkeypatch, tmp_path, caplog):
    calls: list = []
    _fake_toolchain(monkeypatch, calls)
    net = _rln()
    engine = TensorRTEngine(net, device="cpu", card={"id": "rln-test"}, cache_dir=tmp_path, precision="fp32")
    wrong = _rln()
    with torch.no_grad():
        for p in wrong.parameters():
            p.mul_(1.5)
    example = torch.zeros((1, 1, 32, 32))
    key = engine.cache_key((32, 32))
    engine.cache.store(key, lambda path: trt_mod._save(torch.export.export(wrong, (example,)), path, example))
    assert engine.cache.lookup(key) is not None  # a well-formed entry with the wrong network in it
    with caplog.at_level(logging.WARNING, logger="livedenoise"):
        engine.prepare((32, 32))
    assert "fails validation" in caplog.text and calls == ["fp32"]
    assert engine.name == "tensorrt" and engine.from_cache is False and engine.fallback_reason is None
    frame = synthetic_frame((32, 32), peak_e=400.0)
    assert relative_error(engine.restore(frame, np.empty_like(frame)), _ref(net, frame)) < 1e-5


def test_fallback_keeps_the_requested_precision(monkeypatch, tmp_path):
    _fake_toolchain(monkeypatch, [], fail=True)
    engine = TensorRTEngine(
        _rln(), device="cpu", card={"id": "rln-test"}, cache_dir=tmp_path, precision="fp32"
    )
    engine.prepare((24, 24))
    assert engine.name == "cuda" and engine.precision == "fp32"
    assert set(engine.validation_error) == {"fp32"}  # fp16 / bf16 were not even tried


def test_model_hash_covers_weights_and_architecture():
    from livedenoise.inference.nets import build_network

    torch.manual_seed(3)
    softplus = build_network("rln")
    torch.manual_seed(3)
    relu = build_network("rln", activation="relu")
    # the same weights file could serve both: the weights alone cannot tell them apart
    assert state_dict_sha256(softplus) == state_dict_sha256(relu)
    assert model_sha256(softplus) != model_sha256(relu)
    card = {"architecture": "rln", "arch_params": {}}
    assert model_sha256(softplus, card) == model_sha256(_rln(), dict(card))
    assert model_sha256(softplus, card) != model_sha256(softplus, {**card, "arch_params": {"kernel": 5}})
    changed = _rln()
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert model_sha256(changed, card) != model_sha256(softplus, card)


SETTINGS_AUTOCAST = {
    "enabled_precisions",
    "use_explicit_typing",
    "enable_autocast",
    "autocast_low_precision_type",
}
SETTINGS_EXPLICIT = {"enabled_precisions", "use_explicit_typing"}
SETTINGS_OLD = {"enabled_precisions", "debug"}


@pytest.mark.parametrize(
    "fields, precision, expected",
    [
        # releases with Autocast: enabled_precisions no longer reaches the dynamo compiler
        (
            SETTINGS_AUTOCAST,
            "fp16",
            {
                "use_explicit_typing": True,
                "enable_autocast": True,
                "autocast_low_precision_type": torch.float16,
            },
        ),
        (
            SETTINGS_AUTOCAST,
            "bf16",
            {
                "use_explicit_typing": True,
                "enable_autocast": True,
                "autocast_low_precision_type": torch.bfloat16,
            },
        ),
        (SETTINGS_EXPLICIT, "fp16", {"enabled_precisions": {torch.float16}, "use_explicit_typing": False}),
        (SETTINGS_OLD, "bf16", {"enabled_precisions": {torch.bfloat16}}),
        (SETTINGS_AUTOCAST, "fp32", {}),
        (SETTINGS_OLD, "fp32", {}),
    ],
)
def test_precision_settings_follow_the_torch_tensorrt_release(fields, precision, expected):
    assert trt_mod._precision_kwargs(precision, fields) == expected


def _fake_torch_tensorrt(monkeypatch, *, arg_inputs: bool):
    """A stand-in ``torch_tensorrt`` whose ``compile``/``save``/``load`` have the real signatures
    (latest release; ``arg_inputs=False``: the 2.2-era ones) and record how they are called."""
    calls: dict = {}
    fake = types.ModuleType("torch_tensorrt")

    class Input:
        def __init__(self, shape=None, dtype=None, **kw):
            self.shape, self.dtype = tuple(shape), dtype

    def compile_new(
        module,
        ir="default",
        inputs=None,
        arg_inputs=None,
        kwarg_inputs=None,
        enabled_precisions=None,
        **kwargs,
    ):
        calls["compile"] = dict(
            ir=ir, inputs=inputs, arg_inputs=arg_inputs, enabled_precisions=enabled_precisions, **kwargs
        )
        return module

    def compile_old(module, ir="default", inputs=None, enabled_precisions=None, **kwargs):
        calls["compile"] = dict(ir=ir, inputs=inputs, enabled_precisions=enabled_precisions, **kwargs)
        return module

    def save_new(
        module,
        file_path="",
        *,
        extra_files=None,
        output_format="exported_program",
        inputs=None,
        arg_inputs=None,
        kwarg_inputs=None,
        retrace=True,
        **kwargs,
    ):
        calls["save"] = dict(
            file_path=file_path, output_format=output_format, inputs=inputs, arg_inputs=arg_inputs
        )

    def save_old(module, file_path="", *, output_format="exported_program", inputs=None, retrace=False):
        calls["save"] = dict(file_path=file_path, output_format=output_format, inputs=inputs)

    def load(file_path="", extra_files=None, **kwargs):
        calls["load"] = file_path
        return types.SimpleNamespace(module=lambda: "the module")

    fake.Input = Input
    fake.compile = compile_new if arg_inputs else compile_old
    fake.save = save_new if arg_inputs else save_old
    fake.load = load
    monkeypatch.setitem(__import__("sys").modules, "torch_tensorrt", fake)
    monkeypatch.setattr(trt_mod, "_settings_fields", lambda: SETTINGS_AUTOCAST)
    return calls


@pytest.mark.parametrize("new_api", [True, False])
def test_torch_tensorrt_calls(monkeypatch, tmp_path, new_api):
    calls = _fake_torch_tensorrt(monkeypatch, arg_inputs=new_api)
    example = torch.zeros((1, 1, 24, 40))
    trt_mod._compile("module", example, "fp16")
    c = calls["compile"]
    spec = c["arg_inputs" if new_api else "inputs"]
    assert c["ir"] == "dynamo" and c["device"] == example.device and c["min_block_size"] == 1
    assert len(spec) == 1 and spec[0].shape == (1, 1, 24, 40) and spec[0].dtype == torch.float32
    assert c["enable_autocast"] is True and c["autocast_low_precision_type"] is torch.float16
    assert c["enabled_precisions"] is None  # ignored by the dynamo path of new releases: never relied on
    trt_mod._save("compiled", tmp_path / "engine.pt2", example)
    s = calls["save"]
    assert s["output_format"] == "exported_program" and s["file_path"] == str(tmp_path / "engine.pt2")
    assert s["arg_inputs" if new_api else "inputs"] == [example]
    assert trt_mod._load(tmp_path / "engine.pt2") == "the module" and calls["load"] == str(
        tmp_path / "engine.pt2"
    )


def test_state_dict_sha256_changes_with_weights():
    a, b = _rln(), _rln()
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)


# -- the CUDA engine's logic on the CPU -----------------------------------------------------


@pytest.fixture(scope="module")
def cpu_cuda_engine():
    net = _rln()
    engine = TorchCUDAEngine(net, device="cpu", card={"id": "rln-test"}, max_batch=3)
    engine.prepare((40, 56))
    return engine, net


def test_cuda_engine_protocol_on_cpu(cpu_cuda_engine):
    engine, net = cpu_cuda_engine
    assert isinstance(engine, Engine) and engine.model_id == "rln-test"
    assert engine.precision in ("fp16", "bf16", "fp32")
    assert engine.validation_error[engine.precision] <= 3e-2
    frame = synthetic_frame((40, 56), seed=4, peak_e=800.0)
    out = np.full_like(frame, -1.0)
    assert engine.restore(frame, out) is out
    assert relative_error(out, _ref(net, frame)) < 3e-2 and (out >= 0).all()
    json.dumps(engine.describe())


def test_restore_many_matches_restore(cpu_cuda_engine):
    engine, _ = cpu_cuda_engine
    frames = [synthetic_frame((40, 56), seed=k, peak_e=600.0) for k in range(7)]  # 3 + 3 + 1
    outs = [np.empty_like(f) for f in frames]
    engine.restore_many(frames, outs)
    for f, o in zip(frames, outs):
        np.testing.assert_array_equal(o, engine.restore(f, np.empty_like(f)))


def test_non_finite_output_raises_naming_the_frame(cpu_cuda_engine):
    engine, _ = cpu_cuda_engine
    frames = [synthetic_frame((40, 56), seed=k, peak_e=600.0) for k in range(4)]
    frames[2][5, 5] = np.nan
    with pytest.raises(FloatingPointError, match=r"frame\(s\) \[2\] of 4"):
        engine.restore_many(frames, [np.empty_like(f) for f in frames])


def test_shape_checks_and_reprepare():
    engine = TorchCUDAEngine(_rln(), device="cpu", card={"id": "x"}, precision="fp32", max_batch=2)
    with pytest.raises(RuntimeError, match="prepare"):
        engine.restore(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32))
    engine.prepare((24, 24))
    with pytest.raises(ValueError, match="prepared shape"):
        engine.restore(np.zeros((16, 24), np.float32), np.zeros((16, 24), np.float32))
    engine.prepare((16, 24))
    out = engine.restore(np.ones((16, 24), np.float32), np.empty((16, 24), np.float32))
    assert out.shape == (16, 24) and engine.describe()["shape"] == [16, 24]
    with pytest.raises(ValueError, match="2 frames but 1"):
        engine.restore_many([out, out], [out])


def test_explicit_precision_that_fails_validation_raises(monkeypatch):
    monkeypatch.setitem(validation.TOLERANCE, "bf16", 1e-12)
    engine = TorchCUDAEngine(_rln(), device="cpu", card={"id": "x"}, precision="bf16")
    with pytest.raises(ValueError, match="precision bf16 differs from fp32"):
        engine.prepare((24, 24))


def test_bad_options():
    with pytest.raises(ValueError, match="precision must be"):
        TorchCUDAEngine(_rln(), device="cpu", precision="int4")
    with pytest.raises(TypeError, match="unknown cuda engine option"):
        TorchCUDAEngine(_rln(), device="cpu", threads=2)
    with pytest.raises(ValueError, match="max_batch"):
        TorchCUDAEngine(_rln(), device="cpu", max_batch=0)


def test_bench_engine_reports_rates():
    from livedenoise.inference.engines import PassthroughEngine

    r = bench_engine(PassthroughEngine(), (32, 32), n=20, warmup=2)
    assert r["n"] == 20 and r["fps"] > 0 and 0 <= r["latency_ms_p50"] <= r["latency_ms_p99"]
    assert r["engine"]["backend"] == "passthrough" and r["batch"] == 1
    engine = TorchCUDAEngine(_rln(), device="cpu", card={"id": "x"}, precision="fp32", max_batch=2)
    r = bench_engine(engine, (24, 24), n=6, warmup=1, batch=2)
    assert r["n"] == 6 and r["batch"] == 2 and r["engine"]["backend"] == "cuda"
    with pytest.raises(ValueError, match="n must be"):
        bench_engine(engine, (24, 24), n=0)


# -- reduced precision out of its validated range, on the CPU -------------------------------


def test_frame_beyond_the_fp16_validated_range_is_restored_in_fp32(monkeypatch, caplog):
    monkeypatch.setitem(validation.TOLERANCE, "fp16", 1.0)  # take fp16 whatever its accuracy on this CPU
    net = _rln()
    engine = TorchCUDAEngine(net, device="cpu", card={"id": "x"}, precision="fp16", max_batch=2)
    engine.prepare((32, 32))
    limit = engine.describe()["input_limit_e"]
    assert engine.precision == "fp16" and 2e4 < limit < 65504
    dim = synthetic_frame((32, 32), seed=5, peak_e=500.0)
    bright = dim.copy()
    bright[3:6, 3:6] = 1.5 * limit  # representable in fp16, but beyond what fp16 was validated for
    outs = [np.empty_like(dim), np.empty_like(dim)]
    with caplog.at_level(logging.WARNING, logger="livedenoise"):
        engine.restore_many([dim, bright], outs)
    assert engine.describe()["fp32_frames"] == 1 and "restored in fp32" in caplog.text
    assert relative_error(outs[1], _ref(net, bright)) < 1e-5  # fp32, not fp16 (~1e-3)
    assert relative_error(outs[0], _ref(net, dim)) < 1.0


def test_fp16_overflow_is_restored_in_fp32_not_dropped():
    gain = torch.nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        gain.weight.fill_(1.0)
    engine = TorchCUDAEngine(gain, device="cpu", card={"id": "gain"}, precision="fp16")
    engine.prepare((16, 16))  # identity: validates in fp16
    assert engine.precision == "fp16"
    with torch.no_grad():
        gain.weight.fill_(1000.0)  # now 100 e- -> 1e5, beyond fp16's 65504
    frame = np.full((16, 16), 100.0, np.float32)
    frame.setflags(write=False)  # a read-only frame (a borrowed buffer) is fine for the redo too
    out = engine.restore(frame, np.empty_like(frame))
    np.testing.assert_allclose(out, 1e5, rtol=1e-6)
    assert engine.describe()["fp32_frames"] == 1
    frame = frame.copy()
    frame[2, 2] = np.nan  # not finite in fp32 either: raises, naming the frame
    with pytest.raises(FloatingPointError, match=r"frame\(s\) \[0\] of 1 .*also in fp32"):
        engine.restore(frame, np.empty_like(frame))


def test_model_with_non_finite_fp32_output_is_refused():
    class Broken(torch.nn.Module):
        def forward(self, x):
            return x / 0.0

    engine = TorchCUDAEngine(Broken(), device="cpu", card={"id": "broken"})
    with pytest.raises(FloatingPointError, match="non-finite values in fp32"):
        engine.prepare((16, 16))
