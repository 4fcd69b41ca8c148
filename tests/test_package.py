"""The package as a user installs it: light import, namespaced files, every command helps."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from livedenoise.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light() -> None:
    code = (
        "import sys, livedenoise\n"
        "heavy = [m for m in ('torch', 'zmq', 'pymmcore_plus', 'tifffile', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`import livedenoise` imported {out.stdout.strip()}"


def test_public_names_resolve() -> None:
    import livedenoise

    for name in livedenoise.__all__:
        assert getattr(livedenoise, name) is not None, name


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"livedenoise {command}" in text
    assert len(text.splitlines()) > 3


def test_command_modules_stay_light() -> None:
    mods = " ".join(f"livedenoise.cli.{m}" for m in COMMANDS.values())
    code = (
        f"import importlib, sys\n"
        f"for m in '{mods}'.split(): importlib.import_module(m)\n"
        "print(','.join(m for m in ('torch', 'zmq') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"command modules import {out.stdout.strip()} at import time"


@pytest.mark.slow
def test_wheel_installs_only_under_the_livedenoise_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("livedenoise-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert all(t == "livedenoise" or t.startswith("livedenoise-") for t in tops), tops
    assert "livedenoise/drivers/simcam.cfg" in names
    assert any(n.startswith("livedenoise/models/") and n.endswith(".pt") for n in names)
    assert any(n.startswith("livedenoise/drivers/") and n.endswith(".py") for n in names)
