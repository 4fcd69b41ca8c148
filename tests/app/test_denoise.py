"""Offline restoration: tiling, `livedenoise denoise` round trips, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livedenoise.calibration.maps import Calibration, write_calibration
from livedenoise.cli import main
from livedenoise.inference.engines import PassthroughEngine
from livedenoise.inference.tiling import TiledRestorer, tile_starts, tile_window

GAIN, OFFSET = 2.0, 100.0


class ConvEngine:
    """A deterministic little conv net (3 layers of 5×5, receptive radius 6 px) as an engine."""

    name = "fake-conv"
    model_id = "fake-conv"

    def __init__(self) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        self.torch = torch
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 5, padding=2),
            torch.nn.Softplus(),
            torch.nn.Conv2d(4, 4, 5, padding=2),
            torch.nn.Softplus(),
            torch.nn.Conv2d(4, 1, 5, padding=2),
            torch.nn.Softplus(),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.05)
        self.prepared: list[tuple[int, int]] = []

    def prepare(self, shape: tuple[int, int]) -> None:
        self.prepared.append(tuple(shape))

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            y = self.net(self.torch.from_numpy(frame_e)[None, None])
        out[...] = y[0, 0].numpy()
        return out

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_id}

    def close(self) -> None:
        pass


# -- tiling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(100, 512, 32), (512, 512, 32), (600, 256, 32), (1000, 128, 16)]
)
def test_tile_starts_cover_with_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    for a, b in zip(starts, starts[1:]):
        assert a + t - b >= overlap  # neighbours overlap by at least `overlap`


def test_window_partition_of_unity_across_standard_overlap() -> None:
    ov, t = 32, 128
    a = tile_window((t, t), ov, (False, False, False, True))[0]
    b = tile_window((t, t), ov, (False, False, True, False))[0]
    np.testing.assert_allclose(a[t - ov :] + b[:ov], 1.0, atol=1e-6)
    assert a[-1] == 0 and b[0] == 0 and a[0] == 1  # shared edges discarded, frame border kept


@pytest.mark.parametrize("shape", [(200, 300), (257, 129)])
def test_tiled_matches_untiled(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    frame = rng.poisson(20.0, shape).astype(np.float32)
    eng = ConvEngine()
    whole = TiledRestorer(eng, tile=1024).restore(frame)
    tiler = TiledRestorer(eng, tile=96, overlap=32)
    tiled = tiler.restore(frame)
    assert tiler.n_tiles > 4
    assert eng.prepared[-1] == (96, 96)  # one tile shape, prepared once
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)


def test_tiled_real_cpu_engine_close_to_untiled(rng: np.random.Generator) -> None:
    """The tiler's blending, with a local network (the RLN: no global context, so tiles must agree)."""
    engines = pytest.importorskip("livedenoise.inference.engines")
    try:
        eng = engines.make_engine("cpu", model="rln-denoise-v2", precision="fp32")
    except Exception as exc:  # no shipped model yet, or the engine is missing
        pytest.skip(f"CPU engine with the default model unavailable: {exc}")
    frame = (rng.poisson(15.0, (200, 330)) + rng.normal(0, 1.5, (200, 330))).astype(np.float32)
    whole = TiledRestorer(eng, tile=1024).restore(frame)
    tiled = TiledRestorer(eng, tile=128, overlap=32).restore(frame)
    eng.close()
    rel = np.abs(tiled - whole).max() / whole.max()
    assert rel < 0.02, f"tiled result differs from untiled by {rel:.3%} of the peak"


def test_tiler_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="overlap"):
        TiledRestorer(PassthroughEngine(), tile=64, overlap=64)


# -- the command ------------------------------------------------------------------------


@pytest.fixture
def cal_file(tmp_path: Path) -> Path:
    cal = Calibration.uniform((48, 40), offset_adu=OFFSET, gain_adu_per_e=GAIN, read_var_e2=1.0)
    return write_calibration(tmp_path / "cal.tif", cal)


def _stack(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (OFFSET + GAIN * rng.poisson(30.0, shape)).astype(np.uint16)


def _write(path: Path, data: np.ndarray) -> None:
    import warnings

    with warnings.catch_warnings():  # tifffile warns about writing the empty stack
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, data, photometric="minisblack")


def _run(*argv: str) -> int:
    return main(["denoise", *argv, "--no-progress"])


