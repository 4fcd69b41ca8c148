"""Argument types shared by several commands (standard library only)."""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = [
    "PRECISIONS",
    "CLIError",
    "add_camera_arguments",
    "add_confinement_arguments",
    "add_force_argument",
    "add_precision_argument",
    "add_threads_argument",
    "engine_options",
    "existing_outputs",
    "roi",
]

PRECISIONS = ("auto", "fp32", "bf16")
"""Values of ``--precision`` (the CPU engine's; ``auto`` leaves every backend its own default)."""


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
    return vals[0], vals[1], vals[2], vals[3]


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16`` (the same option on denoise, serve and demo)."""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="numeric precision of the restoration: auto (bf16 where it was validated against fp32 "
        "for the model and is faster on this machine, decided once and cached), fp32, or bf16 "
        "(if validated, else fp32); default %(default)s",
    )


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N``: the live CPU engine's threads (serve, demo, bench)."""
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="CPU threads of the restoration (cpu and onnx engines); default: every core but one, left "
        "to the camera, conversion and publishing (on 2 cores one engine thread restores more frames "
        "than two), or OMP_NUM_THREADS where set",
    )


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return n


def engine_options(precision: str, threads: int | None = None) -> dict[str, Any]:
    """Engine keyword options for ``--precision`` (none for ``auto``: each backend's own default) and
    ``--threads`` (None: the live default, :func:`~livedenoise.app.modelchoice.live_engine_options`)."""
    opts: dict[str, Any] = {} if precision == "auto" else {"precision": precision}
    if threads is not None:
        opts["threads"] = threads
    return opts


def add_confinement_arguments(p: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--model-dir``: the folders control requests may use (serve, demo)."""
    g = p.add_argument_group("folders control requests may use (paths outside them are refused)")
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="folder where collect_pairs requests write datasets (their output resolves inside it); "
        "without it the daemon collects no pairs on request",
    )
    g.add_argument(
        "--model-dir",
        metavar="DIR",
        action="append",
        default=[],
        help="folder set_model requests may load models from, besides $LIVEDENOISE_MODELS and the "
        "shipped models (repeatable); --model may also name an id found there",
    )


def add_force_argument(p: argparse.ArgumentParser) -> None:
    """``--force``: overwrite existing outputs (without it a command refuses to)."""
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def existing_outputs(*paths: str | os.PathLike[str] | None) -> list[str]:
    """The given output files that already exist (a command without --force refuses to overwrite them).

    Folders are not listed: writing a file over a folder fails anyway, with its own message.
    """
    return [os.fspath(p) for p in paths if p is not None and os.path.lexists(p) and not os.path.isdir(p)]


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
