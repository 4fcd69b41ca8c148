"""Argument types shared by several commands (standard library only)."""

from __future__ import annotations

import argparse

__all__ = ["CLIError", "add_camera_arguments", "roi"]


class CLIError(Exception):
    """An error the user can act on; printed without a traceback, exit status 2."""


def roi(text: str) -> tuple[int, int, int, int]:
    """``X,Y,W,H`` in camera pixels: x, y >= 0 and width, height > 0."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or vals[2] <= 0 or vals[3] <= 0 or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H (pixels, W and H > 0), got {text!r}")
    return vals  # type: ignore[return-value]


def add_camera_arguments(p: argparse.ArgumentParser, *, exposure_default: float | None = None) -> None:
    """``--roi``, ``--binning``, ``--exposure-ms``: the camera settings a stream starts with."""
    p.add_argument(
        "--roi",
        type=roi,
        metavar="X,Y,W,H",
        default=None,
        help="camera ROI in binned pixels (default: the configuration's); the calibration is cropped to it",
    )
    p.add_argument(
        "--binning", type=int, default=None, help="camera binning, e.g. 2 (default: the configuration's)"
    )
    default = "the configuration's" if exposure_default is None else f"{exposure_default:g} ms"
    p.add_argument(
        "--exposure-ms",
        type=float,
        default=exposure_default,
        help=f"camera exposure, ms (default: {default}); change all three later with `livedenoise ctl set`",
    )
