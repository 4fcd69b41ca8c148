"""Daemon jobs: the job manager, and paired acquisition from a running pipeline over the control socket."""

from __future__ import annotations

import threading
import time

import pytest

from livedenoise.acquisition.jobs import JobManager, install_pair_commands
from livedenoise.acquisition.pairs import PairDataset
from livedenoise.app.daemon import control_handlers
from livedenoise.transport.client import request
from livedenoise.transport.control import ControlServer


@pytest.fixture
def jobs():
    jm = JobManager()
    yield jm
    jm.close(timeout_s=10)


def test_job_states(jobs):
    gate = threading.Event()

    def blocked(ctx, n):
        ctx.progress(done=0, total=n)
        gate.wait(10)
        ctx.progress(done=n)
        return {"n": n}

    def broken(ctx):
        raise ValueError("the camera fell off")

    first = jobs.submit("blocked", blocked, n=3)
    second = jobs.submit("broken", broken)
    deadline = time.monotonic() + 5
    while jobs.job(first)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert jobs.job(first)["state"] == "running" and jobs.job(first)["progress"] == {"done": 0, "total": 3}
    assert jobs.job(second)["state"] == "queued"  # one worker: jobs run one at a time
    gate.set()
    done = jobs.wait(first, timeout_s=5)
    assert done["state"] == "done" and done["result"] == {"n": 3} and done["error"] is None
    failed = jobs.wait(second, timeout_s=5)
    assert failed["state"] == "failed" and failed["error"] == "the camera fell off"
    with pytest.raises(KeyError, match="no job 'job-99'"):
        jobs.job("job-99")


def test_close_fails_running_and_queued_jobs():
    jm = JobManager()

    def until_cancelled(ctx):
        if not ctx.cancel.wait(10):
            return {"finished": True}
        raise RuntimeError("the daemon stopped")

    a = jm.submit("wait", until_cancelled)
    b = jm.submit("wait", until_cancelled)
    deadline = time.monotonic() + 5
    while jm.job(a)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    jm.close(timeout_s=5)
    assert jm.job(a)["state"] == "failed" and "daemon stopped" in jm.job(a)["error"]
    assert jm.job(b)["state"] == "failed" and jm.job(b)["error"]
    with pytest.raises(RuntimeError, match="closed"):
        jm.submit("late", until_cancelled)


# -- through the control socket, with the real pipeline on the simulated camera -------------


@pytest.fixture
def daemon(tmp_path):
    from livedenoise.drivers.simcam import load_sim_core
    from livedenoise.inference.engines import PassthroughEngine
    from livedenoise.live.pipeline import Pipeline
    from livedenoise.live.sources import CoreSource
    from livedenoise.transport.publisher import Publisher

    core, camera = load_sim_core(sensor_shape=(64, 64), seed=5)
    core.setProperty("Camera", "Motion", 0.0)
    core.setExposure(10.0)
    publisher = Publisher("tcp://127.0.0.1:*")
    pipe = Pipeline(CoreSource(core), PassthroughEngine(), publisher, camera.true_calibration())
    frames = []
    pipe.events.frameAcquired.connect(lambda frame, t: frames.append(frame))
    server = ControlServer("tcp://127.0.0.1:*", handlers=control_handlers(pipe))
    jm = JobManager()
    install_pair_commands(server, pipe, core, jm, data_dir=tmp_path)
    server.start()
    pipe.start()
    yield pipe, server, jm, core, frames
    jm.close(timeout_s=10)
    server.close()
    pipe.close()
    from _pipeline_helpers import assert_accounted

    assert_accounted(pipe.status())  # the pauses of the jobs lost no frame uncounted


def _wait_job(endpoint, job_id, states=("done", "failed"), timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        reply = request(endpoint, {"cmd": "job", "id": job_id})
        assert reply["ok"], reply
        if reply["state"] in states or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def _wait_frames(frames, more_than, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while len(frames) <= more_than and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(frames) > more_than


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"short_ms": 5, "long_ms": 50, "pairs": 2}, "missing output"),
        ({"long_ms": 50, "pairs": 2, "output": "x"}, "missing short_ms"),
        ({"short_ms": 50, "long_ms": 5, "pairs": 2, "output": "x"}, "must be shorter"),
        ({"short_ms": "5", "long_ms": 50, "pairs": 2, "output": "x"}, "short_ms must be a number"),
        ({"short_ms": 5, "long_ms": 50, "pairs": -1, "output": "x"}, "pairs must be >= 1"),
        ({"short_ms": 5, "long_ms": 50, "pairs": 2, "output": "x", "speed": 3}, "unknown argument"),
        ({"short_ms": 5, "long_ms": 50, "pairs": 2, "output": "nonexistent/dir/ds"}, "does not exist"),
        ({"short_ms": 5, "long_ms": 50, "pairs": 2, "output": "/nonexistent/dir/ds"}, "outside the allowed"),
    ],
)
def test_collect_pairs_bad_requests(daemon, tmp_path, payload, match):
    pipe, server, jm, core, frames = daemon
    reply = request(server.endpoint, {"cmd": "collect_pairs", **payload})
    assert reply["ok"] is False and match in reply["error"]
    assert jm.jobs() == []  # nothing queued
    assert request(server.endpoint, {"cmd": "status"})["state"] == "running"  # the daemon keeps running
    bad = request(server.endpoint, {"cmd": "job", "id": "job-7"})
    assert bad["ok"] is False and "no job" in bad["error"]


