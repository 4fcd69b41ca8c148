"""The live pipeline end to end: simulated camera in a real UniMMCore -> real ZeroMQ subscriber."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from _pipeline_helpers import (
    SlowEngine,
    assert_accounted,
    fake_core,
    livedenoise_threads,
    sim_core,
    wait_for,
)

from livedenoise.app.daemon import serve_control
from livedenoise.calibration.maps import Calibration
from livedenoise.inference.engines import PassthroughEngine
from livedenoise.live.config import ConfigError, PipelineConfig
from livedenoise.live.pipeline import Pipeline
from livedenoise.live.sources import CoreSource
from livedenoise.transport.client import request
from livedenoise.transport.protocol import PROTOCOL
from livedenoise.transport.publisher import Publisher
from livedenoise.transport.subscriber import Subscriber


class Received:
    """A subscriber thread that keeps every message (header + array copy)."""

    def __init__(
        self,
        endpoint: str,
        topics: tuple[str, ...] = ("raw", "denoised", "truth"),
        *,
        rcvhwm: int = 1000,
        stall_s: float = 0.0,
    ) -> None:
        self.sub = Subscriber(endpoint, topics, rcvhwm=rcvhwm)
        self.msgs: dict[str, list[tuple[dict[str, Any], np.ndarray]]] = {t: [] for t in topics}
        self.stall_s = stall_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.stall_s:
            self._stop.wait(self.stall_s)  # a stalled viewer: reads nothing for a while
        while not self._stop.is_set():
            m = self.sub.recv(timeout_s=0.05)
            if m is not None:
                self.msgs[m.topic].append((m.header, np.array(m.array)))

    def count(self, topic: str) -> int:
        return len(self.msgs[topic])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sub.close()


class Rig:
    """Pipeline + publisher + subscriber on random loopback ports."""

    def __init__(
        self,
        core: Any,
        engine: Any,
        calibration: Calibration,
        *,
        truth: Any = None,
        sub_kwargs: dict[str, Any] | None = None,
        sndhwm: int = 1000,
        **config: Any,
    ) -> None:
        self.core = core
        self.pub = Publisher("tcp://127.0.0.1:*", sndhwm=sndhwm)
        self.config = PipelineConfig(pub_endpoint=self.pub.endpoint, **config)
        self.rx = Received(self.pub.endpoint, **(sub_kwargs or {}))
        assert wait_for(lambda: all(self.pub.has_subscribers(t) for t in self.rx.msgs), 5.0)
        self.drops: list[tuple[int, str, int]] = []
        self.errors: list[tuple[str, str]] = []
        self.pipe = Pipeline(CoreSource(core, truth=truth), engine, self.pub, calibration, self.config)
        self.pipe.events.frameDropped.connect(lambda f, r, n: self.drops.append((f, r, n)))
        self.pipe.events.error.connect(lambda w, m: self.errors.append((w, m)))

    def __enter__(self) -> Rig:
        self.pipe.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipe.close()
        self.rx.close()

    def settle(self, topic: str, n: int) -> None:
        """Wait until the subscriber has ``n`` messages of ``topic`` (after a stop)."""
        assert wait_for(lambda: self.rx.count(topic) >= n, 5.0), (self.rx.count(topic), n)


def _roi_cal(cam: Any, roi: list[int] | tuple[int, ...]) -> Calibration:
    x, y, w, h, b = roi
    return cam.true_calibration().for_roi(x, y, w, h, b)


def _expected_e(raw: np.ndarray, cal: Calibration) -> np.ndarray:
    return np.maximum((raw.astype(np.float32) - cal.offset_adu) / cal.gain_adu_per_e, 0)


def test_frames_are_contiguous_matched_and_follow_the_protocol() -> None:
    core, cam = sim_core(64, exposure_ms=4.0)
    core.setROI(8, 4, 48, 32)
    with Rig(core, PassthroughEngine(), cam.true_calibration(), truth=cam.truth, publish_truth=True) as rig:
        assert wait_for(lambda: rig.rx.count("denoised") >= 40)
        rig.pipe.stop()
        n = rig.pipe.status()["frames"]["restored"]
        rig.settle("denoised", n)
        rig.settle("raw", n)
    assert_accounted(rig.pipe.status())
    cal = _roi_cal(cam, (8, 4, 48, 32, 1))
    raw = {h["frame"]: (h, a) for h, a in rig.rx.msgs["raw"]}
    for topic, dtype, units in (
        ("raw", "<u2", "adu"),
        ("denoised", "<f4", "photoelectrons"),
        ("truth", "<f4", "photoelectrons"),
    ):
        msgs = rig.rx.msgs[topic]
        assert [h["seq"] for h, _ in msgs] == list(range(len(msgs))), topic
        assert [h["frame"] for h, _ in msgs] == list(range(len(msgs))), topic
        for h, a in msgs:
            assert h["protocol"] == PROTOCOL and h["stream"] == topic
            assert h["shape"] == [32, 48] and h["dtype"] == dtype and h["units"] == units
            assert a.shape == (32, 48) and a.dtype == np.dtype(dtype)
            assert h["dropped"] == 0 and h["camera"] == "Camera" and h["calibration"] == cal.id
            assert h["t_acquired"] <= h["t_published"] and h["exposure_ms"] == 4.0
    assert len(rig.rx.msgs["truth"]) == n
    for h, den in rig.rx.msgs["denoised"]:
        twin_h, twin = raw[h["frame"]]  # every denoised frame has its raw twin
        assert twin_h["t_acquired"] == h["t_acquired"]
        np.testing.assert_allclose(den, _expected_e(twin, cal), rtol=1e-5, atol=1e-4)
    assert rig.pipe.status()["dropped"] == 0


def test_slow_subscriber_does_not_slow_acquisition() -> None:
    """A subscriber that reads nothing fills its queues; acquisition goes on past them, losing nothing."""
    core, cam = sim_core(128, exposure_ms=5.0)
    rig = Rig(
        core,
        PassthroughEngine(),
        cam.true_calibration(),
        sub_kwargs={"rcvhwm": 1, "stall_s": 60.0},
        sndhwm=20,
    )
    with rig:
        # far more frames than the queues (20 + 1 messages, 2 a frame), the sockets' kernel buffers
        # and the ring (8) hold: a publisher that waited for the subscriber would stop the stream
        assert wait_for(lambda: rig.pipe.status()["frames"]["restored"] >= 400, 60.0), rig.pipe.status()
        rig.pipe.stop()
    st = rig.pipe.status()
    assert st["dropped"] == 0 and st["frames"]["restored"] == st["frames"]["acquired"]
    assert_accounted(st)
    assert rig.rx.count("denoised") == 0  # it read nothing all along


def test_drop_oldest_counts_every_lost_frame_exactly() -> None:
    core, cam = sim_core(64, exposure_ms=4.0)  # 250 frames/s into a 20 frames/s engine
    engine = SlowEngine(delay_s=0.05)
    with Rig(core, engine, cam.true_calibration(), ring_slots=4, ring_policy="drop-oldest") as rig:
        assert wait_for(lambda: rig.pipe.status()["drops"].get("ring-full", 0) >= 20)
        rig.pipe.stop()
        st = rig.pipe.status()
        rig.settle("denoised", st["frames"]["restored"])
    acquired, restored = st["frames"]["acquired"], st["frames"]["restored"]
    ring_drops = st["drops"]["ring-full"]
    assert set(st["drops"]) == {"ring-full"}
    assert restored + ring_drops == acquired
    assert_accounted(st)
    assert st["ring"]["dropped"] == ring_drops and len(rig.drops) == ring_drops
    assert [n for _, _, n in rig.drops] == list(range(1, ring_drops + 1))
    published = [h["frame"] for h, _ in rig.rx.msgs["denoised"]]
    dropped = [f for f, _, _ in rig.drops]
    assert sorted(published + dropped) == list(range(acquired))  # every frame accounted once
    headers = [h["dropped"] for h, _ in rig.rx.msgs["denoised"]]
    assert headers == sorted(headers) and headers[-1] <= ring_drops
    assert [h["seq"] for h, _ in rig.rx.msgs["denoised"]] == list(range(restored))


def test_block_policy_loses_nothing() -> None:
    core, cam = sim_core(64, exposure_ms=2.0)
    engine = SlowEngine(delay_s=0.01)
    with Rig(core, engine, cam.true_calibration(), ring_slots=2, ring_policy="block") as rig:
        assert wait_for(lambda: rig.rx.count("denoised") >= 40)
        rig.pipe.stop()
        st = rig.pipe.status()
        rig.settle("denoised", st["frames"]["restored"])
    assert st["dropped"] == 0 and st["drops"] == {}
    assert st["frames"]["restored"] == st["frames"]["acquired"]
    assert_accounted(st)
    frames = [h["frame"] for h, _ in rig.rx.msgs["denoised"]]
    assert frames == list(range(st["frames"]["acquired"]))


def test_roi_and_binning_change_mid_stream_recrop_and_continue() -> None:
    core, cam = sim_core(64, exposure_ms=3.0)
    with Rig(core, PassthroughEngine(), cam.true_calibration()) as rig:
        assert wait_for(lambda: rig.rx.count("denoised") >= 5)
        core.setROI(8, 16, 32, 24)
        assert wait_for(lambda: rig.rx.msgs["denoised"][-1][0]["shape"] == [24, 32])
        roi_after_crop = rig.pipe.status()["roi"]
        core.setProperty("Camera", "Binning", 2)
        assert wait_for(lambda: rig.pipe.status()["roi"][4] == 2)
        assert wait_for(lambda: rig.rx.msgs["denoised"][-1][0]["calibration"] is not None)
        roi_binned = rig.pipe.status()["roi"]
        n = rig.rx.count("denoised") + 3
        assert wait_for(lambda: rig.rx.count("denoised") >= n)
        rig.pipe.stop()
        st = rig.pipe.status()
        rig.settle("raw", st["frames"]["acquired"])
    assert roi_after_crop == [8, 16, 32, 24, 1]
    assert st["state"] == "stopped" and st["dropped"] == 0
    assert_accounted(st)
    raw = {h["frame"]: a for h, a in rig.rx.msgs["raw"]}
    cal_crop, cal_bin = _roi_cal(cam, roi_after_crop), _roi_cal(cam, roi_binned)
    seen = set()
    for h, den in rig.rx.msgs["denoised"]:
        cal = {cal_crop.shape: cal_crop, cal_bin.shape: cal_bin}.get(den.shape)
        if cal is None:
            continue
        seen.add(den.shape)
        assert h["calibration"] == cal.id
        np.testing.assert_allclose(den, _expected_e(raw[h["frame"]], cal), rtol=1e-5, atol=1e-3)
    assert seen == {cal_crop.shape, cal_bin.shape}
    assert [h["frame"] for h, _ in rig.rx.msgs["denoised"]] == list(range(st["frames"]["acquired"]))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_camera_error_mid_acquisition_stops_cleanly() -> None:
    core, _ = fake_core(fail_after=15)
    cal = Calibration.uniform((32, 32), offset_adu=100, gain_adu_per_e=2.0)
    with Rig(core, PassthroughEngine(), cal) as rig:
        assert rig.pipe.wait(10.0)
        rig.pipe.stop()
        rig.settle("denoised", 15)
    st = rig.pipe.status()
    assert st["state"] == "failed" and "stopped acquiring by itself after 15 frames" in st["failure"]
    assert st["frames"]["acquired"] == st["frames"]["restored"] == 15  # nothing acquired was lost
    assert_accounted(st)
    assert [w for w, _ in rig.errors] == ["acquisition"]
    assert livedenoise_threads() == []


def test_engine_errors_are_counted_and_repeated_failures_stop() -> None:
    core, cam = sim_core(64, exposure_ms=3.0)
    flaky = SlowEngine(delay_s=0.0, fail=lambda call: call % 4 == 0)
    with Rig(core, flaky, cam.true_calibration()) as rig:
        assert wait_for(lambda: rig.pipe.status()["frames"]["restored"] >= 20)
        rig.pipe.stop()
        st = rig.pipe.status()
        rig.settle("raw", st["frames"]["acquired"])
    assert st["state"] == "stopped"
    assert st["drops"] == {"engine-error": flaky.calls // 4}
    assert st["frames"]["restored"] + st["dropped"] == st["frames"]["acquired"]
    assert_accounted(st)
    assert rig.rx.count("raw") == st["frames"]["acquired"]  # raw frames still published
    assert all(w == "engine" for w, _ in rig.errors) and len(rig.errors) == st["dropped"]

    core2, cam2 = sim_core(64, exposure_ms=3.0)
    broken = SlowEngine(delay_s=0.0, fail=lambda call: True)
    with Rig(core2, broken, cam2.true_calibration(), max_engine_failures=3) as rig2:
        assert rig2.pipe.wait(10.0)
    st2 = rig2.pipe.status()
    assert st2["state"] == "failed" and "3 consecutive frames failed" in st2["failure"]
    assert st2["frames"]["restored"] == 0 and set(st2["drops"]) <= {"engine-error", "stopped"}
    assert_accounted(st2)
    assert livedenoise_threads() == []


def test_control_socket_status_model_swap_and_stop() -> None:
    core, cam = sim_core(64, exposure_ms=3.0)
    first = SlowEngine(delay_s=0.0, model_id="first")
    with Rig(core, first, cam.true_calibration()) as rig:
        server = serve_control(rig.pipe, "tcp://127.0.0.1:*")
        assert wait_for(lambda: rig.rx.count("denoised") >= 3)
        reply = request(server.endpoint, {"cmd": "status"})
        assert reply["ok"] and reply["state"] == "running" and reply["model"] == "first"
        assert reply["frames"]["acquired"] >= 3 and reply["endpoints"]["pub"] == rig.pub.endpoint
        assert reply["endpoints"]["control"] == server.endpoint
        assert set(reply["latency_ms"]) >= {"acquire", "convert", "queue", "engine", "publish", "end_to_end"}
        assert reply["latency_ms"]["end_to_end"]["p50"] > 0
        bad = request(server.endpoint, {"cmd": "set_model", "model": 5})
        assert not bad["ok"] and "model" in bad["error"]
        unknown = request(server.endpoint, {"cmd": "set_model", "model": "no-such-model"})
        assert not unknown["ok"] and "no-such-model" in unknown["error"]
        assert request(server.endpoint, {"cmd": "status"})["state"] == "running"  # still running
        second = SlowEngine(delay_s=0.0, model_id="second")
        rig.pipe.set_engine(second)  # hot swap between frames
        assert wait_for(lambda: rig.rx.msgs["denoised"][-1][0]["model"] == "second")
        assert first.closed and second.prepared == [(64, 64)]
        assert request(server.endpoint, {"cmd": "stop"})["ok"]
        assert rig.pipe.wait(5.0)
    models = [h["model"] for h, _ in rig.rx.msgs["denoised"]]
    k = models.index("second")
    assert set(models[:k]) == {"first"} and set(models[k:]) == {"second"}
    assert_accounted(rig.pipe.status())
    assert livedenoise_threads() == []


def test_pause_resume_with_roi_change_keeps_numbering() -> None:
    core, cam = sim_core(64, exposure_ms=3.0)
    with Rig(core, PassthroughEngine(), cam.true_calibration()) as rig:
        assert wait_for(lambda: rig.rx.count("denoised") >= 3)
        rig.pipe.pause()
        assert rig.pipe.status()["state"] == "paused" and not core.isSequenceRunning()
        core.setROI(16, 16, 16, 32)
        rig.pipe.resume()
        assert wait_for(lambda: rig.rx.msgs["denoised"][-1][0]["shape"] == [32, 16])
        rig.pipe.stop()
        st = rig.pipe.status()
        rig.settle("denoised", st["frames"]["restored"])
    assert st["dropped"] == 0 and st["roi"] == [16, 16, 16, 32, 1]
    assert_accounted(st)
    assert [h["frame"] for h, _ in rig.rx.msgs["denoised"]] == list(range(st["frames"]["acquired"]))


def test_attached_pipeline_restores_another_programs_mda() -> None:
    import useq

    from livedenoise.live.attached import AttachedSource

    core, cam = sim_core(64, exposure_ms=2.0)
    pub = Publisher("tcp://127.0.0.1:*")
    rx = Received(pub.endpoint, ("raw", "denoised"))
    assert wait_for(lambda: pub.has_subscribers("raw") and pub.has_subscribers("denoised"), 5.0)
    source = AttachedSource(core)
    pipe = Pipeline(
        source, PassthroughEngine(), pub, cam.true_calibration(), PipelineConfig(pub_endpoint=pub.endpoint)
    )
    theirs: list[int] = []
    core.mda.events.frameReady.connect(lambda img, event, meta: theirs.append(int(img.sum() > 0)))
    try:
        pipe.start()
        assert source.attached.wait(5.0)
        core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 8}))  # the other program
        assert wait_for(lambda: rx.count("denoised") >= 8)
    finally:
        pipe.close()
        rx.close()
    assert len(theirs) == 8  # the other program's MDA got all its frames
    assert [h["frame"] for h, _ in rx.msgs["denoised"]] == list(range(8))
    assert pipe.status()["dropped"] == 0
    assert_accounted(pipe.status())


class _Attached:
    """An attached pipeline (publisher + subscriber) on ``core``, for the ``with`` block."""

    def __init__(self, core: Any, calibration: Calibration, **source: Any) -> None:
        from livedenoise.live.attached import AttachedSource

        self.pub = Publisher("tcp://127.0.0.1:*")
        self.rx = Received(self.pub.endpoint, ("raw", "denoised"))
        assert wait_for(lambda: self.pub.has_subscribers("raw") and self.pub.has_subscribers("denoised"), 5.0)
        self.source = AttachedSource(core, **source)
        config = PipelineConfig(pub_endpoint=self.pub.endpoint)
        self.pipe = Pipeline(self.source, PassthroughEngine(), self.pub, calibration, config)

    def __enter__(self) -> _Attached:
        self.pipe.start()
        assert self.source.attached.wait(5.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipe.close()
        self.rx.close()

    def finish(self) -> dict[str, Any]:
        """Stop, wait for every published message; the status."""
        self.pipe.stop()
        st = self.pipe.status()
        assert wait_for(lambda: self.rx.count("denoised") >= st["frames"]["restored"], 5.0)
        return st


def test_attached_mda_frames_carry_their_event_identity_and_convert_on_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import useq

    from livedenoise.calibration.maps import PhotonConverter

    threads: set[str] = set()
    convert = PhotonConverter.__call__

    def spy(self: Any, raw: np.ndarray, out: Any = None) -> Any:
        threads.add(threading.current_thread().name)
        return convert(self, raw, out)

    monkeypatch.setattr(PhotonConverter, "__call__", spy)
    core, cam = sim_core(64, exposure_ms=2.0)
    seq = useq.MDASequence(
        channels=["GFP", "GFP-low"],
        stage_positions=[(10.0, 20.0, 5.0), (30.0, 40.0, 6.0)],
        time_plan={"interval": 0, "loops": 2},
    )
    with _Attached(core, cam.true_calibration()) as rig:
        core.mda.run(seq)
        assert wait_for(lambda: rig.rx.count("denoised") >= 8)
        st = rig.finish()
    assert_accounted(st)
    assert st["frames"]["acquired"] == 8 and st["dropped"] == 0
    expected = [
        (
            {"t": e.index["t"], "p": e.index["p"], "c": e.index["c"]},
            e.channel.config,
            e.x_pos,
            e.y_pos,
            e.z_pos,
        )
        for e in seq
    ]
    for topic in ("raw", "denoised"):
        got = [
            (h["index"], h["channel"], h["position_um"]["x"], h["position_um"]["y"], h["position_um"]["z"])
            for h, _ in rig.rx.msgs[topic]
        ]
        assert got == expected, topic
    assert threads == {"livedenoise-worker"}  # the MDA thread only copied the frames


def test_attached_pipeline_follows_a_live_mode_already_running_and_popping() -> None:
    from _pipeline_helpers import OtherProgram

    core, cam = sim_core(64, exposure_ms=4.0)
    other = OtherProgram(core, burst=8).start()  # live mode, popping in bursts, before the attach
    assert wait_for(lambda: len(other.popped) >= 16)
    with _Attached(core, cam.true_calibration(), poll_interval_ms=0.5) as rig:
        other.attached = rig.source.attached
        assert wait_for(lambda: rig.rx.count("denoised") >= 40), rig.pipe.status()
        other.stop()
        described = rig.source.describe()
        assert wait_for(lambda: rig.pipe.status()["frames"]["acquired"] >= described["seen"])
        st = rig.finish()
    assert_accounted(st)
    seen, not_seen = rig.source.seen, rig.source.not_seen
    assert st["frames"]["acquired"] == seen + not_seen and not_seen == 0
    assert st["frames"]["restored"] == rig.rx.count("denoised") and st["frames"]["restored"] > 0
    assert set(st["drops"]) <= {"ring-full"}  # a loaded machine may fall behind: counted, never lost
    frames = [h["frame"] for h, _ in rig.rx.msgs["denoised"]]
    assert frames == sorted(set(frames)) and frames[-1] < seen


def test_stop_is_bounded_with_a_slow_engine_and_counts_what_is_left() -> None:
    core, cam = sim_core(64, exposure_ms=2.0)
    engine = SlowEngine(delay_s=1.0)  # 8 frames in the ring would take 8 s to restore
    with Rig(core, engine, cam.true_calibration(), ring_slots=8, drain_timeout_s=0.5) as rig:
        assert wait_for(lambda: rig.pipe.status()["frames"]["pending"] >= 8 and engine.calls >= 1)
        t0 = time.monotonic()
        rig.pipe.stop()
        elapsed = time.monotonic() - t0
        st = rig.pipe.status()
        rig.settle("denoised", st["frames"]["restored"])
    # drain 0.5 s + the engine call in flight, with slack for a loaded machine (unbounded: 8 s and more)
    assert elapsed < 6.0, f"stop took {elapsed:.1f} s"
    assert st["state"] == "stopped" and st["drops"]["stopped"] >= 5
    assert set(st["drops"]) <= {"ring-full", "stopped"}
    assert_accounted(st)
    assert livedenoise_threads() == [] and not core.isSequenceRunning()


def test_stop_leaves_a_hung_engine_behind_and_counts_its_frame() -> None:
    release = threading.Event()

    class Hung(SlowEngine):
        def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
            self.calls += 1
            release.wait(60.0)  # an engine call that does not return
            return super().restore(frame_e, out)

    core, cam = sim_core(64, exposure_ms=2.0)
    engine = Hung(delay_s=0.0)
    try:
        with Rig(core, engine, cam.true_calibration(), drain_timeout_s=0.2) as rig:
            assert wait_for(lambda: engine.calls >= 1)
            t0 = time.monotonic()
            rig.pipe.stop(timeout_s=0.5)
            elapsed = time.monotonic() - t0
            st = rig.pipe.status()
        assert elapsed < 5.0, f"stop took {elapsed:.1f} s"  # not the 60 s the engine call hangs
        assert st["state"] == "stopped" and st["frames"]["restored"] == 0
        assert_accounted(st)  # the frame in the engine and those in the ring: stopped
        assert "livedenoise-worker" in livedenoise_threads() and not engine.closed
    finally:
        release.set()
    assert wait_for(lambda: livedenoise_threads() == [])  # once the call returns, the worker ends
    assert_accounted(rig.pipe.status())  # and counts nothing twice
    assert wait_for(lambda: engine.closed)  # and closes what close() left to it


def test_stop_leaves_no_threads_and_is_idempotent() -> None:
    core, cam = sim_core(64, exposure_ms=3.0)
    rig = Rig(core, PassthroughEngine(), cam.true_calibration())
    with rig:
        assert wait_for(lambda: rig.rx.count("denoised") >= 2)
        assert len(livedenoise_threads()) >= 2
    rig.pipe.stop()
    assert livedenoise_threads() == [] and not core.isSequenceRunning()
    assert rig.pipe.status()["state"] == "stopped"


def test_a_stopped_pipeline_starts_again() -> None:
    core, cam = sim_core(64, exposure_ms=3.0)
    with Rig(core, PassthroughEngine(), cam.true_calibration()) as rig:
        assert wait_for(lambda: rig.rx.count("denoised") >= 3)
        rig.pipe.stop()
        n = rig.pipe.status()["frames"]["restored"]
        rig.pipe.start()
        assert wait_for(lambda: rig.rx.count("denoised") >= n + 3)
    frames = [h["frame"] for h, _ in rig.rx.msgs["denoised"]]
    assert frames == list(range(len(frames))) and rig.pipe.status()["dropped"] == 0
    assert_accounted(rig.pipe.status())


def test_calibration_that_does_not_cover_the_roi_is_refused() -> None:
    from livedenoise.calibration.maps import CalibrationError

    core, _ = sim_core(64, exposure_ms=3.0)
    small = Calibration.uniform((32, 32), offset_adu=100, gain_adu_per_e=2.0, source="file")
    rig = Rig(core, PassthroughEngine(), small)
    try:
        with pytest.raises(
            CalibrationError, match=r"calibration is 32×32 .* camera ROI is 64×64 at \(0, 0\)"
        ):
            rig.pipe.start()
        assert rig.pipe.status()["state"] == "stopped"
    finally:
        rig.__exit__()
    assert livedenoise_threads() == [] and not core.isSequenceRunning()


def test_roi_moving_outside_the_calibration_fails_with_a_clear_message() -> None:
    core, _ = sim_core(64, exposure_ms=3.0)
    core.setROI(0, 0, 32, 32)
    cal = Calibration.uniform((48, 64), offset_adu=100, gain_adu_per_e=2.0, source="file")  # 64 wide, 48 high
    with Rig(core, PassthroughEngine(), cal) as rig:
        assert wait_for(lambda: rig.rx.count("denoised") >= 3)
        core.setROI(0, 32, 32, 32)  # rows 32..63: the maps end at row 47
        assert rig.pipe.wait(10.0)
        rig.pipe.stop()
        rig.settle("denoised", rig.pipe.status()["frames"]["restored"])
    st = rig.pipe.status()
    assert st["state"] == "failed" and "camera ROI is 32×32 at (0, 32)" in st["failure"]
    # the first frame of the new ROI is refused; those the camera gave after it are counted as stopped
    assert st["drops"]["bad-frame"] == 1 and set(st["drops"]) <= {"bad-frame", "stopped"}
    assert_accounted(st)
    restored = [h["frame"] for h, _ in rig.rx.msgs["denoised"]]
    assert restored == list(range(st["frames"]["restored"]))  # every frame before the bad one
    assert livedenoise_threads() == []


def test_config_validation_and_toml(tmp_path: Any) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[pipeline]\nring_slots = 16\nring_policy = "block"\nengine = "passthrough"\n')
    cfg = PipelineConfig.from_toml(path)
    assert (cfg.ring_slots, cfg.ring_policy, cfg.engine) == (16, "block", "passthrough")
    path.write_text("ring_slots = 1\n")
    with pytest.raises(
        ConfigError, match=r"ring_slots = 1 is out of range: expected an integer in \[2, 4096\]"
    ):
        PipelineConfig.from_toml(path)
    path.write_text("ring_slot = 4\n")
    with pytest.raises(ConfigError, match="unknown key.*ring_slot.*known keys"):
        PipelineConfig.from_toml(path)
    with pytest.raises(ConfigError, match="not a loopback address.*allow_remote"):
        PipelineConfig(pub_endpoint="tcp://0.0.0.0:5555")
    with pytest.raises(ConfigError, match="nominal_gain_adu_per_e"):
        PipelineConfig(no_calibration=True)
    with pytest.raises(ConfigError, match="ring_policy = 'newest'"):
        PipelineConfig(ring_policy="newest")
    with pytest.raises(ConfigError, match="stats_interval_s = 0"):
        PipelineConfig(stats_interval_s=0)


def test_config_folders_for_control_requests(tmp_path: Any) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "m").mkdir()
    path = tmp_path / "p.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\nmodel_dirs = ["{tmp_path / "m"}"]\n')
    cfg = PipelineConfig.from_toml(path)
    assert cfg.data_dir == str((tmp_path / "data").resolve()) and cfg.model_dirs == (
        str((tmp_path / "m").resolve()),
    )
    assert cfg.as_dict()["model_dirs"] == cfg.model_dirs
    with pytest.raises(ConfigError, match="data_dir = .* is not an existing folder"):
        PipelineConfig(data_dir=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="model_dirs = .*expected a list of folders"):
        PipelineConfig(model_dirs=str(tmp_path / "m"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model_dirs = .* is not an existing folder"):
        PipelineConfig(model_dirs=(str(tmp_path / "nope"),))


def test_set_model_is_confined_and_a_model_that_gives_nan_is_refused(tmp_path) -> None:
    import torch

    from livedenoise.inference.engines.torch_cpu import TorchCPUEngine
    from livedenoise.inference.modelio import ModelCard, save_model
    from livedenoise.inference.nets import build_network

    folder = tmp_path / "models"
    folder.mkdir()
    torch.manual_seed(0)
    save_model(build_network("rln"), ModelCard(id="good", architecture="rln"), folder / "good.pt")
    bad = build_network("rln")
    with torch.no_grad():
        bad.merge[1][1].running_var.fill_(-1.0)  # finite weights, NaN output
    save_model(bad, ModelCard(id="nan", architecture="rln"), folder / "nan.pt")
    outside = tmp_path / "outside.pt"
    outside.write_bytes((folder / "good.pt").read_bytes())

    core, cam = sim_core(64, exposure_ms=3.0)
    engine = TorchCPUEngine(str(folder / "good.pt"), precision="fp32")
    with Rig(core, engine, cam.true_calibration(), model_dirs=(str(folder),)) as rig:
        server = serve_control(rig.pipe, "tcp://127.0.0.1:*")
        assert wait_for(lambda: rig.rx.count("denoised") >= 3)

        def set_model(model: Any) -> dict[str, Any]:
            return request(server.endpoint, {"cmd": "set_model", "model": model}, timeout_s=60)

        nan = set_model("nan")
        assert nan["ok"] is False and "NaN or Inf" in nan["error"]
        for model, match in [
            (str(outside), "outside the allowed folder"),
            (str(tmp_path / "absent.pt"), "outside the allowed folder"),
            ("../outside.pt", "outside the allowed folder"),
            ("good\x00.pt", "NUL byte"),
        ]:
            reply = set_model(model)
            assert reply["ok"] is False and match in reply["error"], (model, reply)
        # the running model stays, and frames are still restored with it
        n = rig.rx.count("denoised")
        assert wait_for(lambda: rig.rx.count("denoised") >= n + 5)
        st = request(server.endpoint, {"cmd": "status"})
        assert st["state"] == "running" and st["model"] == "good" and "engine-error" not in st["drops"]
        assert rig.rx.msgs["denoised"][-1][0]["model"] == "good"
        assert set_model("good")["ok"] is True  # an id inside a model folder loads
        assert set_model(str(folder / "good.json"))["ok"] is True  # and so does a path inside it
