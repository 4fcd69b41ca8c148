"""Argument types shared by several commands (standard library only)."""

from __future__ import annotations

import argparse

__all__ = ["CLIError", "roi"]


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