def test_collect_pairs_job_pauses_and_resumes_stream(daemon, tmp_path):
    pipe, server, jm, core, frames = daemon
    assert _wait_frames(frames, 3)
    out = tmp_path / "ds"
    reply = request(
        server.endpoint,
        {"cmd": "collect_pairs", "short_ms": 5, "long_ms": 40, "pairs": 3, "output": str(out)},
    )
    t_reply = time.time()
    assert reply["ok"] and reply["id"].startswith("job-") and reply["state"] == "queued"
    final = _wait_job(server.endpoint, reply["id"])
    assert final["state"] == "done", final
    assert final["t_finished"] > t_reply  # answered at once: before the job was done
    assert final["result"]["pairs_written"] == 3 and final["progress"]["pairs_done"] == 3
    assert len(PairDataset(out)) == 3
    assert core.getExposure() == 10.0  # the stream's exposure is back
    n = len(frames)
    assert _wait_frames(frames, n + 3)  # the stream resumed
    assert request(server.endpoint, {"cmd": "status"})["state"] == "running"
    # ...and a subscriber sees it: raw frames at the stream's exposure, after the job
    from livedenoise.transport.subscriber import Subscriber

    with Subscriber(pipe.publisher.endpoint, topics=("raw",)) as sub:
        msgs = [m for m in (sub.recv(timeout_s=5.0) for _ in range(3)) if m is not None]
    assert len(msgs) == 3 and all(m.header["exposure_ms"] == 10.0 for m in msgs)
    assert msgs[0].header["t_acquired"] > final["t_finished"]


def test_daemon_stopped_mid_job(daemon, tmp_path):
    pipe, server, jm, core, frames = daemon
    out = tmp_path / "ds"
    reply = request(
        server.endpoint,
        {"cmd": "collect_pairs", "short_ms": 10, "long_ms": 100, "pairs": 40, "output": str(out)},
    )
    running = _wait_job(server.endpoint, reply["id"], states=("failed", "done"), timeout_s=0.01)
    deadline = time.monotonic() + 20
    while (running.get("progress", {}).get("pairs_done", 0) < 1) and time.monotonic() < deadline:
        time.sleep(0.05)
        running = jm.job(reply["id"])
    assert running["state"] == "running"
    assert request(server.endpoint, {"cmd": "stop"})["ok"]  # the daemon is told to stop
    final = jm.wait(reply["id"], timeout_s=20)
    assert final["state"] == "failed" and "daemon stopped" in final["error"], final
    ds = PairDataset(out)  # valid, with the complete pairs only
    assert 1 <= len(ds) < 40 and ds.stray == []
    assert not core.mda.is_running()


# -- paths in requests stay inside the data folder ------------------------------------------

_PAIR = {"cmd": "collect_pairs", "short_ms": 5, "long_ms": 40, "pairs": 1}


def test_collect_pairs_output_is_confined_to_the_data_dir(daemon, tmp_path):
    pipe, server, jm, core, frames = daemon
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    for output, match in [
        (str(outside / "ds"), "outside the allowed folder"),
        ("../" + outside.name + "/ds", "outside the allowed folder"),
        ("sub/../../" + outside.name, "outside the allowed folder"),
        ("link/ds", "through a symbolic link"),
        ("ds\x00evil", "NUL byte"),
        ("", "empty"),
        (["ds"], "must be a path string"),
    ]:
        reply = request(server.endpoint, {**_PAIR, "output": output})
        assert reply["ok"] is False and match in reply["error"], (output, reply)
    assert jm.jobs() == [] and list(outside.iterdir()) == []  # nothing queued, nothing written outside
    # a relative output is taken inside the data folder (and an absolute one inside it is fine)
    reply = request(server.endpoint, {**_PAIR, "output": "inside"})
    assert reply["ok"], reply
    assert _wait_job(server.endpoint, reply["id"])["state"] == "done"
    assert len(PairDataset(tmp_path / "inside")) == 1
    reply = request(server.endpoint, {**_PAIR, "output": str(tmp_path / "inside")})
    assert _wait_job(server.endpoint, reply["id"])["state"] == "done"
    assert len(PairDataset(tmp_path / "inside")) == 2


