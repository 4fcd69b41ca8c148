"""Control commands of a running pipeline on a real core: set_model, set, and queued jobs."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest
from _pipeline_helpers import assert_accounted, livedenoise_threads, sim_core, wait_for

from livedenoise.app.daemon import serve_control
from livedenoise.cli import main
from livedenoise.inference.engines import PassthroughEngine, make_engine
from livedenoise.inference.modelio import DEFAULT_MODEL
from livedenoise.live.config import PipelineConfig
from livedenoise.live.pipeline import Pipeline
from livedenoise.live.sources import CoreSource
from livedenoise.transport.client import request


class _Sink:
    """An in-process FrameSink that keeps the headers of what it is given."""

    endpoint = None

    def __init__(self) -> None:
        self.headers: dict[str, list[dict[str, Any]]] = {"raw": [], "denoised": [], "truth": []}
        self.lock = threading.Lock()

    def publish(self, topic: str, array: np.ndarray, **header: Any) -> None:
        with self.lock:
            self.headers[topic].append({**header, "shape": array.shape})

    def borrow(self, topic: str, shape: tuple[int, ...], dtype: Any) -> None:
        return None

    def give_back(self, topic: str, array: np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.headers[topic])


def _pipeline(exposure_ms: float = 20.0, size: int = 64, **config: Any) -> tuple[Pipeline, Any, _Sink]:
    core, cam = sim_core(size, exposure_ms=exposure_ms)
    sink = _Sink()
    pipe = Pipeline(
        CoreSource(core), make_engine("cpu"), sink, cam.true_calibration(), PipelineConfig(**config)
    )
    return pipe, core, sink


def test_set_model_prepares_off_the_worker_and_swaps_between_frames() -> None:
    pipe, _, sink = _pipeline(ring_policy="block")  # block: a slow swap would show as a stall
    pipe.start()
    server = serve_control(pipe, "tcp://127.0.0.1:*")
    try:
        assert wait_for(lambda: sink.count("denoised") >= 3)
        before = pipe.engine
        n0 = sink.count("denoised")
        t0 = time.monotonic()
        reply = request(server.endpoint, {"cmd": "set_model", "model": "rln-denoise-v1"}, timeout_s=60)
        took = time.monotonic() - t0
        assert reply["ok"], reply
        assert reply["model"] == "rln-denoise-v1" and reply["engine"]["in_use"] is True
        assert pipe.engine is not before and pipe.engine.model_id == "rln-denoise-v1"
        assert reply["engine"]["precision"] in ("fp32", "bf16")  # the precision validation ran
        # the worker kept restoring with the old model while the new one was prepared
        restored_meanwhile = sink.count("denoised") - n0
        assert restored_meanwhile >= min(2, int(took / 0.05)), (restored_meanwhile, took)
        assert wait_for(lambda: sink.headers["denoised"][-1]["model"] == "rln-denoise-v1")
        pipe.stop()
    finally:
        pipe.close()
    models = [h["model"] for h in sink.headers["denoised"]]
    k = models.index("rln-denoise-v1")
    assert set(models[:k]) == {DEFAULT_MODEL} and set(models[k:]) == {"rln-denoise-v1"}
    frames = [h["frame"] for h in sink.headers["denoised"]]
    st = pipe.status()
    assert frames == list(range(st["frames"]["acquired"])) and st["dropped"] == 0  # none lost
    assert_accounted(st)
    assert livedenoise_threads() == []


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"cmd": "set_model"}, 'needs "model"'),
        ({"cmd": "set_model", "model": None}, 'needs "model"'),
        ({"cmd": "set_model", "model": ""}, "must be a model id"),
        ({"cmd": "set_model", "model": "no-such-model"}, "no-such-model"),
    ],
)
def test_set_model_refuses_a_request_without_a_usable_model(request_: dict[str, Any], error: str) -> None:
    pipe, _, sink = _pipeline()
    pipe.start()
    server = serve_control(pipe, "tcp://127.0.0.1:*")
    try:
        assert wait_for(lambda: sink.count("denoised") >= 1)
        engine = pipe.engine
        reply = request(server.endpoint, request_, timeout_s=30)
        assert not reply["ok"] and error in reply["error"], reply
        assert pipe.engine is engine and pipe.running  # nothing changed
    finally:
        pipe.close()


def test_set_changes_exposure_binning_and_roi_between_frames() -> None:
    pipe, core, sink = _pipeline(exposure_ms=5.0, size=128)
    pipe.engine = PassthroughEngine()
    pipe.start()
    server = serve_control(pipe, "tcp://127.0.0.1:*")
    try:
        assert wait_for(lambda: sink.count("denoised") >= 3)
        reply = request(
            server.endpoint,
            {"cmd": "set", "binning": 2, "roi": [8, 4, 32, 24], "exposure_ms": 7.5},
            timeout_s=20,
        )
        assert reply["ok"], reply
        assert reply["roi"] == [8, 4, 32, 24, 2] and reply["exposure_ms"] == 7.5
        assert wait_for(lambda: sink.headers["denoised"][-1]["exposure_ms"] == 7.5)
        reply = request(server.endpoint, {"cmd": "set", "roi": [0, 0, 16, 16]}, timeout_s=20)  # ROI only
        assert reply["ok"] and reply["roi"] == [0, 0, 16, 16, 2], reply
        n = sink.count("denoised")
        assert wait_for(lambda: sink.count("denoised") >= n + 3)
        assert pipe.status()["roi"] == [0, 0, 16, 16, 2]
        pipe.stop()
    finally:
        pipe.close()
    st = pipe.status()
    assert_accounted(st)
    assert st["dropped"] == 0  # the stream paused between two frames: nothing lost
    heads = sink.headers["denoised"]
    assert [h["frame"] for h in heads] == list(range(st["frames"]["acquired"]))
    shapes = [h["shape"] for h in heads]
    assert sorted(set(shapes)) == [(16, 16), (24, 32), (128, 128)]
    assert shapes == sorted(shapes, key=[(128, 128), (24, 32), (16, 16)].index)  # in that order
    assert {h["exposure_ms"] for h in heads} == {5.0, 7.5}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({}, "at least one of"),
        ({"exposure_ms": -1}, "exposure_ms must be a number"),
        ({"exposure_ms": "fast"}, "exposure_ms must be a number"),
        ({"binning": 3}, "cannot bin 3: its Binning values are 1, 2, 4"),
        ({"binning": 1.5}, "binning must be an integer"),
        ({"roi": [0, 0, 10]}, "roi must be [x, y, width, height]"),
        ({"roi": [0, 0, 100, 100]}, "does not fit the 64×64 sensor"),
        ({"roi": [0, 40, 16, 16]}, "calibration is 64×48"),  # rows 40..55: the maps end at row 47
        ({"gain": 2}, "unknown argument(s) gain"),
    ],
)
def test_set_refuses_what_the_camera_or_the_calibration_cannot_do(args: dict[str, Any], error: str) -> None:
    from livedenoise.calibration.maps import Calibration

    core, _ = sim_core(64, exposure_ms=5.0)
    core.setROI(0, 0, 32, 32)
    sink = _Sink()
    cal = Calibration.uniform((48, 64), offset_adu=100, gain_adu_per_e=2.0, source="file")
    pipe = Pipeline(CoreSource(core), PassthroughEngine(), sink, cal, PipelineConfig())
    pipe.start()
    server = serve_control(pipe, "tcp://127.0.0.1:*")
    try:
        assert wait_for(lambda: sink.count("denoised") >= 2)
        reply = request(server.endpoint, {"cmd": "set", **args}, timeout_s=20)
        assert not reply["ok"] and error in reply["error"], reply
        assert pipe.state == "running" and pipe.status()["roi"] == [0, 0, 32, 32, 1]
        assert core.getROI() == [0, 0, 32, 32] and core.getExposure() == 5.0  # put back
        n = sink.count("denoised")
        assert wait_for(lambda: sink.count("denoised") >= n + 2)  # the stream goes on
    finally:
        pipe.close()
    assert_accounted(pipe.status())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _SlowToPrepare(PassthroughEngine):
    """Passthrough whose preparation takes a while (as a real engine's does at 2048²)."""

    def __init__(self, prepare_s: float) -> None:
        super().__init__()
        self.prepare_s = prepare_s
        self.preparing = threading.Event()

    def prepare(self, shape: tuple[int, int]) -> None:
        self.preparing.set()
        time.sleep(self.prepare_s)
        super().prepare(shape)


def test_collect_pairs_sent_during_the_start_up_waits_for_the_stream(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from livedenoise.app.daemon import run_live

    core, cam = sim_core(64, exposure_ms=5.0)
    ctl = f"tcp://127.0.0.1:{_free_port()}"
    config = PipelineConfig(
        pub_endpoint=f"tcp://127.0.0.1:{_free_port()}", control_endpoint=ctl, data_dir=str(tmp_path)
    )
    engine = _SlowToPrepare(prepare_s=3.0)
    out = io.StringIO()
    rc: list[int] = []
    daemon = threading.Thread(
        target=lambda: rc.append(
            run_live(CoreSource(core), engine, cam.true_calibration(), config, seconds=120, out=out)
        )
    )
    daemon.start()
    try:
        assert engine.preparing.wait(30)
        status = request(ctl, {"cmd": "status"})
        assert status["state"] == "starting", status  # the control socket answers before the stream runs
        dataset = tmp_path / "pairs"
        # from the shell: `livedenoise ctl collect-pairs ... --wait`
        args = [
            "--short-ms",
            "5",
            "--long-ms",
            "20",
            "--pairs",
            "2",
            "-o",
            "pairs",
            "--wait",
        ]  # in --data-dir
        assert main(["ctl", "--control", ctl, "collect-pairs", *args]) == 0
        printed = capsys.readouterr().out
        assert "job-1: running" in printed and "waiting for the stream to start" in printed, printed
        assert printed.rstrip().splitlines()[-1].startswith("job-1: done")
        assert len(json.loads((dataset / "pairs.json").read_text())["pairs"]) == 2
        n = request(ctl, {"cmd": "status"})["frames"]["restored"]
        assert wait_for(lambda: request(ctl, {"cmd": "status"})["frames"]["restored"] > n)  # streaming again
        assert main(["ctl", "--control", ctl, "job", "job-1"]) == 0
        assert capsys.readouterr().out.startswith("job-1: done")
        assert main(["ctl", "--control", ctl, "stop"]) == 0
    finally:
        daemon.join(60)
    assert rc == [0], out.getvalue()[-2000:]
    assert "state: stopped" in out.getvalue()


def test_ctl_status_set_model_set_and_stop_from_the_shell(capsys: pytest.CaptureFixture[str]) -> None:
    pipe, _, sink = _pipeline(exposure_ms=5.0)
    pipe.engine = PassthroughEngine()
    pipe.start()
    server = serve_control(pipe, "tcp://127.0.0.1:*")
    ctl = ["ctl", "--control", server.endpoint]
    try:
        assert wait_for(lambda: sink.count("denoised") >= 2)
        assert main([*ctl, "status"]) == 0
        out = capsys.readouterr().out
        assert "state: running" in out and "ROI [x, y, w, h, binning]: [0, 0, 64, 64, 1]" in out
        assert "frames: acquired" in out and "endpoints:" in out
        assert "trust score:" in out and "follows the noise" in out  # passthrough: nothing restored
        assert main([*ctl, "--json", "status"]) == 0
        assert json.loads(capsys.readouterr().out)["state"] == "running"
        assert main([*ctl, "set", "--roi", "0,0,32,16", "--exposure-ms", "6"]) == 0
        assert "camera ROI [0, 0, 32, 16, 1]" in capsys.readouterr().out
        assert main([*ctl, "set-model", "no-such-model"]) == 1
        assert "refused" in capsys.readouterr().err
        assert main([*ctl, "job", "job-9"]) == 1  # no jobs here: the daemon says what it knows
        assert main([*ctl, "set"]) == 2  # nothing to set: a usage error, nothing sent
        assert main([*ctl, "stop"]) == 0 and "stopping" in capsys.readouterr().out
        assert pipe.wait(10.0)
    finally:
        pipe.close()
    assert_accounted(pipe.status())
    assert main(["ctl", "--control", server.endpoint, "--timeout", "0.5", "status"]) == 2
    assert "no livedenoise daemon answered" in capsys.readouterr().err


def test_an_engine_that_cannot_keep_up_is_said_once_early_with_what_to_do(caplog) -> None:
    import io

    from _pipeline_helpers import SlowEngine

    from livedenoise.app.daemon import run_live

    core, cam = sim_core(64, exposure_ms=5.0)  # 200 frames/s into a 20 frames/s engine
    config = PipelineConfig(
        pub_endpoint=f"tcp://127.0.0.1:{_free_port()}",
        control_endpoint=f"tcp://127.0.0.1:{_free_port()}",
        stats_interval_s=0.2,
    )
    out = io.StringIO()
    rc = run_live(
        CoreSource(core), SlowEngine(delay_s=0.05), cam.true_calibration(), config, seconds=3, out=out
    )
    text = out.getvalue()
    assert rc == 0, text[-2000:]
    warnings = [ln for ln in text.splitlines() if "cannot keep up" in ln]
    assert len(warnings) == 1, text[-3000:]
    assert "--roi" in warnings[0] and "faster model" in warnings[0] and "GPU" in warnings[0]
    lines = text.splitlines()
    assert lines.index(warnings[0]) <= 12  # early: within the first statistics lines
    # once in all: not repeated by a log record (stderr) beside the line (stdout)
    assert not [r for r in caplog.records if "cannot keep up" in r.getMessage()]


def test_an_engine_that_keeps_up_is_not_warned_about() -> None:
    import io

    from livedenoise.app.daemon import run_live

    core, cam = sim_core(64, exposure_ms=20.0)
    config = PipelineConfig(
        pub_endpoint=f"tcp://127.0.0.1:{_free_port()}",
        control_endpoint=f"tcp://127.0.0.1:{_free_port()}",
        stats_interval_s=0.2,
    )
    out = io.StringIO()
    assert (
        run_live(CoreSource(core), PassthroughEngine(), cam.true_calibration(), config, seconds=2, out=out)
        == 0
    )
    assert "cannot keep up" not in out.getvalue()


def test_attach_restores_another_programs_mda_and_answers_the_control_socket() -> None:
    import useq

    from livedenoise.app.daemon import attach
    from livedenoise.transport.subscriber import Subscriber

    core, cam = sim_core(64, exposure_ms=2.0)
    config = PipelineConfig(
        pub_endpoint=f"tcp://127.0.0.1:{_free_port()}", control_endpoint=f"tcp://127.0.0.1:{_free_port()}"
    )
    sub = Subscriber(config.pub_endpoint, ("denoised",), rcvhwm=100)
    pipe = attach(core, cam.true_calibration(), engine="passthrough", config=config)
    try:
        assert wait_for(lambda: pipe.source.attached.is_set())
        got: list[dict[str, Any]] = []
        # the subscriber's connection is up once a first frame arrives; then the program's MDA
        for _ in range(60):
            core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": 1}))
            m = sub.recv(timeout_s=1.0)
            if m is not None:
                got.append(m.header)
                break
        assert got, "the subscriber never received a frame"
        core.mda.run(useq.MDASequence(channels=["GFP"], time_plan={"interval": 0, "loops": 5}))
        while len(got) < 6:
            m = sub.recv(timeout_s=5.0)
            assert m is not None, pipe.status()
            got.append(m.header)
        assert [h["index"]["t"] for h in got[-5:]] == list(range(5)) and got[-1]["channel"] == "GFP"
        st = request(config.control_endpoint, {"cmd": "status"})
        assert st["ok"] and st["source"]["kind"] == "attached"
        refused = request(config.control_endpoint, {"cmd": "set", "exposure_ms": 5})
        assert not refused["ok"] and "attached" in refused["error"]
    finally:
        pipe.close()
        sub.close()
    assert_accounted(pipe.status())
    assert "popNextImageMD" not in vars(core)  # detached: the core is as it was
    assert livedenoise_threads() == []
