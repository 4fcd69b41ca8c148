"""Photon-transfer fit, the calibrate command from files, its errors and its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livedenoise.calibration.files import calibrate_files
from livedenoise.calibration.fit import fit_calibration, stats_from_frames
from livedenoise.calibration.maps import CalibrationError, read_calibration
from livedenoise.calibration.moments import MomentAccumulator
from livedenoise.cli import main

SHAPE = (32, 48)


@pytest.fixture(autouse=True)
def _restore_logger():
    """main() points the livedenoise logger at the (captured) stderr; put it back after."""
    import logging

    log = logging.getLogger("livedenoise")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved


def make_maps(rng: np.random.Generator, shape=SHAPE):
    gain = rng.normal(2.0, 0.12, shape)
    offset = rng.normal(100.0, 3.0, shape)
    read_sd = rng.lognormal(np.log(1.6), 0.25, shape)
    return gain, offset, read_sd


def frames(rng, maps, mean_e, n, dtype=np.uint16):
    gain, offset, read_sd = maps
    for _ in range(n):
        e = rng.poisson(mean_e, gain.shape) if mean_e > 0 else 0.0
        adu = offset + gain * (e + read_sd * rng.standard_normal(gain.shape))
        yield np.clip(np.round(adu), 0, 65535).astype(dtype)


def level(rng, maps, mean_e, n, label=""):
    return stats_from_frames(frames(rng, maps, mean_e, n), maps[0].shape, label=label or f"{mean_e} e-")


LEVELS_E = (15, 50, 160, 500, 1500)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(7)
    maps = make_maps(rng)
    dark = level(rng, maps, 0, 300, "dark")
    flats = [level(rng, maps, e, 300) for e in LEVELS_E]
    return maps, dark, flats


def rel_err(a, b):
    return np.abs(np.asarray(a, np.float64) / b - 1)


def test_accumulator_matches_numpy(rng):
    stack = rng.integers(90, 4000, (37, 8, 9)).astype(np.uint16)
    acc = MomentAccumulator((8, 9))
    acc.add(stack[:10])  # a chunk
    for f in stack[10:]:  # then frame by frame
        acc.add(f)
    st = acc.finish()
    assert st.n == 37
    np.testing.assert_allclose(st.mean_adu, stack.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st.var_adu2, stack.astype(np.float64).var(0, ddof=1), rtol=1e-5)
    assert not st.saturated.any()


def test_fit_recovers_known_maps(synthetic):
    (gain, offset, read_sd), dark, flats = synthetic
    fit = fit_calibration(dark, flats)
    cal = fit.calibration
    # 300 frames x 5 levels: ~3.5 % per-pixel gain sd; read noise within its sampling error
    assert np.median(rel_err(cal.gain_adu_per_e, gain)) < 0.035
    assert abs(np.median(cal.gain_adu_per_e / gain) - 1) < 0.005  # no bias
    assert np.percentile(np.abs(cal.offset_adu - offset), 95) < 0.5
    assert np.median(rel_err(np.sqrt(cal.read_var_e2), read_sd)) < 0.05
    s = fit.summary
    assert s["flat_levels"] == 5 and s["dark_frames"] == 300
    np.testing.assert_allclose(s["mean_e_per_level"], LEVELS_E, rtol=0.03)
    assert 0.5 < cal.meta["fit_quality"]["chi2_dof_median"] < 1.5


def test_weighted_fit_beats_unweighted(synthetic):
    (gain, _, _), dark, flats = synthetic
    w = fit_calibration(dark, flats, weighted=True).calibration.gain_adu_per_e
    u = fit_calibration(dark, flats, weighted=False).calibration.gain_adu_per_e
    ew, eu = np.median(rel_err(w, gain)), np.median(rel_err(u, gain))
    assert ew <= eu
    assert ew < 0.8 * eu  # markedly better with levels spanning 100x in signal


def test_defects_detected_and_replaced():
    rng = np.random.default_rng(3)
    gain, offset, read_sd = make_maps(rng)
    hot = [(3, 4), (20, 30)]
    noisy = [(10, 10), (25, 5)]
    dead = [(15, 40)]
    for y, x in hot:
        offset[y, x] += 400
    for y, x in noisy:
        read_sd[y, x] *= 8
    for y, x in dead:
        gain[y, x] = 0.01
    maps = (gain, offset, read_sd)
    dark = level(rng, maps, 0, 200, "dark")
    flats = [level(rng, maps, e, 200) for e in (20, 200, 1000)]
    fit = fit_calibration(dark, flats)
    found = {k: {tuple(p) for p in v} for k, v in fit.calibration.meta["defects"]["pixels_yx"].items()}
    assert set(hot) <= found["hot"]
    assert set(noisy) <= found["noisy"]
    assert set(dead) <= found["dead"]
    assert len(found["hot"]) == 2 and len(found["dead"]) == 1
    cal = fit.calibration
    assert np.all(cal.gain_adu_per_e > 0)
    gm = fit.summary["gain_adu_per_e_median"]
    assert cal.gain_adu_per_e[15, 40] == pytest.approx(gm, rel=1e-6)
    assert cal.meta["defects"]["gain_replaced"]["count"] >= 1
    assert fit.summary["defects"]["any"] >= 5


def test_nonlinear_pixels_flagged():
    rng = np.random.default_rng(4)
    gain, offset, read_sd = make_maps(rng)
    dark = level(rng, (gain, offset, read_sd), 0, 200, "dark")
    flats = []
    for e in (20, 100, 400, 1500):
        g = gain.copy()
        g[5, 5] *= 1 + e / 1500  # gain that grows with signal: variance bends up
        flats.append(level(rng, (g, offset, read_sd), e, 200))
    fit = fit_calibration(dark, flats)
    assert fit.defects["nonlinear"][5, 5]
    assert fit.summary["defects"]["nonlinear"] < 5


# -- the command, from files --------------------------------------------------------------


def write_stack(path: Path, rng, maps, mean_e, n, dtype=np.uint16):
    tifffile.imwrite(path, np.stack(list(frames(rng, maps, mean_e, n, dtype))), photometric="minisblack")
    return str(path)


@pytest.fixture
def stacks(tmp_path):
    rng = np.random.default_rng(11)
    maps = make_maps(rng, (16, 24))
    dark = write_stack(tmp_path / "dark.tif", rng, maps, 0, 40)
    flats = [write_stack(tmp_path / f"f{i}.tif", rng, maps, e, 40) for i, e in enumerate((30, 300, 1200))]
    return tmp_path, rng, maps, dark, flats


def test_cli_writes_calibration_and_report(stacks, capsys):
    tmp, _, maps, dark, flats = stacks
    out, png = tmp / "cal.tif", tmp / "cal.png"
    argv = ["calibrate", "--dark", dark, *sum((["--flat", f] for f in flats), []), "-o", str(out)]
    assert main([*argv, "--report", str(png), "--camera", "test-cam"]) == 0
    cal = read_calibration(out)
    assert cal.shape == (16, 24)
    assert cal.meta["camera"] == "test-cam"
    assert cal.meta["summary"]["flat_levels"] == 3
    assert np.median(rel_err(cal.gain_adu_per_e, maps[0])) < 0.15  # 40 frames: rough but right
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []
    # plain tifffile reads what `calibrate` wrote, as the (3, H, W) float32 stack of the maps
    stack = tifffile.imread(out)
    assert stack.shape == (3, 16, 24) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack[1], cal.gain_adu_per_e)
    with tifffile.TiffFile(out) as tf:
        assert len(tf.pages) == 3 and len(tf.series) == 1 and tf.series[0].shape == (3, 16, 24)
        desc = json.loads(tf.pages[0].description)
    assert desc["livedenoise_calibration"] == 1 and desc["pages"] == [
        "offset_adu",
        "gain_adu_per_e",
        "read_var_e2",
    ]
    assert desc["summary"]["shape"] == [16, 24]  # the nested key that used to break tifffile.imread


def test_cli_refuses_to_overwrite_without_force(stacks, capsys):
    tmp, _, _, dark, flats = stacks
    out, png = tmp / "cal.tif", tmp / "cal.png"
    argv = ["calibrate", "--dark", dark, *sum((["--flat", f] for f in flats), []), "-o", str(out)]
    out.write_bytes(b"the calibration in use")
    assert main(argv) == 2
    assert "already exist(s); pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"the calibration in use"
    png.write_bytes(b"old report")
    assert main([*argv[:-2], "-o", str(tmp / "new.tif"), "--report", str(png)]) == 2  # the report too
    assert not (tmp / "new.tif").exists()
    assert main([*argv, "--force"]) == 0 and read_calibration(out).shape == (16, 24)


def _fail(argv, capsys):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_too_few_frames_and_levels(stacks, capsys, tmp_path):
    tmp, rng, maps, dark, flats = stacks
    out = str(tmp / "cal.tif")
    short = write_stack(tmp / "short.tif", rng, maps, 0, 10)
    err = _fail(["calibrate", "--dark", short, "--flat", flats[0], "--flat", flats[1], "-o", out], capsys)
    assert "10 dark frames" in err and "at least 20" in err and ">= 100 dark frames" in err
    err = _fail(["calibrate", "--dark", dark, "--flat", flats[0], "-o", out], capsys)
    assert "1 flat level" in err and "at least 2" in err
    assert not Path(out).exists()


@pytest.mark.parametrize(
    "case, expect",
    [
        ("saturated", "lower the light or the exposure"),
        ("too_dark", "too dark"),
        ("dark_as_flat", "no brighter than the darks"),
        ("shape", "same ROI and binning"),
        ("uint8", "8-bit data"),
        ("float", "floating-point data"),
        ("out_is_dir", "is a folder"),
        ("out_missing_dir", "does not exist"),
    ],
)
def test_bad_input_messages(stacks, capsys, case, expect):
    tmp, rng, maps, dark, flats = stacks
    out = tmp / "cal.tif"
    flats = list(flats)
    if case == "saturated":
        flats[2] = write_stack(tmp / "sat.tif", rng, (maps[0] * 30, maps[1], maps[2]), 1200, 30)
    elif case == "too_dark":
        flats[0] = write_stack(tmp / "dim.tif", rng, maps, 1.0, 30)
    elif case == "dark_as_flat":
        flats[0] = write_stack(tmp / "d2.tif", rng, maps, 0, 30)
    elif case == "shape":
        flats[1] = write_stack(tmp / "other.tif", rng, make_maps(rng, (16, 20)), 300, 30)
    elif case == "uint8":
        flats[1] = write_stack(
            tmp / "u8.tif", rng, (maps[0] * 0.01, maps[1] * 0.5, maps[2]), 300, 30, np.uint8
        )
    elif case == "float":
        flats[1] = write_stack(tmp / "f32.tif", rng, maps, 300, 30, np.float32)
    elif case == "out_is_dir":
        out = tmp
    elif case == "out_missing_dir":
        out = tmp / "nope" / "cal.tif"
    argv = ["calibrate", "--dark", dark, *sum((["--flat", f] for f in flats), []), "-o", str(out)]
    err = _fail(argv, capsys)
    assert expect in err, err
    assert "Traceback" not in err
    assert not (tmp / "cal.tif").exists()
    assert [p.name for p in tmp.iterdir() if p.suffix == ".part"] == []


def test_no_partial_file_when_interrupted_or_failing(stacks, monkeypatch):
    tmp, _, _, dark, flats = stacks
    out = tmp / "cal.tif"
    out.write_bytes(b"previous calibration")

    import livedenoise.calibration.files as mod

    calls = {"n": 0}
    real_add = MomentAccumulator.add

    def interrupted_add(self, f):
        calls["n"] += 1
        if calls["n"] == 70:
            raise KeyboardInterrupt
        real_add(self, f)

    monkeypatch.setattr(MomentAccumulator, "add", interrupted_add)
    with pytest.raises(KeyboardInterrupt):
        calibrate_files(dark, flats, out, progress=False)
    monkeypatch.setattr(MomentAccumulator, "add", real_add)

    # a failure while the file is being written leaves the old file untouched
    def broken_write(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile.TiffWriter, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        mod.calibrate_files(dark, flats, out, progress=False)
    assert out.read_bytes() == b"previous calibration"
    assert sorted(p.name for p in tmp.iterdir()) == sorted(
        ["cal.tif", "dark.tif", "f0.tif", "f1.tif", "f2.tif"]
    )


def test_read_back_is_the_fit(synthetic, tmp_path):
    from livedenoise.calibration.maps import write_calibration
    from livedenoise.calibration.report import write_report

    _, dark, flats = synthetic
    fit = fit_calibration(dark, flats, camera="synthetic")
    write_calibration(tmp_path / "c.tif", fit.calibration)
    back = read_calibration(tmp_path / "c.tif")
    np.testing.assert_array_equal(back.gain_adu_per_e, fit.calibration.gain_adu_per_e)
    assert back.id == fit.calibration.id
    assert back.meta["defects"]["counts"] == fit.summary["defects"]
    write_report(fit, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 20_000
    with pytest.raises(CalibrationError, match="same ROI and binning"):
        fit_calibration(
            dark,
            [flats[0], level(np.random.default_rng(0), make_maps(np.random.default_rng(1), (8, 8)), 100, 30)],
        )


# -- sanity of calibration values and files --------------------------------------------------


def _maps(shape=(8, 8), gain=2.0, var=1.0, offset=100.0):
    return (
        np.full(shape, offset, np.float32),
        np.full(shape, gain, np.float32),
        np.full(shape, var, np.float32),
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"gain": 1e-30}, r"gain_adu_per_e must lie within \[0.001, 1000\] ADU per e-"),
        ({"gain": 5e4}, "gain_adu_per_e must lie within"),
        ({"gain": 0.0}, "gain_adu_per_e must lie within"),
        ({"gain": -1.0}, "gain_adu_per_e must lie within"),
        ({"var": -0.5}, "read_var_e2 must be >= 0 everywhere, 64 pixels are not"),
        ({"var": float("nan")}, "read_var_e2 holds 64 NaN or Inf"),
        ({"offset": float("inf")}, "offset_adu holds 64 NaN or Inf"),
    ],
)
def test_calibration_values_are_sanity_checked(change, match):
    from livedenoise.calibration.maps import Calibration

    with pytest.raises(CalibrationError, match=match):
        Calibration(*_maps(**change))


def test_calibration_files_with_wrong_pages_or_values_are_refused(tmp_path):
    from livedenoise.calibration.maps import Calibration, write_calibration

    good = write_calibration(tmp_path / "good.tif", Calibration(*_maps()))
    with tifffile.TiffFile(good) as tf:
        desc = tf.pages[0].description
    four = tmp_path / "four.tif"
    with tifffile.TiffWriter(four) as tw:
        for i, m in enumerate([*_maps(), _maps()[0]]):
            tw.write(m, photometric="minisblack", description=desc if i == 0 else None, metadata=None)
    with pytest.raises(CalibrationError, match="has 4 pages, expected exactly 3"):
        read_calibration(four)
    tiny = tmp_path / "tiny.tif"  # a file whose gain page says 1e-30: 2e33 e- per ADU
    with tifffile.TiffWriter(tiny) as tw:
        for i, m in enumerate(_maps(gain=1e-30)):
            tw.write(m, photometric="minisblack", description=desc if i == 0 else None, metadata=None)
    with pytest.raises(CalibrationError, match=r"tiny.tif: gain_adu_per_e must lie within"):
        read_calibration(tiny)
    text = tmp_path / "text.tif"
    text.write_text("root:x:0:0:SECRET\n")
    with pytest.raises(CalibrationError, match="is not a readable TIFF") as info:
        read_calibration(text)
    assert "SECRET" not in str(info.value)


def test_calibration_must_fit_the_sensor():
    from livedenoise.calibration.maps import Calibration

    big = Calibration(*_maps((1024, 1024)))
    with pytest.raises(
        CalibrationError, match=r"maps are 1024×1024 but the sensor of camera 'Cam' is 512×512"
    ):
        big.check_sensor((512, 512), camera="Cam")
    big.check_sensor((1024, 1024))
    with pytest.raises(CalibrationError, match="but the sensor"):
        Calibration(*_maps((256, 256))).check_sensor((512, 512))
    Calibration.uniform((8, 8), offset_adu=100, gain_adu_per_e=2).check_sensor((512, 512))  # nominal: any
