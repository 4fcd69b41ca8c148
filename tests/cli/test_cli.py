"""The demo, serve and bench commands: help texts, real runs, clear refusals."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from livedenoise.cli import main
from livedenoise.inference.modelio import DEFAULT_MODEL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_summary_accounted(out: str) -> None:
    """The run's summary: acquired == restored + dropped, and the drops by reason add up."""
    import re

    frames = re.search(r"frames: acquired (\d+), restored (\d+), published (\d+)", out)
    dropped = re.search(r"dropped: (\d+)(?: (\{.*\}))?", out)
    assert frames and dropped, out[-2000:]
    acquired, restored = int(frames.group(1)), int(frames.group(2))
    total = int(dropped.group(1))
    by_reason = json.loads(dropped.group(2).replace("'", '"')) if dropped.group(2) else {}
    assert sum(by_reason.values()) == total and acquired == restored + total, (
        frames.group(0),
        dropped.group(0),
    )


@pytest.mark.parametrize("command", ["demo", "serve", "bench", "ctl"])
def test_help(command: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"livedenoise {command}" in out and "Example" in out


def test_demo_runs_for_three_seconds_and_summarises() -> None:
    pub, control = _free_port(), _free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "livedenoise",
            "demo",
            "--seconds",
            "3",
            "--size",
            "128",
            "--pub",
            f"tcp://127.0.0.1:{pub}",
            "--control",
            f"tcp://127.0.0.1:{control}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"publishing on tcp://127.0.0.1:{pub}" in out
    assert out.count("fps acq") >= 2  # live statistics once a second
    assert "state: stopped" in out and "| end_to_end |" in out
    assert "PSNR vs truth" in out
    assert "frames: acquired" in out
    _assert_summary_accounted(out)


def test_serve_on_the_simulator_config_uses_its_maps_and_stops(tmp_path: Path, capsys: Any) -> None:
    from livedenoise.drivers import config_path

    cfg = tmp_path / "small-sim.cfg"  # the shipped config with a small sensor (fast to build)
    text = config_path("simcam.cfg").read_text()
    cfg.write_text(
        text.replace("SensorWidth,2048", "SensorWidth,128").replace("SensorHeight,2048", "SensorHeight,96")
    )
    rc = main(
        [
            "serve",
            "--config",
            str(cfg),
            "--engine",
            "passthrough",
            "--seconds",
            "1.5",
            "--pub",
            f"tcp://127.0.0.1:{_free_port()}",
            "--control",
            f"tcp://127.0.0.1:{_free_port()}",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "simulated camera: using its true calibration" in out and "state: stopped" in out
    _assert_summary_accounted(out)


def test_serve_exits_cleanly_and_bounded_when_the_engine_hangs(tmp_path: Path) -> None:
    """The program itself (no argv), an engine call that never returns: a clean exit, every frame counted."""
    from livedenoise.drivers import config_path

    cfg = tmp_path / "small-sim.cfg"
    text = config_path("simcam.cfg").read_text()
    cfg.write_text(
        text.replace("SensorWidth,2048", "SensorWidth,64").replace("SensorHeight,2048", "SensorHeight,64")
    )
    settings = tmp_path / "pipeline.toml"
    settings.write_text("drain_timeout_s = 0.5\n")
    argv = [
        "livedenoise",
        "serve",
        "--config",
        str(cfg),
        "--settings",
        str(settings),
        "--seconds",
        "1.5",
        "--pub",
        f"tcp://127.0.0.1:{_free_port()}",
        "--control",
        f"tcp://127.0.0.1:{_free_port()}",
    ]
    script = f"""
import sys, threading
import livedenoise.cli.serve as serve
from livedenoise.inference.engines import PassthroughEngine

class Hung(PassthroughEngine):
    def restore(self, frame_e, out):
        threading.Event().wait(3600)  # never returns

serve.start_live_engine = lambda *a, **k: Hung()
sys.argv = {argv!r}
from livedenoise.cli import main
raise SystemExit(main())
"""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    took = time.monotonic() - t0
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert "terminate called" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "still busy" in proc.stderr  # said, not hidden
    assert "state: stopped" in proc.stdout
    _assert_summary_accounted(proc.stdout)
    assert took < 120, took


def test_demo_refuses_a_calibration_of_another_sensor_size(tmp_path: Path, capsys: Any) -> None:
    import numpy as np

    from livedenoise.calibration.maps import Calibration, write_calibration

    maps = [np.full((1024, 1024), v, np.float32) for v in (100.0, 2.0, 1.0)]
    cal = write_calibration(tmp_path / "big.tif", Calibration(*maps))
    rc = main(
        [
            "demo",
            "--seconds",
            "1",
            "--size",
            "64",
            "--engine",
            "passthrough",
            "--calibration",
            str(cal),
            "--pub",
            f"tcp://127.0.0.1:{_free_port()}",
            "--control",
            f"tcp://127.0.0.1:{_free_port()}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "calibration maps are 1024×1024 but the sensor of camera 'Camera' is 512×512" in err


def _replay_cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "replay.cfg"
    cfg.write_text(
        "Property,Core,Initialize,0\n"
        "#py pyDevice,Camera,livedenoise.drivers.simcam,ReplayCamera\n"
        "Property,Core,Initialize,1\n"
        "#py Property,Core,Camera,Camera\n"
    )
    return cfg


def test_serve_refuses_to_guess_a_calibration(tmp_path: Path, capsys: Any) -> None:
    rc = main(["serve", "--config", str(_replay_cfg(tmp_path)), "--engine", "passthrough"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no calibration for camera 'Camera'" in err and "--calibration CAL.tif" in err
    assert "--no-calibration" in err


def test_serve_no_calibration_needs_the_nominal_values(tmp_path: Path, capsys: Any) -> None:
    rc = main(["serve", "--config", str(_replay_cfg(tmp_path)), "--no-calibration"])
    assert rc == 2
    assert "nominal_gain_adu_per_e" in capsys.readouterr().err


def test_serve_settings_file_errors_name_the_field(tmp_path: Path, capsys: Any) -> None:
    settings = tmp_path / "pipeline.toml"
    settings.write_text("[pipeline]\nring_slots = 1\n")
    rc = main(["serve", "--config", str(_replay_cfg(tmp_path)), "--settings", str(settings)])
    assert rc == 2
    assert "ring_slots = 1 is out of range" in capsys.readouterr().err


def test_serve_missing_config(tmp_path: Path, capsys: Any) -> None:
    rc = main(
        [
            "serve",
            "--config",
            str(tmp_path / "nope.cfg"),
            "--no-calibration",
            "--nominal-gain-adu-per-e",
            "2",
            "--nominal-offset-adu",
            "100",
        ]
    )
    assert rc == 2 and "nope.cfg does not exist" in capsys.readouterr().err


def test_bench_small_run_reports_every_stage(tmp_path: Path, capsys: Any) -> None:
    out_json = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--size",
            "64",
            "--seconds",
            "0.5",
            "--camera-fps",
            "200",
            "--topics",
            "raw,denoised",
            "--json",
            str(out_json),
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "| 64² | passthrough | tcp (raw+denoised) | 200 |" in table and "Machine:" in table
    report = json.loads(out_json.read_text())
    (r,) = report["results"]
    assert r["size"] == 64 and r["acquired"] > 20 and r["received_denoised"] > 0
    # counts start after the warm-up: frames in flight then (at most the 16 ring slots) blur the balance
    assert abs(r["acquired"] - (r["restored"] + r["dropped"])) <= 16
    assert set(r["latency_ms"]) == {"acquire", "convert", "queue", "engine", "publish", "end_to_end"}
    assert report["machine"]["cores"] >= 1


def test_bench_engine_only_times_the_engine_alone(tmp_path: Path, capsys: Any) -> None:
    out_json = tmp_path / "engine.json"
    argv = ["bench", "--engine-only", "--engine", "passthrough", "--engine", "cpu", "--size", "64"]
    rc = main([*argv, "-n", "5", "--json", str(out_json)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| passthrough | None |" in table and f"| cpu | {DEFAULT_MODEL} |" in table and "Machine:" in table
    report = json.loads(out_json.read_text())
    assert [r["engine"]["backend"] for r in report["engine_results"]] == ["passthrough", "cpu"]
    for r in report["engine_results"]:
        assert r["shape"] == [64, 64] and r["n"] == 5 and r["fps"] > 0
        assert r["latency_ms_min"] <= r["latency_ms_p50"] <= r["latency_ms_p99"]


def test_bench_with_the_subscriber_in_its_own_process(tmp_path: Path, capsys: Any) -> None:
    out_json = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--size",
            "64",
            "--seconds",
            "2.5",
            "--camera-fps",
            "50",
            "--subscriber",
            "process",
            "--json",
            str(out_json),
        ]
    )
    assert rc == 0
    assert "| 64² | passthrough | tcp (denoised), subscriber process | 50 |" in capsys.readouterr().out
    (r,) = json.loads(out_json.read_text())["results"]
    assert r["subscriber"] == "process" and r["topics"] == ["denoised"]
    # counted by `livedenoise subscribe` in the other process, from its once-a-second lines
    assert r["received_denoised"] > 0 and r["received_raw"] == 0
    assert 35 < r["fps_received"] < 65
    assert r["subscriber_latency_ms"]["p50"] is not None


def test_bench_says_why_the_subscriber_process_failed(monkeypatch: Any) -> None:
    from livedenoise.app import bench
    from livedenoise.inference.engines import make_engine

    class Failing(bench._SubscriberProcess):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.cmd = [
                sys.executable,
                "-c",
                "import sys; sys.stderr.write('no display here\\n'); sys.exit(3)",
            ]

    monkeypatch.setattr(bench, "_SubscriberProcess", Failing)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with status 3: no display here"):
        bench.bench_pipeline(32, make_engine("passthrough"), seconds=0.5, subscriber="process")
    assert time.monotonic() - t0 < 30  # at once, not after the 60 s connect timeout


def test_bench_rejects_bad_sizes(capsys: Any) -> None:
    assert main(["bench", "--size", "3"]) == 2
    assert "--size must be 16 to 8192" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sig", "sigint_in_child", "said"),
    [
        ("SIGINT", "default_int_handler", "Ctrl-C"),  # Ctrl-C in a terminal
        ("SIGTERM", "SIG_IGN", "SIGTERM"),  # `kill PID` of a daemon started in the background
    ],
)
def test_demo_stops_cleanly_with_a_summary_on_ctrl_c_or_sigterm(
    sig: str, sigint_in_child: str, said: str
) -> None:
    import signal

    pub, control = _free_port(), _free_port()
    # A child of a shell's background job (a CI runner, `nohup`, `... &`) inherits SIGINT ignored,
    # and Python then installs no Ctrl-C handler: the child sets SIGINT's disposition itself, as a
    # terminal (Python's handler) or a background job (ignored) would give it.
    start = (
        f"import runpy, signal, sys; signal.signal(signal.SIGINT, signal.{sigint_in_child}); "
        "sys.argv[0] = 'livedenoise'; runpy.run_module('livedenoise', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            start,
            "demo",
            "--engine",
            "passthrough",
            "--size",
            "64",
            "--exposure-ms",
            "10",
            "--pub",
            f"tcp://127.0.0.1:{pub}",
            "--control",
            f"tcp://127.0.0.1:{control}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # wait for the first line of live statistics
            lines.append(line)
            if "fps acq" in line:
                break
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # reap it here, not in a later test's garbage collection
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert f"stopping ({said})" in out and "state: stopped" in out and "dropped: 0" in out


def test_bench_engine_all_expands_to_the_available_engines(capsys: Any) -> None:
    from livedenoise.cli.bench import _engines
    from livedenoise.inference.engines import available_backends

    present = [name for name, (ok, _) in available_backends().items() if ok]
    assert _engines(["all"]) == tuple(present)
    assert "passthrough" in present and "cpu" in present
    missing = [name for name, (ok, _) in available_backends().items() if not ok]
    err = capsys.readouterr().err
    assert all(f"engine {name} not available here" in err for name in missing)
    assert _engines(["cpu", "cpu", "passthrough"]) == ("cpu", "passthrough")
