"""Loading a lab's Micro-Manager configuration: what a newcomer sees when adapters are missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from livedenoise.acquisition.core import CoreError, device_adapters, load_core
from livedenoise.cli import main
from livedenoise.drivers import DRIVERS_DIR

ORCA = DRIVERS_DIR / "example_hamamatsu_orca.cfg"


def test_the_adapters_a_configuration_needs_are_read_from_its_device_lines() -> None:
    assert device_adapters(ORCA.read_text()) == [
        "HamamatsuHam",
        "SerialManager",
        "Arduino",
        "LumencorSpectra",
    ]
    assert device_adapters((DRIVERS_DIR / "simcam.cfg").read_text()) == []  # Python devices only


def test_no_micromanager_installation_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pymmcore_plus

    monkeypatch.setattr(pymmcore_plus, "find_micromanager", lambda *a, **k: None)
    with pytest.raises(CoreError) as err:
        load_core(ORCA)
    msg = str(err.value)
    assert (
        "\n" not in msg and "HamamatsuHam" in msg and "MICROMANAGER_PATH" in msg and "mmcore install" in msg
    )


def test_missing_adapters_in_an_installation_are_named_with_what_provides_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "libmmgr_dal_SerialManager.so.0").touch()
    monkeypatch.setenv("MICROMANAGER_PATH", str(tmp_path))
    with pytest.raises(CoreError) as err:
        load_core(ORCA)
    msg = str(err.value)
    assert "\n" not in msg
    assert "HamamatsuHam, Arduino, LumencorSpectra" in msg and str(tmp_path) in msg
    assert "SerialManager," not in msg and "DCAM-API" in msg


def test_serve_with_missing_adapters_prints_one_clean_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for lib in ("SerialManager", "Arduino", "LumencorSpectra"):
        (tmp_path / f"libmmgr_dal_{lib}.so.0").touch()
    monkeypatch.setenv("MICROMANAGER_PATH", str(tmp_path))
    rc = main(["serve", "--config", str(ORCA), "--calibration", str(tmp_path / "cal.tif")])
    out, err = capsys.readouterr()
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("livedenoise serve: error:") and "HamamatsuHam" in lines[0]


def test_an_adapter_that_does_not_load_is_one_line_with_the_one_owner_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for lib in device_adapters(ORCA.read_text()):
        (tmp_path / f"libmmgr_dal_{lib}.so.0").write_bytes(b"not a library")
    monkeypatch.setenv("MICROMANAGER_PATH", str(tmp_path))
    with pytest.raises(CoreError) as err:
        load_core(ORCA)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot load Micro-Manager configuration {ORCA}")
    assert "one owner at a time" in msg and "attaching" in msg.lower()
