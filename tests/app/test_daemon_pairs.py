"""A running daemon collects a paired dataset on command and resumes streaming."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from livedenoise.transport.client import request
from livedenoise.transport.subscriber import Subscriber


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_daemon(endpoint: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        try:
            if request(endpoint, {"cmd": "status"}, timeout_s=1.0).get("state") == "running":
                return
        except TimeoutError:
            pass
    raise AssertionError(f"the daemon did not start within {timeout_s} s")


def test_collect_pairs_job_over_the_control_socket(tmp_path: Path) -> None:
    pub, ctl = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "livedenoise",
            "demo",
            "--seconds",
            "60",
            "--size",
            "64",
            "--engine",
            "passthrough",
            "--pub",
            pub,
            "--control",
            ctl,
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_daemon(ctl, proc)
        bad = request(
            ctl,
            {"cmd": "collect_pairs", "short_ms": 50, "long_ms": 5, "pairs": 2, "output": str(tmp_path / "x")},
        )
        assert bad["ok"] is False and "shorter" in bad["error"]
        assert request(ctl, {"cmd": "status"})["state"] == "running"  # still alive

        out = tmp_path / "pairs"
        reply = request(
            ctl, {"cmd": "collect_pairs", "short_ms": 5, "long_ms": 50, "pairs": 3, "output": str(out)}
        )
        assert reply["ok"] is True, reply
        deadline = time.monotonic() + 60
        while True:
            job = request(ctl, {"cmd": "job", "id": reply["id"]})
            if job["state"] in ("done", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert job["state"] == "done", job
        index = json.loads((out / "pairs.json").read_text())
        assert len(index["pairs"]) == 3

        # the stream is back: raw and denoised frames arrive again, with their numbers growing
        sub = Subscriber(pub, topics=("raw", "denoised"), rcvhwm=100)
        try:
            got = [m for m in (sub.recv(5.0) for _ in range(6)) if m is not None]
        finally:
            sub.close()
        assert {m.topic for m in got} == {"raw", "denoised"}
        assert request(ctl, {"cmd": "status"})["state"] == "running"
        assert request(ctl, {"cmd": "stop"})["ok"] is True
        proc.wait(timeout=30)
        assert proc.returncode == 0, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
