"""Atomic writes: the user's umask, nothing left behind, and disk-full messages that say how much and where."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import livedenoise.util.atomic as atomic
from livedenoise.util.atomic import atomic_path, file_mode


@pytest.fixture
def umask_002() -> Iterator[None]:
    old = os.umask(0o002)  # a shared microscope PC: the group may read and write
    try:
        yield
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_atomic_files_get_the_umask_not_0600(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        assert file_mode() == 0o666 & ~mask
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"data")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "x.bin") == 0o666 & ~mask


def test_every_kind_of_output_follows_the_umask(tmp_path: Path, umask_002: None) -> None:
    import torch

    from livedenoise.acquisition.writer import PairWriter
    from livedenoise.app.offline import denoise_file
    from livedenoise.calibration.maps import Calibration, write_calibration
    from livedenoise.inference.engines import PassthroughEngine
    from livedenoise.inference.modelio import ModelCard, save_model
    from livedenoise.inference.nets import build_network

    cal = Calibration.uniform((16, 16), offset_adu=100, gain_adu_per_e=2, read_var_e2=1)
    write_calibration(tmp_path / "cal.tif", cal)
    raw = np.full((2, 16, 16), 150, np.uint16)
    import tifffile

    tifffile.imwrite(tmp_path / "in.tif", raw, photometric="minisblack")
    denoise_file(
        tmp_path / "in.tif", tmp_path / "out.tif", calibration=cal, engine=PassthroughEngine(), progress=False
    )
    torch.manual_seed(0)
    save_model(build_network("rln"), ModelCard(id="m", architecture="rln"), tmp_path / "m.pt")
    cam = {"label": "Camera", "shape": [16, 16], "roi": [0, 0, 16, 16], "binning": 1, "bit_depth": 16}
    w = PairWriter(tmp_path / "ds", camera=cam, calibration=cal)
    w.add(raw[:1], np.full((16, 16), 400, np.uint16), short_exposure_ms=10, long_exposure_ms=100)
    files = ["cal.tif", "out.tif", "m.pt", "m.json", "ds/pairs.json", "ds/calibration.tif"]
    files += [f"ds/frames/{p.name}" for p in (tmp_path / "ds" / "frames").iterdir()]
    assert {f: oct(_mode(tmp_path / f)) for f in files} == dict.fromkeys(files, oct(0o664))
    assert _mode(tmp_path / "ds") == _mode(tmp_path / "ds" / "frames") == 0o775


def test_too_little_space_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 3_000_000)
    with (
        pytest.raises(
            OSError, match="the restored TIFF .*out.tif: it needs about 12.0 MB, 3.0 MB free at "
        ) as info,
        atomic_path(tmp_path / "out.tif", "restored TIFF", need_bytes=12_000_000),
    ):
        raise AssertionError("never reached")
    assert info.value.errno == errno.ENOSPC and str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_says_how_much_and_where(tmp_path: Path) -> None:
    for need, expect in [(None, "it needs more than 0.5 MB"), (2_000_000, "it needs about 2.0 MB")]:
        with (
            pytest.raises(OSError, match=expect) as info,
            atomic_path(tmp_path / "cal.tif", "calibration", need_bytes=need) as tmp,
        ):
            tmp.write_bytes(b"x" * 500_001)
            raise OSError(errno.ENOSPC, "No space left on device")
        assert info.value.errno == errno.ENOSPC
        assert "disk full while writing the calibration" in str(info.value) and f"free at {tmp_path}" in str(
            info.value
        )
        assert list(tmp_path.iterdir()) == []  # the temporary file is gone
