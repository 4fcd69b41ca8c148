"""Start-up probes are cached: the precision is decided once per model and machine."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from livedenoise.cli import main
from livedenoise.inference.engines import _probes, make_engine
from livedenoise.inference.engines.torch_cpu import TorchCPUEngine


def test_probe_cache_round_trip_and_bad_entries(tmp_path):
    key = _probes.probe_key("test", "ab" * 32, requested="auto")
    assert _probes.lookup(key, tmp_path) is None
    path = _probes.store(key, {"precision": "bf16"}, tmp_path)
    assert path is not None and _probes.lookup(key, tmp_path) == {"precision": "bf16"}
    other = _probes.probe_key("test", "cd" * 32, requested="auto")
    assert _probes.lookup(other, tmp_path) is None
    path.write_text("{not json")
    assert _probes.lookup(key, tmp_path) is None  # unreadable: probe again, no error
    with pytest.raises(ValueError, match="sha256"):
        _probes.probe_key("test", "")


def test_second_engine_reads_the_cached_decision(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEDENOISE_CACHE", str(tmp_path))
    frame = np.random.default_rng(0).poisson(20, (48, 48)).astype(np.float32)
    first = make_engine("cpu", model="rln-denoise-v2")
    first.prepare(frame.shape)
    out1 = first.restore(frame, np.empty_like(frame)).copy()
    assert first.describe()["precision_source"] == "measured"
    assert list((tmp_path / "probes").glob("*.json"))

    def no_measuring(self, shape):
        raise AssertionError("the probe ran again although it was cached")

    monkeypatch.setattr(TorchCPUEngine, "_measure_precision", no_measuring)
    second = make_engine("cpu", model="rln-denoise-v2")
    second.prepare(frame.shape)
    out2 = second.restore(frame, np.empty_like(frame))
    d = second.describe()
    assert d["precision_source"] == "cached probe" and d["precision"] == first.describe()["precision"]
    np.testing.assert_array_equal(out1, out2)  # same input, same options: the same output


def test_denoise_precision_option_is_recorded_in_the_tiff(tmp_path):
    raw = (100 + 2 * np.random.default_rng(1).poisson(10, (40, 40))).astype(np.uint16)
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, raw)
    argv = [
        "denoise",
        str(src),
        "-o",
        str(dst),
        "--no-calibration",
        "--gain-adu-per-e",
        "2",
        "--offset-adu",
        "100",
    ]
    assert (
        main([*argv, "--engine", "cpu", "--model", "rln-denoise-v2", "--precision", "fp32", "--no-progress"])
        == 0
    )
    assert tifffile.imread(dst).shape == (40, 40)
    import json

    with tifffile.TiffFile(dst) as tf:
        meta = json.loads(tf.pages[0].description)
    assert meta["precision"] == "fp32" and meta["engine"]["precision_requested"] == "fp32"