@pytest.mark.parametrize("shape", [(48, 40), (5, 48, 40), (1, 48, 40)])
def test_denoise_round_trip(tmp_path: Path, cal_file: Path, rng: np.random.Generator, shape: tuple) -> None:
    raw = _stack(rng, shape)
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    _write(src, raw)
    assert _run(str(src), "-o", str(dst), "--calibration", str(cal_file), "--engine", "passthrough") == 0
    with tifffile.TiffFile(dst) as tf:
        out = tf.series[0].asarray()
        meta = json.loads(tf.pages[0].description)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_allclose(out, np.maximum((raw.astype(np.float64) - OFFSET) / GAIN, 0), atol=1e-4)
    assert meta["units"] == "photoelectrons" and meta["schema"] == "livedenoise.restored/1"
    assert meta["calibration"].startswith("nominal-") and meta["engine"]["backend"] == "passthrough"
    assert {"livedenoise", "model", "model_sha256", "saturated_pixels"} <= set(meta)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_denoise_tiled_stack_with_model_engine(
    tmp_path: Path, cal_file: Path, rng: np.random.Generator
) -> None:
    """Through the library: a stack larger than a tile, the same result as untiled."""
    from livedenoise.app.offline import denoise_array
    from livedenoise.calibration.maps import read_calibration

    raw = _stack(rng, (2, 48, 40))
    cal = read_calibration(cal_file)
    a, _ = denoise_array(raw, cal, ConvEngine(), tile=1024, progress=False)
    b, rep = denoise_array(raw, cal, ConvEngine(), tile=32, overlap=28, progress=False)
    assert rep.tiles_per_frame > 1
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_nominal_calibration_and_roi(tmp_path: Path, rng: np.random.Generator) -> None:
    raw = _stack(rng, (3, 16, 24))
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    _write(src, raw)
    rc = _run(
        str(src),
        "-o",
        str(dst),
        "--no-calibration",
        "--gain-adu-per-e",
        str(GAIN),
        "--offset-adu",
        str(OFFSET),
        "--engine",
        "passthrough",
    )
    assert rc == 0 and tifffile.imread(dst).shape == (3, 16, 24)
    # full-sensor maps, smaller frames: --roi crops them
    full = Calibration.uniform((64, 64), offset_adu=OFFSET, gain_adu_per_e=GAIN)
    offs = np.array(full.offset_adu)
    offs[10:26, 5:29] = OFFSET - 10  # the ROI's own offset, so the crop position matters
    full = Calibration(offs, full.gain_adu_per_e, full.read_var_e2)
    cal = write_calibration(tmp_path / "full.tif", full)
    dst2 = tmp_path / "roi.tif"
    assert (
        _run(str(src), "-o", str(dst2), "--calibration", str(cal), "--roi", "5,10", "--engine", "passthrough")
        == 0
    )
    np.testing.assert_allclose(tifffile.imread(dst2), (raw - (OFFSET - 10)) / GAIN, atol=1e-4)


def test_saturated_pixels_counted_and_reported(
    tmp_path: Path, cal_file: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture
) -> None:
    raw = _stack(rng, (3, 48, 40))
    raw[1, 5, 5] = raw[1, 6, 6] = raw[2, 0, 0] = 65535
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    _write(src, raw)
    assert _run(str(src), "-o", str(dst), "--calibration", str(cal_file), "--engine", "passthrough") == 0
    with tifffile.TiffFile(dst) as tf:
        meta = json.loads(tf.pages[0].description)
    assert meta["saturated_pixels"] == 3 and meta["saturated_frames"] == {"1": 2, "2": 1}
    assert "unreliable" in meta["warnings"][0]
    assert "3 saturated pixels" in capsys.readouterr().out


def _bad_inputs(rng: np.random.Generator) -> dict[str, tuple[object, str]]:
    f = rng.random((48, 40)).astype(np.float32)
    f[3, 3] = np.nan
    return {
        "uint8": (np.zeros((48, 40), np.uint8), "uint8.*expected uint16"),
        "float": (rng.random((48, 40)).astype(np.float32), "float32.*expected uint16"),
        "nan": (f, "1 NaN/Inf"),
        "empty": (np.zeros((0, 48, 40), np.uint16), "empty"),
        "4d": (np.zeros((2, 2, 48, 40), np.uint16), "4 dimensions"),
        "garbage": (b"this is not a tiff", "cannot read"),
        "missing": (None, "does not exist"),
        "wrongcal": (np.zeros((32, 32), np.uint16), "calibration is 40×48 but the frames are 32×32.*--roi"),
    }


