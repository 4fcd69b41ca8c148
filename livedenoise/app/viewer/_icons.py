"""Button icons for ndv's widgets, drawn here, so that the viewer never goes to the network.

ndv draws its buttons with superqt's ``QIconifyIcon``, which downloads each SVG from
api.iconify.design the first time (pyconify caches it afterwards). A microscope PC is often
offline, and there every icon costs a failed request (up to 2 s each behind a proxy) and a
warning. :func:`use_offline_icons` points superqt at these simple shapes instead.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["use_offline_icons"]

_SHAPES = {
    "bi:play-fill": '<path d="M5 3 L17 10 L5 17 Z"/>',
    "bi:pause-fill": '<rect x="4" y="3" width="4" height="14"/><rect x="12" y="3" width="4" height="14"/>',
    "f7:view-2d": '<rect x="3" y="3" width="14" height="14" fill="none" stroke-width="2"/>',
    "f7:view-3d": '<path d="M3 6 L10 2 L17 6 L17 14 L10 18 L3 14 Z" fill="none" stroke-width="2"/>',
    "foundation:graph-bar": (
        '<rect x="2" y="10" width="4" height="8"/><rect x="8" y="4" width="4" height="14"/>'
        '<rect x="14" y="7" width="4" height="11"/>'
    ),
    "fluent:full-screen-maximize-24-filled": (
        '<path d="M2 7 V2 H7 M13 2 H18 V7 M18 13 V18 H13 M7 18 H2 V13" fill="none" stroke-width="2.5"/>'
    ),
    "mdi:math-log": '<path d="M3 3 V17 H17" fill="none" stroke-width="2"/><path d="M4 16 Q7 5 17 4" '
    'fill="none" stroke-width="2"/>',
    "mdi:vector-rectangle": '<rect x="3" y="5" width="14" height="10" fill="none" stroke-width="2"/>',
    "bi:chevron-up": '<path d="M4 13 L10 7 L16 13" fill="none" stroke-width="2.5"/>',
    "bi:chevron-down": '<path d="M4 7 L10 13 L16 7" fill="none" stroke-width="2.5"/>',
    "mdi:content-save": '<path d="M3 3 H14 L17 6 V17 H3 Z M6 3 V8 H13 V3" fill="none" stroke-width="2"/>',
}
_DEFAULT = '<circle cx="10" cy="10" r="6" fill="none" stroke-width="2"/>'
_folder: Path | None = None


def _svg_path(*key: str, color: str | None = None, **_: Any) -> Path:
    global _folder
    if _folder is None:
        _folder = Path(tempfile.mkdtemp(prefix="livedenoise-icons-"))
        atexit.register(shutil.rmtree, _folder, True)
    name = ":".join(key)
    colour = color or "#333333"
    body = _SHAPES.get(name, _DEFAULT)
    path = _folder / f"{name.replace(':', '_')}_{colour.lstrip('#')}.svg"
    if not path.exists():
        path.write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 20 20" fill="{colour}" '
            f'stroke="{colour}">{body}</svg>',
            encoding="utf-8",
        )
    return path


def use_offline_icons() -> None:
    """Make superqt's iconify icons (ndv's buttons) come from :data:`_SHAPES`, never the network."""
    import superqt.iconify

    superqt.iconify.svg_path = _svg_path  # type: ignore[assignment]
