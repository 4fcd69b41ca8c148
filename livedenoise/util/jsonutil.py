"""JSON for what livedenoise writes: numpy scalars and arrays, paths."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

__all__ = ["json_default"]


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy values as Python values, paths as strings."""
    if callable(getattr(obj, "tolist", None)):  # numpy scalars and (small) arrays
        return obj.tolist()
    if isinstance(obj, PurePath):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
