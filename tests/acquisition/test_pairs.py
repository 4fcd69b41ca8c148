"""Paired datasets: all-or-nothing pairs, appending, stray files, quality checks."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.ndimage import fourier_shift, gaussian_filter

from livedenoise.acquisition import writer as writer_mod
from livedenoise.acquisition.pairs import (
    INDEX_NAME,
    PairDataset,
    PairsError,
    QualityThresholds,
    check_pair,
    phase_shift,
)
from livedenoise.acquisition.writer import PairWriter
from livedenoise.calibration.maps import Calibration

SHAPE = (48, 64)
OFFSET, GAIN = 100.0, 2.0


def _camera(shape=SHAPE, label="Camera"):
    return {
        "label": label,
        "shape": list(shape),
        "roi": [0, 0, shape[1], shape[0]],
        "binning": 1,
        "bit_depth": 16,
    }


def _cal(shape=SHAPE, offset=OFFSET):
    return Calibration.uniform(shape, offset_adu=offset, gain_adu_per_e=GAIN, read_var_e2=1.0)


def _scene(rng, shape=SHAPE, pad=0, mean_e=20.0):
    img = gaussian_filter(rng.random((shape[0] + 2 * pad, shape[1] + 2 * pad)), 2.5)
    img = (img - img.min()) / (img.max() - img.min())
    return (0.2 + img) * mean_e


def _adu(rng, lam):
    return np.clip(
        np.rint(OFFSET + GAIN * (rng.poisson(lam) + rng.normal(0, 1.0, lam.shape))), 0, 65535
    ).astype(np.uint16)


def _pair(rng, k=2, ratio=10.0, lam=None, long_gain=1.0):
    lam = _scene(rng) if lam is None else lam
    short = np.stack([_adu(rng, lam) for _ in range(k)])
    long = _adu(rng, lam * ratio * long_gain)
    return short, long


def _add(writer, rng, **kw):
    short, long = _pair(rng, **kw)
    return writer.add(
        short,
        long,
        short_exposure_ms=10.0,
        long_exposure_ms=100.0,
        position_um={"x": 1.0, "y": 2.0, "z": 3.0},
        t_short=[1.0, 2.0],
        t_long=3.0,
    )


def test_roundtrip_index_and_frames(tmp_path, rng):
    out = tmp_path / "ds"
    w = PairWriter(out, camera=_camera(), calibration=_cal())
    assert not out.exists()  # nothing written before the first pair
    e0 = _add(w, rng)
    _add(w, rng)
    ds = PairDataset(out)
    assert len(ds) == 2 and ds.stray == []
    idx = json.loads((out / INDEX_NAME).read_text())
    assert idx["livedenoise_pairs"] == 1
    assert idx["camera"]["label"] == "Camera" and idx["camera"]["shape"] == list(SHAPE)
    assert idx["calibration"]["file"] == "calibration.tif" and idx["calibration"]["id"] == _cal().id
    p = idx["pairs"][0]
    assert p["short_exposure_ms"] == 10.0 and p["long_exposure_ms"] == 100.0 and p["n_short"] == 2
    assert (
        p["position_um"] == {"x": 1.0, "y": 2.0, "z": 3.0}
        and p["t_short"] == [1.0, 2.0]
        and p["t_long"] == 3.0
    )
    assert set(p["quality"]) >= {"shift_px", "saturated_fraction", "bleach_deviation"} and p["flags"] == []
    short, long = ds.load_adu(0)
    assert short.shape == (2, *SHAPE) and short.dtype == np.uint16 and long.shape == SHAPE
    s_e, l_e = ds.load_e(e0["id"])
    np.testing.assert_allclose(l_e, (long.astype(np.float32) - OFFSET) / GAIN)
    assert l_e.mean() / s_e.mean() == pytest.approx(10.0, rel=0.05)


def test_failed_write_leaves_no_trace(tmp_path, rng, monkeypatch):
    out = tmp_path / "ds"
    w = PairWriter(out, camera=_camera(), calibration=_cal())
    _add(w, rng)
    before = sorted(p.name for p in out.rglob("*"))
    real = writer_mod._write_tiff

    def fail_on_long(path, array, description):
        if "long" in path.name:
            raise OSError(errno.EIO, "simulated I/O error")
        real(path, array, description)

    monkeypatch.setattr(writer_mod, "_write_tiff", fail_on_long)
    with pytest.raises(OSError, match="simulated"):
        _add(w, rng)
    assert sorted(p.name for p in out.rglob("*")) == before  # the short frame of the failed pair is gone
    assert len(PairDataset(out)) == 1


def test_disk_full_message_keeps_dataset(tmp_path, rng, monkeypatch):
    out = tmp_path / "ds"
    w = PairWriter(out, camera=_camera(), calibration=_cal())
    _add(w, rng)

    def full(path, array, description):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod, "_write_tiff", full)
    with pytest.raises(OSError, match="disk full .* keeps its 1 complete pairs") as info:
        _add(w, rng)
    assert info.value.errno == errno.ENOSPC
    ds = PairDataset(out)
    assert len(ds) == 1 and ds.stray == []


CRASH = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from livedenoise.acquisition import writer as pm
    from livedenoise.calibration.maps import Calibration
    real = pm._write_tiff
    def crash(path, array, description):
        real(path, array, description)
        if "pair-00002-long" in path.name:
            os._exit(3)   # the process dies mid-pair: no cleanup, no index update
    pm._write_tiff = crash
    shape = (48, 64)
    cal = Calibration.uniform(shape, offset_adu=100.0, gain_adu_per_e=2.0, read_var_e2=1.0)
    cam = {"label": "Camera", "shape": list(shape), "roi": [0, 0, 64, 48], "binning": 1, "bit_depth": 16}
    w = pm.PairWriter(sys.argv[1], camera=cam, calibration=cal)
    rng = np.random.default_rng(0)
    for i in range(4):
        short = rng.poisson(10, (1, *shape)).astype(np.uint16) + 100
        long = rng.poisson(100, shape).astype(np.uint16) + 100
        w.add(short, long, short_exposure_ms=10, long_exposure_ms=100)
    """
)