@pytest.mark.parametrize("case", ["uint8", "float", "nan", "empty", "4d", "garbage", "missing", "wrongcal"])
def test_bad_input_clear_error_nothing_written(
    tmp_path: Path, cal_file: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture, case: str
) -> None:
    data, pattern = _bad_inputs(rng)[case]
    src = tmp_path / "in.tif"
    if isinstance(data, bytes):
        src.write_bytes(data)
    elif data is not None:
        _write(src, data)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = _run(
        str(src), "-o", str(out_dir / "out.tif"), "--calibration", str(cal_file), "--engine", "passthrough"
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err
    assert list(out_dir.iterdir()) == []


def test_unwritable_output_fails_before_work(
    tmp_path: Path, cal_file: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "in.tif"
    _write(src, _stack(rng, (48, 40)))
    rc = _run(
        str(src),
        "-o",
        str(tmp_path / "nope" / "out.tif"),
        "--calibration",
        str(cal_file),
        "--engine",
        "passthrough",
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_missing_calibration_says_what_to_do(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "in.tif"
    _write(src, _stack(rng, (48, 40)))
    assert _run(str(src), "-o", str(tmp_path / "o.tif"), "--engine", "passthrough") == 2
    assert "--no-calibration" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_engine_failure_leaves_no_file(tmp_path: Path, cal_file: Path, rng: np.random.Generator) -> None:
    from livedenoise.app.offline import denoise_file
    from livedenoise.calibration.maps import read_calibration

    class NaNEngine(PassthroughEngine):
        def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
            out[...] = np.nan
            return out

    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    _write(src, _stack(rng, (2, 48, 40)))
    with pytest.raises(RuntimeError, match="NaN"):
        denoise_file(src, dst, calibration=read_calibration(cal_file), engine=NaNEngine(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.tif", "in.tif"]


def test_denoise_with_shipped_default_model(tmp_path: Path, cal_file: Path, rng: np.random.Generator) -> None:
    """The live path's engine and default model: metadata names the model and its card's sha256."""
    from livedenoise.inference.engines import make_engine

    try:
        make_engine("cpu", precision="fp32").close()
    except Exception as exc:  # no shipped model yet, or the engine is missing
        pytest.skip(f"CPU engine with the default model unavailable: {exc}")
    raw = _stack(rng, (2, 48, 40))
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    _write(src, raw)
    assert _run(str(src), "-o", str(dst), "--calibration", str(cal_file), "--engine", "cpu") == 0
    with tifffile.TiffFile(dst) as tf:
        out = tf.series[0].asarray()
        meta = json.loads(tf.pages[0].description)
    assert out.shape == raw.shape and out.dtype == np.float32 and np.isfinite(out).all() and out.min() >= 0
    assert meta["model"] and len(meta["model_sha256"]) == 64 and meta["engine"]["backend"] == "cpu"
    # a restoration, not a copy: smoother than the noisy photoelectrons, same mean level
    e = (raw.astype(np.float64) - OFFSET) / GAIN
    assert out.std() < e.std() and abs(out.mean() / e.mean() - 1) < 0.1


def _page_per_frame(path: Path, frames: list[np.ndarray]) -> None:
    """A recording written one page at a time with a JSON header each (as `subscribe --save` did)."""
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, f in enumerate(frames):
            header = {"protocol": "livedenoise/1", "frame": i, "shape": list(f.shape), "dtype": "<u2"}
            tw.write(f, description=json.dumps(header), photometric="minisblack", metadata=None)


def test_denoise_restores_every_frame_of_a_page_per_frame_recording(
    tmp_path: Path, cal_file: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture
) -> None:
    raw = _stack(rng, (20, 48, 40))
    src, dst = tmp_path / "rec.tif", tmp_path / "out.tif"
    _page_per_frame(src, list(raw))
    with tifffile.TiffFile(src) as tf:
        assert len(tf.series) == 20  # each page is a series of its own: series[0] is one frame
    assert _run(str(src), "-o", str(dst), "--calibration", str(cal_file), "--engine", "passthrough") == 0
    assert "20 frame(s)" in capsys.readouterr().out
    out = tifffile.imread(dst)
    assert out.shape == (20, 48, 40)
    np.testing.assert_allclose(out, np.maximum((raw.astype(np.float64) - OFFSET) / GAIN, 0), atol=1e-4)


def test_denoise_refuses_a_file_it_cannot_restore_whole(
    tmp_path: Path, cal_file: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "mixed.tif"
    _page_per_frame(src, [_stack(rng, (48, 40)), _stack(rng, (32, 40)), _stack(rng, (48, 40))])
    rc = _run(
        str(src), "-o", str(tmp_path / "o.tif"), "--calibration", str(cal_file), "--engine", "passthrough"
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "holds 3 image series of different shapes" in err and "save each series as its own TIFF" in err
    assert not (tmp_path / "o.tif").exists()


def test_denoise_refuses_to_overwrite_without_force(
    tmp_path: Path, cal_file: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture
) -> None:
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    _write(src, _stack(rng, (2, 48, 40)))
    dst.write_bytes(b"yesterday's result")
    args = [str(src), "-o", str(dst), "--calibration", str(cal_file), "--engine", "passthrough"]
    assert _run(*args) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert dst.read_bytes() == b"yesterday's result"
    assert _run(*args, "--force") == 0 and tifffile.imread(dst).shape == (2, 48, 40)
