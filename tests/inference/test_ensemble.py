"""The self-ensemble (flips and transposes, mapped back and averaged)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from livedenoise.inference.engines import PassthroughEngine
from livedenoise.inference.ensemble import SelfEnsemble, views


class RampEngine:
    """Not equivariant: adds its input's column index (so each view's result differs)."""

    name = "ramp"
    model_id = "ramp"

    def __init__(self) -> None:
        self.calls = 0
        self.shapes: list[tuple[int, int]] = []

    def prepare(self, shape: tuple[int, int]) -> None:
        self.shapes.append(tuple(shape))

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
        assert frame_e.flags.c_contiguous and frame_e.dtype == np.float32
        self.calls += 1
        out[...] = frame_e + np.arange(frame_e.shape[1], dtype=np.float32)[None, :]
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": "ramp", "precision": "fp32"}

    def close(self) -> None:
        pass


def test_views_by_size_and_shape() -> None:
    assert len(views(1, (8, 8))) == 1 and len(views(2, (8, 8))) == 2
    assert len(views(4, (8, 6))) == 4 and len(views(8, (8, 8))) == 8
    assert len(set(views(8, (8, 8)))) == 8
    assert len(views(8, (8, 6))) == 4  # no transposes of a non-square frame
    with pytest.raises(ValueError, match="one of 1, 2, 4, 8"):
        views(3, (8, 8))
    with pytest.raises(ValueError, match="one of 1, 2, 4, 8"):
        SelfEnsemble(PassthroughEngine(), 16)


@pytest.mark.parametrize(("n", "shape"), [(2, (6, 10)), (4, (6, 10)), (8, (9, 9)), (8, (6, 10))])
def test_each_view_is_mapped_back_before_averaging(n: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    frame = rng.uniform(0, 50, shape).astype(np.float32)
    eng = RampEngine()
    ens = SelfEnsemble(eng, n)
    out = np.empty_like(frame)
    assert ens.restore(frame, out) is out
    used = 4 if (n == 8 and shape[0] != shape[1]) else n
    assert eng.calls == used and ens.describe()["ensemble"] == used
    assert eng.shapes == [shape]  # prepared once, for the frame's own shape
    # the ramp of a flipped view comes back reversed: the mean of a ramp and its mirror is flat
    np.testing.assert_allclose(out, frame + (shape[1] - 1) / 2, rtol=0, atol=1e-4)


def test_an_equivariant_engine_is_unchanged_by_the_ensemble() -> None:
    frame = np.random.default_rng(1).normal(5, 3, (16, 16)).astype(np.float32)
    single = PassthroughEngine().restore(frame, np.empty_like(frame))
    ens = SelfEnsemble(PassthroughEngine(), 8).restore(frame, np.empty_like(frame))
    np.testing.assert_allclose(ens, single, rtol=0, atol=1e-6)


def test_denoise_ensemble_is_recorded_and_bad_sizes_refused(tmp_path: Path, capsys: Any) -> None:
    from livedenoise.calibration.maps import Calibration, write_calibration
    from livedenoise.cli import main

    cal = write_calibration(
        tmp_path / "cal.tif",
        Calibration.uniform((24, 20), offset_adu=100, gain_adu_per_e=2.0, read_var_e2=1.0),
    )
    raw = (100 + 2 * np.random.default_rng(2).poisson(20, (24, 20))).astype(np.uint16)
    src, dst = tmp_path / "in.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, raw, photometric="minisblack")
    args = [
        "denoise",
        str(src),
        "-o",
        str(dst),
        "--calibration",
        str(cal),
        "--engine",
        "passthrough",
        "--no-progress",
    ]
    assert main([*args, "--ensemble", "8"]) == 0
    with tifffile.TiffFile(dst) as tf:
        meta = json.loads(tf.pages[0].description)
    assert meta["ensemble"] == 4 and meta["engine"]["ensemble"] == 4  # 24x20: the 4 flips
    with pytest.raises(SystemExit) as exc:
        main([*args, "--ensemble", "3", "--force"])
    assert exc.value.code == 2 and "invalid choice: 3" in capsys.readouterr().err