def test_crash_mid_pair_loses_only_that_pair_and_append_continues(tmp_path, rng):
    out = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    ds = PairDataset(out)
    assert [p["id"] for p in ds.pairs] == [0, 1]  # only the complete pairs
    assert {p.name for p in ds.stray} == {".pair-00002-short.tif.part", ".pair-00002-long.tif.part"}
    # appending after the crash: ids continue, the stray files are ignored (and replaced)
    w = PairWriter(out, camera=_camera(), calibration=_cal())
    e = w.add(*_pair(rng, k=1), short_exposure_ms=10, long_exposure_ms=100)
    assert e["id"] == 2
    ds = PairDataset(out)
    assert [p["id"] for p in ds.pairs] == [0, 1, 2]
    assert ds.load_adu(2)[1].shape == SHAPE


CRASH_FIRST = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from livedenoise.acquisition import writer as pm
    from livedenoise.calibration.maps import Calibration
    real = pm.write_calibration
    def crash(path, cal, **kw):
        real(path, cal, **kw)
        os._exit(3)   # SIGKILL-like: the new dataset's first pair never gets its index
    pm.write_calibration = crash
    shape = (48, 64)
    cal = Calibration.uniform(shape, offset_adu=100.0, gain_adu_per_e=2.0, read_var_e2=1.0)
    cam = {"label": "Camera", "shape": list(shape), "roi": [0, 0, 64, 48], "binning": 1, "bit_depth": 16}
    w = pm.PairWriter(sys.argv[1], camera=cam, calibration=cal)
    short = np.full((1, *shape), 120, np.uint16)
    w.add(short, np.full(shape, 300, np.uint16), short_exposure_ms=10, long_exposure_ms=100)
    """
)


def test_crash_while_a_new_dataset_is_made_leaves_nothing_that_blocks_the_next_collection(tmp_path, rng):
    out = tmp_path / "ds"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_FIRST, str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert not out.exists()  # the half-made dataset is only the hidden folder being built
    assert [p.name.startswith(".ds.creating-") for p in tmp_path.iterdir()] == [True]
    w = PairWriter(out, camera=_camera(), calibration=_cal())  # the next collection works...
    assert _add(w, rng)["id"] == 0
    assert len(PairDataset(out)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # ...and the dead one's leftovers are gone


def test_a_half_made_dataset_of_an_older_version_is_recovered(tmp_path, rng):
    out = tmp_path / "ds"
    (out / "frames").mkdir(parents=True)  # what a kill during the first pair used to leave: no index
    (out / "calibration.tif").write_bytes(b"partial")
    (out / "frames" / "pair-00000-short.tif").write_bytes(b"complete")
    (out / "frames" / ".pair-00000-long.tif.part").write_bytes(b"half")
    (out / ".pairs.json.abc123.part").write_text("{")
    w = PairWriter(out, camera=_camera(), calibration=_cal())
    assert _add(w, rng)["id"] == 0  # the incomplete pair was discarded, the dataset starts afresh
    ds = PairDataset(out)
    assert len(ds) == 1 and ds.stray == [] and ds.calibration.id == _cal().id
    # a folder with anything else in it is still refused (it may be someone's data)
    other = tmp_path / "other"
    (other / "frames").mkdir(parents=True)
    (other / "frames" / "pair-00000-short.tif").write_bytes(b"x")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PairsError, match="not empty"):
        PairWriter(other, camera=_camera(), calibration=_cal())
    assert (other / "notes.txt").exists() and (other / "frames" / "pair-00000-short.tif").exists()


def test_an_interrupted_dataset_creation_leaves_no_folder(tmp_path, rng, monkeypatch):
    def interrupted(path, cal, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_mod, "write_calibration", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _add(PairWriter(tmp_path / "ds", camera=_camera(), calibration=_cal()), rng)
    assert list(tmp_path.iterdir()) == []


def test_append_checks_camera_and_calibration(tmp_path, rng):
    out = tmp_path / "ds"
    _add(PairWriter(out, camera=_camera(), calibration=_cal()), rng)
    _add(PairWriter(out, camera=_camera(), calibration=_cal()), rng)
    assert [p["id"] for p in PairDataset(out).pairs] == [0, 1]
    with pytest.raises(PairsError, match=r"cannot append .* \[48, 64\].*\[32, 32\]"):
        PairWriter(out, camera=_camera((32, 32)), calibration=_cal((32, 32)))
    with pytest.raises(PairsError, match="collected with calibration"):
        PairWriter(out, camera=_camera(), calibration=_cal(offset=90.0))


@pytest.mark.parametrize("bad", ["file", "nonempty"])
def test_bad_destination(tmp_path, bad):
    target = tmp_path / "x"
    if bad == "file":
        target.write_text("not a folder")
    else:
        target.mkdir()
        (target / "other.txt").write_text("x")
    with pytest.raises(PairsError, match="not a folder" if bad == "file" else "not empty"):
        PairWriter(target, camera=_camera(), calibration=_cal())


def test_reader_errors(tmp_path):
    with pytest.raises(PairsError, match="not a paired dataset"):
        PairDataset(tmp_path)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"livedenoise_pairs": 99, "pairs": []}))
    with pytest.raises(PairsError, match="format 99"):
        PairDataset(tmp_path)


@pytest.mark.parametrize("shift", [(0.3, -1.7), (2.45, 0.1), (-1.25, 2.6), (0.0, 0.0)])
def test_phase_shift_recovers_known_shift(shift, rng):
    pad = 12
    big = _scene(rng, pad=pad, mean_e=30.0)
    moved = np.fft.ifftn(fourier_shift(np.fft.fftn(big), shift)).real
    crop = np.s_[pad:-pad, pad:-pad]
    ref = rng.poisson(big[crop] * 10).astype(np.float64)
    mov = rng.poisson(np.clip(moved[crop], 0, None)).astype(np.float64)
    dy, dx = phase_shift(ref, mov)
    assert dy == pytest.approx(-shift[0], abs=0.15)
    assert dx == pytest.approx(-shift[1], abs=0.15)


def test_motion_saturation_and_bleaching_flags(rng):
    t = QualityThresholds()
    lam = _scene(rng)
    short_e = rng.poisson(lam).astype(np.float32)
    long_e = rng.poisson(lam * 10).astype(np.float32)
    long_adu = np.full(SHAPE, 1000, np.uint16)
    q, flags = check_pair(short_e, long_e, long_adu, exposure_ratio=10.0, max_adu=65535, thresholds=t)
    assert flags == [] and q["saturated_fraction"] == 0.0 and abs(q["bleach_deviation"]) < 0.05
    # saturation: 1% of the long frame at the camera's maximum
    sat = long_adu.copy()
    sat[:5, :10] = 65535
    q, flags = check_pair(short_e, long_e, sat, exposure_ratio=10.0, max_adu=65535, thresholds=t)
    assert flags == ["saturated"] and q["saturated_fraction"] == pytest.approx(50 / sat.size)
    # bleaching: the long exposure collected 25 % fewer photons than its exposure allows
    q, flags = check_pair(short_e, long_e * 0.75, long_adu, exposure_ratio=10.0, max_adu=65535, thresholds=t)
    assert flags == ["bleaching"] and q["bleach_deviation"] == pytest.approx(-0.25, abs=0.03)
    # motion: a 2-pixel shift
    q, flags = check_pair(np.roll(short_e, 2, axis=1), long_e, long_adu, exposure_ratio=10.0, max_adu=65535)
    assert flags == ["motion"] and q["shift_px"][1] == pytest.approx(-2.0, abs=0.2)


def test_flagged_pairs_are_excluded_by_default(tmp_path, rng):
    out = tmp_path / "ds"
    w = PairWriter(out, camera=_camera(), calibration=_cal())
    _add(w, rng)
    bleached = _add(w, rng, long_gain=0.7)
    assert bleached["flags"] == ["bleaching"]
    ds = PairDataset(out)
    assert [p["id"] for p in ds.usable()] == [0]
    assert [p["id"] for p in ds.usable(include_flagged=True)] == [0, 1]


def test_add_rejects_bad_frames(tmp_path, rng):
    w = PairWriter(tmp_path / "ds", camera=_camera(), calibration=_cal())
    short, long = _pair(rng)
    with pytest.raises(PairsError, match="shorter"):
        w.add(short, long, short_exposure_ms=100, long_exposure_ms=10)
    with pytest.raises(PairsError, match="uint16"):
        w.add(short.astype(np.float32), long, short_exposure_ms=10, long_exposure_ms=100)
    with pytest.raises(PairsError, match="this dataset is"):
        w.add(short[:, :10], long, short_exposure_ms=10, long_exposure_ms=100)
    assert not (tmp_path / "ds").exists()
