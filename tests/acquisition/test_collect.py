"""Pair collection through the MDA machinery, on the simulated camera in a real UniMMCore."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from livedenoise.acquisition import writer as writer_mod
from livedenoise.acquisition.collect import (
    CameraBusyError,
    SaturationError,
    collect_pairs,
    parse_positions,
    validate_request,
)
from livedenoise.acquisition.pairs import PairDataset, PairsError
from livedenoise.cli import main
from livedenoise.drivers.simcam import load_sim_core

USER_EXPOSURE_MS = 33.0


@pytest.fixture(scope="module")
def sim():
    core, camera = load_sim_core(sensor_shape=(64, 64), seed=3)
    core.setProperty("Camera", "Motion", 0.0)
    yield core, camera
    if core.isSequenceRunning():
        core.stopSequenceAcquisition()


@pytest.fixture
def core(sim):
    core, camera = sim
    core.setProperty("Camera", "LightLevel", 1.0)
    core.setExposure(USER_EXPOSURE_MS)
    return core


def _collect(core, camera, out, **kw):
    args = dict(short_ms=5.0, long_ms=50.0, pairs=3, calibration=camera.true_calibration())
    args.update(kw)
    return collect_pairs(core, out, **args)


def test_collect_writes_pairs_and_restores_exposure(core, sim, tmp_path):
    seen = []
    result = _collect(
        core, sim[1], tmp_path / "ds", shorts_per_pair=2, progress=lambda d, t: seen.append((d, t))
    )
    assert result["pairs_written"] == 3 and result["incomplete"] == 0
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert core.getExposure() == USER_EXPOSURE_MS
    ds = PairDataset(tmp_path / "ds")
    assert len(ds) == 3 and ds.camera["label"] == "Camera" and ds.camera["shape"] == [64, 64]
    for p in ds.pairs:
        assert (p["short_exposure_ms"], p["long_exposure_ms"], p["n_short"], p["ratio"]) == (
            5.0,
            50.0,
            2,
            10.0,
        )
        assert len(p["t_short"]) == 2 and p["t_long"] > 0
        assert p["flags"] == [], p["quality"]
        assert abs(p["quality"]["bleach_deviation"]) < 0.05  # long really has 10x the photons
    short, long = ds.load_e(0)
    assert short.shape == (2, 64, 64) and long.mean() == pytest.approx(10 * short.mean(), rel=0.1)
    # append: a second collection continues the ids
    _collect(core, sim[1], tmp_path / "ds", pairs=2, shorts_per_pair=1)
    assert [p["id"] for p in PairDataset(tmp_path / "ds").pairs] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"short_ms": 50.0, "long_ms": 50.0}, "must be shorter than the long exposure"),
        ({"short_ms": 80.0, "long_ms": 50.0}, "must be shorter"),
        ({"short_ms": -1.0}, "must be > 0"),
        ({"pairs": 0}, "pairs must be >= 1"),
        ({"pairs": 2.5}, "pairs must be an integer"),
        ({"short_ms": "fast"}, "short_ms must be a number"),
        ({"shorts_per_pair": 0}, "shorts_per_pair must be >= 1"),
    ],
)
def test_bad_arguments_write_nothing(core, sim, tmp_path, kw, match):
    with pytest.raises(PairsError, match=match):
        _collect(core, sim[1], tmp_path / "ds", **kw)
    assert not (tmp_path / "ds").exists()
    assert core.getExposure() == USER_EXPOSURE_MS


def test_missing_output():
    with pytest.raises(PairsError, match="missing output"):
        validate_request(5, 50, 3, None)


def test_cli_bad_arguments(tmp_path, capsys):
    out = tmp_path / "ds"
    assert (
        main(["collect-pairs", "--short-ms", "100", "--long-ms", "10", "--pairs", "3", "-o", str(out)]) == 2
    )
    assert "must be shorter than the long exposure" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):  # argparse: -o is required
        main(["collect-pairs", "--short-ms", "10", "--long-ms", "100", "--pairs", "3"])
    assert "-o/--output" in capsys.readouterr().err


def test_saturating_long_exposure_is_refused(core, sim, tmp_path):
    core.setProperty("Camera", "LightLevel", 800.0)
    with pytest.raises(SaturationError, match="saturates .* shorten --long-ms or lower the light"):
        _collect(core, sim[1], tmp_path / "ds", long_ms=200.0)
    assert not (tmp_path / "ds").exists()  # the long frame comes first: nothing was written
    assert core.getExposure() == USER_EXPOSURE_MS


def test_disk_full_mid_run_keeps_valid_dataset_and_restores(core, sim, tmp_path, monkeypatch):
    real = writer_mod._write_tiff
    calls = []

    def fill_up(path, array, description):
        calls.append(path.name)
        if "pair-00002" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, array, description)

    monkeypatch.setattr(writer_mod, "_write_tiff", fill_up)
    with pytest.raises(OSError, match="disk full") as info:
        _collect(core, sim[1], tmp_path / "ds", pairs=5)
    assert info.value.errno == errno.ENOSPC
    assert core.getExposure() == USER_EXPOSURE_MS
    assert not core.mda.is_running()
    ds = PairDataset(tmp_path / "ds")
    assert [p["id"] for p in ds.pairs] == [0, 1] and ds.stray == []


def test_not_enough_space_is_checked_first(core, sim, tmp_path, monkeypatch):
    from livedenoise.acquisition import collect as collect_mod

    monkeypatch.setattr(collect_mod, "_free_bytes", lambda path: 1000)
    with pytest.raises(PairsError, match="not enough disk space"):
        _collect(core, sim[1], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_free_space_estimate_counts_the_calibration_only_for_a_new_dataset(core, sim, tmp_path, monkeypatch):
    from livedenoise.acquisition import collect as collect_mod

    frames = 3 * 2 * 64 * 64 * 2  # 3 pairs of one short and one long 64×64 uint16 frame
    just_enough = int((frames + (1 << 20)) * 1.1) + 1  # for the frames, not for a calibration copy too
    monkeypatch.setattr(collect_mod, "_free_bytes", lambda path: just_enough)
    with pytest.raises(
        PairsError, match=r"MB of frames \+ 0.0 MB for the calibration copy\), .* free at"
    ) as info:
        _collect(core, sim[1], tmp_path / "ds")  # a new dataset also stores its calibration
    assert str(tmp_path / "ds") in str(info.value)
    monkeypatch.setattr(collect_mod, "_free_bytes", lambda path: 10**12)
    _collect(core, sim[1], tmp_path / "ds")
    monkeypatch.setattr(collect_mod, "_free_bytes", lambda path: just_enough)
    assert _collect(core, sim[1], tmp_path / "ds")["pairs_in_dataset"] == 6  # appending needs no copy


def test_busy_camera(core, sim, tmp_path):
    core.startContinuousSequenceAcquisition(0)
    try:
        with pytest.raises(CameraBusyError, match="busy with another acquisition"):
            _collect(core, sim[1], tmp_path / "ds")
    finally:
        core.stopSequenceAcquisition()
    assert not (tmp_path / "ds").exists()


def test_positions(core, tmp_path):
    assert parse_positions("current", core) is None
    with pytest.raises(PairsError, match="needs an XY stage"):
        parse_positions("grid 2x2 50", core)


def test_exposures_are_batched(core, sim, tmp_path):
    """Consecutive pairs alternate their order: one exposure change per pair, not two."""
    exposures = []

    def on_event(event):
        exposures.append(event.exposure)

    core.mda.events.eventStarted.connect(on_event)
    try:
        _collect(core, sim[1], tmp_path / "ds", pairs=4, shorts_per_pair=2)
    finally:
        core.mda.events.eventStarted.disconnect(on_event)
    changes = int(np.count_nonzero(np.diff(exposures)))
    assert exposures[:3] == [50.0, 5.0, 5.0] and changes == 4  # L S S | S S L | L S S | S S L


def test_cancel_keeps_complete_pairs_and_restores(core, sim, tmp_path):
    import threading

    from livedenoise.acquisition.collect import CollectCancelled

    cancel = threading.Event()
    with pytest.raises(CollectCancelled, match="stopped after 2 of 10 pairs"):
        _collect(
            core,
            sim[1],
            tmp_path / "ds",
            pairs=10,
            cancel=cancel,
            progress=lambda done, total: cancel.set() if done == 2 else None,
        )
    assert core.getExposure() == USER_EXPOSURE_MS and not core.mda.is_running()
    assert len(PairDataset(tmp_path / "ds")) == 2


def test_cli_collects_on_the_simulator(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(
        [
            "collect-pairs",
            "--short-ms",
            "5",
            "--long-ms",
            "50",
            "--pairs",
            "2",
            "--shorts-per-pair",
            "2",
            "-o",
            str(out),
            "--sensor",
            "64",
            "--light-level",
            "2",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert "2 pairs written" in capsys.readouterr().out
    ds = PairDataset(out)
    assert len(ds) == 2 and ds.pairs[0]["n_short"] == 2
    assert (out / "calibration.tif").is_file() and ds.calibration.shape == (64, 64)
    rc = main(
        [
            "collect-pairs",
            "--short-ms",
            "5",
            "--long-ms",
            "50",
            "--pairs",
            "2",
            "-o",
            str(tmp_path / "x"),
            "--config",
            str(tmp_path / "rig.cfg"),
        ]
    )
    assert rc == 2 and "--config needs --calibration" in capsys.readouterr().err


class _StageCore:
    """Only what parse_positions asks of a core with an XY stage (the simulator has none)."""

    def getXYStageDevice(self):
        return "XY"

    def getXYPosition(self):
        return (100.0, 200.0)


def test_position_specs(tmp_path):
    grid = parse_positions("grid 3x2 10", _StageCore())
    assert [(p["x"], p["y"]) for p in grid] == [
        (90, 195),
        (100, 195),
        (110, 195),
        (110, 205),
        (100, 205),
        (90, 205),
    ]
    f = tmp_path / "pos.txt"
    f.write_text("# x y z\n1, 2\n3 4 5\n")
    assert parse_positions(["list", str(f)], _StageCore()) == [
        {"x": 1, "y": 2, "z": None},
        {"x": 3, "y": 4, "z": 5},
    ]
    f.write_text("1 2 3 4\n")
    with pytest.raises(PairsError, match="line 1: expected 'x y' or 'x y z'"):
        parse_positions(["list", str(f)], _StageCore())
    with pytest.raises(PairsError, match="grid NxM STEP_UM"):
        parse_positions("grid 3 10", _StageCore())


def test_positions_list_file_is_confined_and_never_echoed(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    secret = "root:x:0:0:TOP-SECRET-LINE"
    (tmp_path / "secret.txt").write_text(secret + "\n")
    (root / "bad.txt").write_text("1 2\n" + secret + "\n")
    (root / "huge.txt").write_bytes(b"1 2\n" * 400_000)  # 1.6 MB
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00" * 100)
    (root / "nan.txt").write_text("1 nan\n")
    (root / "ok.txt").write_text("1 2\n")
    for spec, match in [
        (f"list {tmp_path / 'secret.txt'}", "outside the allowed folder"),
        ("list ../secret.txt", "outside the allowed folder"),
        ("list bad.txt", "line 2: expected 'x y' or 'x y z'"),
        ("list huge.txt", "larger than 1048576 bytes"),
        ("list binary.txt", "not UTF-8 text"),
        ("list nan.txt", "line 1: expected"),
        ("list missing.txt", "does not exist"),
        ("list a\x00b", "NUL byte"),
    ]:
        with pytest.raises(PairsError, match=match) as info:
            parse_positions(spec, _StageCore(), root=root)
        assert "SECRET" not in str(info.value) and "root:x" not in str(info.value)
        assert len(str(info.value)) < 600
    assert parse_positions("list ok.txt", _StageCore(), root=root) == [{"x": 1, "y": 2, "z": None}]
