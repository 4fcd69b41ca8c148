"""Micro-Manager device adapters shipped with livedenoise (installed as ``livedenoise.drivers``).

- ``simcam``: a simulated sCMOS camera (per-pixel offset, gain and read noise, Poisson
  shot noise, a moving scene) as a pymmcore-plus ``UniMMCore`` Python device.
- ``*.cfg``: Micro-Manager configurations; ``config_path(name)`` finds them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["config_path"]

DRIVERS_DIR = Path(__file__).resolve().parent


def config_path(name: str = "simcam.cfg") -> Path:
    """Path of a configuration shipped in this folder."""
    p = DRIVERS_DIR / name
    if not p.is_file():
        have = ", ".join(sorted(q.name for q in DRIVERS_DIR.glob("*.cfg"))) or "none"
        raise FileNotFoundError(f"no shipped configuration {name!r} (shipped: {have})")
    return p
