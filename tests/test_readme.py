"""The README's examples run, and CI runs the README's test command."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    bash = _blocks("bash")
    assert bash[0].strip().endswith("livedenoise demo --seconds 30")
    test_cmd = bash[1].strip()
    assert test_cmd.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    install, _, run = test_cmd.partition(" && ")
    assert install in ci and run in ci


def test_no_unfilled_sections() -> None:
    assert "README_" not in README


def test_attach_example_runs() -> None:
    (code,) = [b for b in _blocks("python") if "AttachedSource" in b]
    exec(compile(code, "README.md (attach example)", "exec"), {})


def test_subscriber_example_receives_a_frame(capsys: pytest.CaptureFixture[str]) -> None:
    from livedenoise.transport.publisher import Publisher

    (code,) = [b for b in _blocks("python") if "zmq.SUB" in b]
    pub = Publisher("tcp://127.0.0.1:*")
    stop = threading.Event()

    def feed() -> None:
        frame = 0
        image = np.full((32, 48), 3.5, np.float32)
        while not stop.is_set():
            pub.publish(
                "denoised",
                image,
                frame=frame,
                exposure_ms=10.0,
                t_acquired=time.time(),
                dropped=0,
                camera="Camera",
                model="rln-denoise-v1",
                calibration=None,
            )
            frame += 1
            time.sleep(0.01)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        exec(
            compile(code.replace("tcp://127.0.0.1:5555", pub.endpoint), "README.md (subscriber)", "exec"), {}
        )
    finally:
        stop.set()
        thread.join(5)
        pub.close()
    out = capsys.readouterr().out
    assert re.search(r"frame \d+: 3\.50 photoelectrons \(model rln-denoise-v1\)", out), out


def test_the_model_table_is_written_from_the_cards() -> None:
    """The README's model table is what `python tools/train_shipped.py table` makes of models/*.json."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_shipped", ROOT / "tools" / "train_shipped.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    table = tool.model_table()
    assert f"{tool.TABLE_BEGIN}\n{table}\n{tool.TABLE_END}" in README, (
        "README.md's model table is stale: run `python tools/train_shipped.py table`"
    )
    from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL

    assert f"`{DEFAULT_MODEL}` (live default on the CPU)" in table and f"`{QUALITY_MODEL}` (quality)" in table
