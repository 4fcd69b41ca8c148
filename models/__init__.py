"""Trained networks shipped with livedenoise (installed as ``livedenoise.models``).

Each model is ``<id>.pt`` (weights only: a state dict loaded with ``weights_only=True``,
never code) beside ``<id>.json`` (its model card). ``livedenoise models`` lists them;
:mod:`livedenoise.inference.modelio` loads them.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