def test_collect_pairs_without_a_data_dir_is_refused(tmp_path):
    server = ControlServer("tcp://127.0.0.1:*")
    jm = JobManager()

    class Core:  # never touched: the request is refused first
        pass

    install_pair_commands(server, object(), Core(), jm)
    server.start()
    try:
        reply = request(server.endpoint, {**_PAIR, "output": str(tmp_path / "ds")})
        assert reply["ok"] is False and "--data-dir" in reply["error"]
        assert jm.jobs() == [] and not (tmp_path / "ds").exists()
    finally:
        jm.close(timeout_s=5)
        server.close()


def test_positions_list_file_outside_the_data_dir_is_refused(daemon, tmp_path):
    pipe, server, jm, core, frames = daemon
    outside = tmp_path.parent / f"{tmp_path.name}-secret.txt"
    outside.write_text("TOP-SECRET-LINE\n")
    reply = request(server.endpoint, {**_PAIR, "output": "ds", "positions": f"list {outside}"})
    assert reply["ok"] is False and "outside the allowed folder" in reply["error"]
    assert "TOP-SECRET" not in reply["error"] and jm.jobs() == []


# -- cancel and stop --------------------------------------------------------------------------


def _wait_pairs_done(jm, job_id, n=1, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        j = jm.job(job_id)
        if j["progress"].get("pairs_done", 0) >= n or j["state"] in ("done", "failed"):
            return j
        time.sleep(0.02)
    return jm.job(job_id)


def test_cancel_a_running_collection_keeps_complete_pairs_and_resumes_the_stream(daemon, tmp_path):
    pipe, server, jm, core, frames = daemon
    reply = request(
        server.endpoint,
        {"cmd": "collect_pairs", "short_ms": 10, "long_ms": 100, "pairs": 200, "output": "ds"},
    )
    assert _wait_pairs_done(jm, reply["id"])["state"] == "running"
    t0 = time.monotonic()
    answer = request(server.endpoint, {"cmd": "cancel", "id": reply["id"]})
    assert answer["ok"] and answer["cancelled"] is True and answer["state"] in ("running", "failed")
    final = jm.wait(reply["id"], timeout_s=20)
    assert time.monotonic() - t0 < 5.0
    assert final["state"] == "failed" and final["error"].startswith(
        "cancelled (cancelled by a cancel request)"
    )
    ds = PairDataset(tmp_path / "ds")
    assert 1 <= len(ds) < 200 and ds.stray == []
    assert request(server.endpoint, {"cmd": "status"})["state"] == "running"  # the stream is back
    n = len(frames)
    assert _wait_frames(frames, n + 2)
    bad = request(server.endpoint, {"cmd": "cancel", "id": "job-99"})
    assert bad["ok"] is False and "no job 'job-99'" in bad["error"]
    assert request(server.endpoint, {"cmd": "cancel"})["ok"] is False
    again = request(server.endpoint, {"cmd": "cancel", "id": reply["id"]})  # finished: nothing changes
    assert again["ok"] and again["state"] == "failed"


def test_cancel_a_queued_job_fails_it_without_running(jobs):
    gate = threading.Event()
    a = jobs.submit("block", lambda ctx: gate.wait(10))
    ran = []
    b = jobs.submit("later", lambda ctx: ran.append(1))
    assert jobs.cancel(b)["cancelled"] is True
    gate.set()
    assert jobs.wait(a, 5)["state"] == "done"
    final = jobs.wait(b, 5)
    assert (
        final["state"] == "failed"
        and final["error"] == "cancelled before it started (cancelled by a cancel request)"
    )
    assert ran == []


def test_stop_during_a_collection_with_long_exposures_ends_within_seconds(daemon, tmp_path):
    pipe, server, jm, core, frames = daemon
    reply = request(
        server.endpoint,
        {"cmd": "collect_pairs", "short_ms": 10, "long_ms": 1500, "pairs": 100, "output": "ds"},
    )
    assert _wait_pairs_done(jm, reply["id"])["state"] == "running"
    t0 = time.monotonic()
    assert request(server.endpoint, {"cmd": "stop"})["ok"]
    final = jm.wait(reply["id"], timeout_s=30)
    took = time.monotonic() - t0
    assert final["state"] == "failed" and "daemon stopped" in final["error"], final
    assert took < 6.0, f"the collection took {took:.1f} s to stop"  # at most the exposure in flight + restore
    ds = PairDataset(tmp_path / "ds")
    assert 1 <= len(ds) < 100 and ds.stray == []
    assert not core.mda.is_running()
