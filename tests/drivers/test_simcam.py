"""The simulated sCMOS camera, through real UniMMCore cores (small sensors, fast)."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

from livedenoise.calibration.maps import Calibration
from livedenoise.drivers import config_path
from livedenoise.drivers.simcam import ReplayCamera, SimSCMOSCamera, load_sim_core

SENSOR = (96, 128)  # (height, width); not square, so a transposition shows


def _close(core) -> None:
    if core.isSequenceRunning():
        core.stopSequenceAcquisition()
    core.unloadAllDevices()


@pytest.fixture(scope="module", autouse=True)
def _collect_cores():
    yield
    gc.collect()  # a UniMMCore still alive at interpreter exit can abort the process


@pytest.fixture
def sim():
    core, cam = load_sim_core(sensor_shape=SENSOR, seed=1)
    yield core, cam
    _close(core)


def pop_frames(core, n: int, timeout_s: float = 20.0) -> tuple[list[np.ndarray], list[dict]]:
    """Pop ``n`` frames and their metadata (polling: the core has no per-frame signal)."""
    frames, metas = [], []
    deadline = time.monotonic() + timeout_s
    while len(frames) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"got {len(frames)} of {n} frames in {timeout_s} s")
        if core.getRemainingImageCount() == 0:
            time.sleep(0.001)
            continue
        try:
            img, md = core.popNextImageAndMD()
        except IndexError:  # can still happen after the count check
            continue
        frames.append(np.array(img))
        metas.append(dict(md))
    return frames, metas


def acquire(core, n: int) -> tuple[np.ndarray, list[dict]]:
    core.startSequenceAcquisition(n, 0, True)
    frames, metas = pop_frames(core, n)
    return np.stack(frames), metas


def crop(a: np.ndarray, core) -> np.ndarray:
    x, y, w, h = core.getROI()
    return a[y : y + h, x : x + w]


# -- configuration ---------------------------------------------------------------------------


def test_config_loads_with_roles_and_properties(sim):
    core, cam = sim
    assert isinstance(cam, SimSCMOSCamera)
    assert core.getCameraDevice() == "Camera" and core.getShutterDevice() == "Shutter"
    assert not core.getAutoShutter()
    assert core.getShutterOpen()  # starts open: live shows the sample
    props = set(core.getDevicePropertyNames("Camera"))
    assert {"Exposure", "Binning", "LightLevel", "Scene", "ReadoutTime", "Motion", "Seed"} <= props
    assert core.getAllowedPropertyValues("Camera", "Binning") == ("1", "2", "4")
    assert set(core.getAllowedPropertyValues("Camera", "Scene")) == {"cells", "beads", "flat"}
    assert core.isPropertyPreInit("Camera", "SensorWidth")
    assert (core.getImageHeight(), core.getImageWidth()) == SENSOR
    assert core.getImageBitDepth() == 16 and core.getBytesPerPixel() == 2
    assert core.getExposure() == 20.0
    assert "simcam.cfg" in str(config_path())


def test_bad_settings_raise_clear_errors(sim):
    core, _ = sim
    for prop, value in [("Binning", 3), ("Scene", "stars"), ("LightLevel", -1), ("Exposure", 0)]:
        with pytest.raises(Exception, match=prop if prop != "Exposure" else "Exposure|exposure"):
            core.setProperty("Camera", prop, value)
    with pytest.raises(Exception, match="pre-initialization"):
        core.setProperty("Camera", "SensorWidth", 64)
    with pytest.raises(Exception, match="does not fit"):
        core.setROI(100, 0, 64, 16)


def test_saved_config_reloads_the_same_camera(sim, tmp_path):
    from pymmcore_plus.experimental.unicore import UniMMCore

    core, _ = sim
    assert core.getPixelSizeUm() == pytest.approx(0.1)
    saved = tmp_path / "saved.cfg"
    core.saveSystemConfiguration(saved)
    assert "#py pyDevice,Shutter,livedenoise.drivers.simcam,SimShutter" in saved.read_text()
    core2 = UniMMCore()
    try:
        core2.loadSystemConfiguration(saved)
        core.snapImage()
        core2.snapImage()
        np.testing.assert_array_equal(core.getImage(), core2.getImage())  # same seed, same frame
    finally:
        _close(core2)


def test_example_hardware_config_is_well_formed():
    """The Hamamatsu example cannot load here (no C++ adapters); check its syntax."""
    from pymmcore_plus import CFGCommand

    text = config_path("example_hamamatsu_orca.cfg").read_text()
    commands = {c.value for c in CFGCommand}
    roles = set()
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        assert "#" not in line, f"Micro-Manager .cfg has no inline comments: {line!r}"
        fields = line.split(",")
        assert fields[0] in commands, line
        if fields[:2] == ["Property", "Core"]:
            roles.add(fields[2])
    assert {"Camera", "Shutter"} <= roles
    assert "Property,Camera,PixelType,16bit" in text


def test_load_sim_core_rejects_config_without_simcam(tmp_path):
    cfg = tmp_path / "other.cfg"
    cfg.write_text("Property,Core,Initialize,1\n")
    with pytest.raises(ValueError, match="SimSCMOSCamera"):
        load_sim_core(cfg)


# -- acquisition -----------------------------------------------------------------------------


def test_snap_takes_the_exposure_and_gives_uint16(sim):
    core, cam = sim
    core.setExposure(30)
    t0 = time.monotonic()
    core.snapImage()
    dt = time.monotonic() - t0
    img = core.getImage()
    assert img.dtype == np.uint16 and img.shape == SENSOR
    assert dt >= 0.030
    assert cam.truth(0) is not None and cam.truth(0).shape == SENSOR


def test_finite_sequence_frames_metadata_and_truth(sim):
    core, cam = sim
    core.setExposure(2)
    core.setROI(8, 4, 64, 40)
    frames, metas = acquire(core, 12)
    assert frames.shape == (12, 40, 64) and frames.dtype == np.uint16
    assert [int(m["SimFrame"]) for m in metas] == list(range(12))
    m = metas[0]
    assert float(m["Exposure-ms"]) == 2.0
    assert (m["ROI-X-start"], m["ROI-Y-start"], m["Width"], m["Height"]) == ("8", "4", "64", "40")
    for k in range(12):
        t = cam.truth(k)
        assert t is not None and t.shape == (40, 64) and t.dtype == np.float32
    assert cam.truth(12) is None
    # ids restart at each sequence
    _, metas = acquire(core, 2)
    assert [int(m["SimFrame"]) for m in metas] == [0, 1]


def test_continuous_sequence_until_stopped(sim):
    core, _ = sim
    core.setExposure(1)
    core.setROI(0, 0, 32, 32)
    core.startContinuousSequenceAcquisition(0)
    try:
        frames, metas = pop_frames(core, 20)
    finally:
        core.stopSequenceAcquisition()
    assert not core.isSequenceRunning()
    ids = [int(m["SimFrame"]) for m in metas]
    assert ids == list(range(ids[0], ids[0] + 20))


def test_roi_change_during_a_sequence_applies_to_the_next_frames(sim):
    core, _ = sim
    core.setExposure(2)
    core.setROI(0, 0, 64, 64)
    core.startContinuousSequenceAcquisition(0)
    try:
        frames, _ = pop_frames(core, 3)
        core.setROI(10, 10, 32, 16)
        more, metas = pop_frames(core, 30)
    finally:
        core.stopSequenceAcquisition()
    assert {f.shape for f in frames} == {(64, 64)}
    assert more[-1].shape == (16, 32) and metas[-1]["Width"] == "32"


def test_mda_frames_keep_the_light_on(sim):
    import useq

    core, cam = sim
    cal = cam.true_calibration()
    core.setProperty("Camera", "Scene", "flat")
    got = []
    core.mda.events.frameReady.connect(lambda img, event, meta: got.append(np.array(img)))
    core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 3}, axis_order="t"))
    assert len(got) == 3 and core.getShutterOpen()
    e = (got[-1] - cal.offset_adu) / cal.gain_adu_per_e
    assert np.median(e) == pytest.approx(50.0, rel=0.1)  # 20 ms of the flat field


def test_stop_is_prompt_even_during_a_long_exposure(sim):
    core, _ = sim
    core.setExposure(5000)
    core.startContinuousSequenceAcquisition(0)
    t0 = time.monotonic()
    core.stopSequenceAcquisition()
    assert time.monotonic() - t0 < 3.0  # not the 5 s exposure (slack for a loaded machine)
    assert not core.isSequenceRunning() and core.getRemainingImageCount() == 0


def test_frame_period_is_exposure_or_readout_limited(sim):
    core, cam = sim
    core.setROI(0, 0, 32, 64)
    core.setExposure(15)
    _, metas = acquire(core, 8)
    t = np.array([float(m["SimTimestamp-s"]) for m in metas])
    assert np.all(np.diff(t) >= 0.015 - 1e-6)
    # readout-limited: 64 rows / 2 halves x 400 us = 12.8 ms > 2 ms exposure
    core.setProperty("Camera", "LineTimeUs", 400)
    core.setExposure(2)
    assert float(core.getProperty("Camera", "ReadoutTime")) == pytest.approx(12.8)
    t0 = time.monotonic()
    _, metas = acquire(core, 8)
    wall = time.monotonic() - t0
    t = np.array([float(m["SimTimestamp-s"]) for m in metas])
    assert np.all(np.diff(t) >= 0.0128 - 1e-6)
    assert wall >= 7 * 0.0128


# -- physics ---------------------------------------------------------------------------------


def test_darks_match_offset_and_read_noise(sim):
    core, cam = sim
    cal = cam.true_calibration()
    assert isinstance(cal, Calibration) and cal.shape == SENSOR
    assert cal.meta["camera"] == "Camera" and cal.meta["source"] == "simulator"
    core.setShutterOpen("Shutter", False)
    assert not cam.illuminated()
    core.setROI(16, 8, 64, 48)
    core.setExposure(1)
    frames, metas = acquire(core, 300)
    assert all(m["SimShutterOpen"] == "0" for m in metas)
    f = frames.astype(np.float64)
    off, gain, var = (
        crop(getattr(cal, p), core).astype(np.float64)
        for p in ("offset_adu", "gain_adu_per_e", "read_var_e2")
    )
    good = crop(cam.dark_current_e_per_s, core) < 10  # hot pixels add dark signal
    err = (f.mean(0) - off)[good]
    assert np.percentile(np.abs(err), 99) < 1.0
    ratio = (f.var(0, ddof=1) / (gain**2 * var + 1 / 12))[good]
    assert abs(np.median(ratio) - 1) < 0.05
    assert np.corrcoef(f.var(0)[good], (gain**2 * var)[good])[0, 1] > 0.9


def test_photoelectrons_scale_with_exposure_and_light_level(sim):
    core, cam = sim
    cal = cam.true_calibration()
    core.setProperty("Camera", "Scene", "flat")
    core.setROI(0, 0, 64, 64)

    def mean_e(exposure_ms: float, light: float) -> float:
        core.setExposure(exposure_ms)
        core.setProperty("Camera", "LightLevel", light)
        frames, _ = acquire(core, 3)
        e = (frames - crop(cal.offset_adu, core)) / crop(cal.gain_adu_per_e, core)
        return float(np.median(e.mean(0)))

    e10, e100 = mean_e(10, 1.0), mean_e(100, 1.0)
    assert e10 == pytest.approx(25.0, rel=0.05)  # 2500 e-/s flat field
    assert e100 / e10 == pytest.approx(10.0, rel=0.03)
    assert mean_e(10, 2.0) / e10 == pytest.approx(2.0, rel=0.05)


def test_flat_frames_are_poisson(sim):
    core, cam = sim
    cal = cam.true_calibration()
    core.setProperty("Camera", "Scene", "flat")
    core.setProperty("Camera", "LightLevel", 10)  # 2 ms x 2500 e-/s x 10 = 50 e-
    core.setExposure(2)
    core.setROI(0, 0, 48, 48)
    frames, _ = acquire(core, 300)
    e = (frames - crop(cal.offset_adu, core)) / crop(cal.gain_adu_per_e, core)
    mean, var = e.mean(0), e.var(0, ddof=1)
    shot = var - crop(cal.read_var_e2, core)
    assert np.median(mean) == pytest.approx(50.0, rel=0.03)
    assert np.median(shot / mean) == pytest.approx(1.0, abs=0.05)


def test_truth_is_the_expected_value(sim):
    """Mean of many frames of a frozen scene = truth, to within the Poisson + read noise."""
    core, cam = sim
    cal = cam.true_calibration()
    core.setProperty("Camera", "Motion", 0)
    core.setProperty("Camera", "LightLevel", 10)
    core.setExposure(2)
    core.setROI(20, 10, 64, 64)
    frames, _ = acquire(core, 300)
    truth = cam.truth(299)
    assert np.array_equal(truth, cam.truth(250))  # frozen
    assert truth.max() > 5 * np.median(truth)  # there is structure to see
    e = (frames - crop(cal.offset_adu, core)) / crop(cal.gain_adu_per_e, core)
    z = (e.mean(0) - truth) / np.sqrt((truth + crop(cal.read_var_e2, core)) / len(frames))
    assert abs(z.mean()) < 0.1
    assert 0.9 < z.std() < 1.1


def test_roi_truth_is_a_crop_of_the_full_frame(sim):
    core, cam = sim
    core.setProperty("Camera", "Motion", 0)
    core.snapImage()
    full = cam.truth(0)
    core.setROI(10, 20, 50, 30)
    core.snapImage()
    assert cam.truth(0).shape == (30, 50)
    np.testing.assert_allclose(cam.truth(0), full[20:50, 10:60], rtol=1e-5)


def test_binned_frames_match_binned_calibration(sim):
    core, cam = sim
    core.setProperty("Camera", "Binning", 2)
    assert (core.getImageHeight(), core.getImageWidth()) == (48, 64)
    core.setROI(4, 2, 32, 24)
    x, y, w, h = core.getROI()
    cal = cam.true_calibration().for_roi(x, y, w, h, 2)
    hot = cam.dark_current_e_per_s.reshape(48, 2, 64, 2).max(axis=(1, 3))[y : y + h, x : x + w] > 10
    core.setExposure(1)
    core.setShutterOpen(False)
    frames, metas = acquire(core, 300)
    assert frames.shape == (300, 24, 32) and metas[0]["Binning"] == "2"
    f = frames.astype(np.float64)
    assert np.percentile(np.abs(f.mean(0) - cal.offset_adu)[~hot], 99) < 2.0
    ratio = f.var(0, ddof=1) / (cal.gain_adu_per_e.astype(np.float64) ** 2 * cal.read_var_e2 + 4 / 12)
    assert abs(np.median(ratio[~hot]) - 1) < 0.05
    # light: calibrated binned frames average to the truth (sum of the 2x2 expectations)
    core.setShutterOpen(True)
    core.setProperty("Camera", "Scene", "flat")
    frames, _ = acquire(core, 100)
    e = (frames - cal.offset_adu) / cal.gain_adu_per_e
    truth = cam.truth(99)
    assert np.median(truth) == pytest.approx(4 * 2.5 + 4 * 0.1 * 1e-3, rel=0.02)
    assert np.median(e.mean(0) / truth) == pytest.approx(1.0, abs=0.03)


def test_scene_moves_and_beads_diffuse(sim):
    core, cam = sim
    for scene in ("cells", "beads"):
        core.setProperty("Camera", "Scene", scene)
        core.setProperty("Camera", "Motion", 20)
        core.setExposure(5)
        acquire(core, 3)
        a, b = cam.truth(0), cam.truth(2)
        assert not np.allclose(a, b), scene
        assert a.max() > 3 * np.median(a), scene


def test_same_seed_same_frames(sim):
    core, cam = sim
    core2, cam2 = load_sim_core(sensor_shape=SENSOR, seed=1)
    core3, cam3 = load_sim_core(sensor_shape=SENSOR, seed=2)
    try:
        out = []
        for c in (core, core2, core3):
            c.setExposure(1)
            c.setROI(0, 0, 64, 32)
            out.append(acquire(c, 3)[0])
        np.testing.assert_array_equal(out[0], out[1])
        assert not np.array_equal(out[0], out[2])
        assert cam.true_calibration().id == cam2.true_calibration().id != cam3.true_calibration().id
    finally:
        for c in (core2, core3):
            _close(c)


def test_shutter_only_darkens_its_own_core(sim):
    core, cam = sim
    core2, cam2 = load_sim_core(sensor_shape=SENSOR, seed=1)
    try:
        core.setShutterOpen(False)
        assert not cam.illuminated() and cam2.illuminated()
        core.setProperty("Shutter", "State", "1")
        assert cam.illuminated()
    finally:
        _close(core2)


# -- replay camera and the core's buffer ----------------------------------------------------------


@pytest.fixture
def replay_core():
    from pymmcore_plus.experimental.unicore import UniMMCore

    core = UniMMCore()
    cam = ReplayCamera()
    core.loadPyDevice("Replay", cam)
    core.initializeDevice("Replay")
    core.setCameraDevice("Replay")
    yield core, cam
    _close(core)


def test_replay_camera_loops_over_its_stack(replay_core, rng):
    core, cam = replay_core
    with pytest.raises(RuntimeError, match="load_frames"):
        core.snapImage()
    with pytest.raises(ValueError, match="uint16"):
        cam.load_frames(np.zeros((2, 8, 8), np.float32))
    stack = rng.integers(0, 4000, (3, 16, 24), dtype=np.uint16)
    cam.load_frames(stack)
    frames, metas = acquire(core, 7)
    for k in range(7):
        np.testing.assert_array_equal(frames[k], stack[k % 3])
    assert [int(m["ReplayIndex"]) for m in metas] == [0, 1, 2, 0, 1, 2, 0]
    core.setProperty("Replay", "IntervalMs", 10)
    t0 = time.monotonic()
    acquire(core, 6)
    assert time.monotonic() - t0 >= 0.05


def test_core_buffer_holds_several_full_frames(replay_core):
    core, cam = replay_core
    cam.load_frames(np.zeros((1, 2048, 2048), np.uint16))
    # UniMMCore's default is 1024 MB (250 MB when it sees CI or pytest): >= 31 frames of 2048²
    assert core.getBufferTotalCapacity() >= 30
    core.setCircularBufferMemoryFootprint(128)
    assert core.getBufferTotalCapacity() == 16
