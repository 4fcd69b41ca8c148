"""The live viewer: raw and restored frames side by side (``livedenoise view``), and a napari widget.

Built on ndv (pyapp-kit) with a Qt binding and vispy, from the optional ``view`` extra
(``pip install "livedenoise[view]"``). Nothing here imports Qt or ndv at module level:
:func:`run_viewer` does, and says which pip command to run when they are missing.

>>> from livedenoise.app.viewer import run_viewer
>>> run_viewer("tcp://127.0.0.1:5555", seconds=5, screenshot="view.png")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from livedenoise.app.viewer.feed import FrameFeed
from livedenoise.app.viewer.window import ViewerWindow, wait_ms
from livedenoise.transport.protocol import TOPICS
from livedenoise.transport.security import ClientSecurity

__all__ = ["ViewResult", "ViewerUnavailable", "require_view_extra", "run_viewer"]

log = logging.getLogger("livedenoise")

INSTALL = 'pip install "livedenoise[view]"  (in a checkout: pip install -e ".[view]")'
HEADLESS = (
    "for a window without a screen, run it under a virtual X server: "
    "`xvfb-run -a livedenoise view --seconds 5 --screenshot view.png` (Debian/Ubuntu: apt-get install xvfb)"
)


class ViewerUnavailable(RuntimeError):
    """The viewer cannot open a window here (no display, no OpenGL); the message says what to do."""


@dataclass
class ViewResult:
    """What a non-interactive run saw."""

    frames_shown: int
    last_frame: int | None
    status: str
    screenshot: Path | None


def require_view_extra() -> None:
    """Raise ImportError naming the pip command if ndv, Qt or vispy are missing."""
    missing = []
    for mod in ("ndv", "qtpy", "vispy", "superqt"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if not missing:
        try:
            import qtpy  # noqa: F401  (raises if no binding: PyQt6/PySide6)
            from qtpy import QtWidgets  # noqa: F401
        except Exception as exc:  # qtpy raises its own PythonQtError without a binding
            missing.append(f"a Qt binding ({exc})")
    if missing:
        raise ImportError(f"the viewer needs the `view` extra ({', '.join(missing)} missing): {INSTALL}")


def _check_display() -> None:
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if sys.platform.startswith("linux") and not platform:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise ViewerUnavailable(f"no display: neither DISPLAY nor WAYLAND_DISPLAY is set; {HEADLESS}")


def _check_opengl() -> None:
    from qtpy import QtGui

    ctx = QtGui.QOpenGLContext()
    if not ctx.create():
        platform = os.environ.get("QT_QPA_PLATFORM") or "default"
        raise ViewerUnavailable(
            f"Qt's {platform!r} platform has no OpenGL here, and the image canvases (vispy) need it "
            f"(Qt's offscreen platform works only where it can make an OpenGL context); {HEADLESS}"
        )


def run_viewer(
    endpoint: str = "tcp://127.0.0.1:5555",
    topics: Sequence[str] = TOPICS,
    *,
    seconds: float | None = None,
    screenshot: str | os.PathLike[str] | None = None,
    security: ClientSecurity | None = None,
    size: tuple[int, int] = (1500, 640),
) -> ViewResult:
    """Open the viewer window on ``endpoint``; with ``seconds``, close it after that long.

    Parameters
    ----------
    endpoint
        A ``livedenoise/1`` publisher.
    topics
        Topics to show (one panel each, in this order).
    seconds
        Close after this many seconds (non-interactive); None: until the window is closed.
    screenshot
        Save a PNG of the whole window at the end (with ``seconds``).
    security
        CURVE client keys for a publisher bound with ``--allow-remote``.
    size
        Window size in pixels (width, height).

    Raises
    ------
    ImportError
        The ``view`` extra is not installed (the message names the pip command).
    ViewerUnavailable
        No display or no OpenGL (the message names Xvfb and ``--screenshot``).
    """
    require_view_extra()
    _check_display()
    from qtpy import QtCore, QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["livedenoise view"])
    _check_opengl()
    with FrameFeed(endpoint, tuple(topics), security=security) as feed:
        window = ViewerWindow(feed, tuple(topics))
        window.widget.resize(*size)
        window.widget.show()
        try:
            if seconds is None:
                app.exec()
            else:
                wait_ms(int(seconds * 1000))
                window.redraw()
                if window.frames_shown:  # let the canvases paint the last frame before the grab
                    wait_ms(150)
            shot = None
            if screenshot is not None:
                window.grab(str(screenshot))
                shot = Path(screenshot)
            last = window.last.frame if window.last is not None else None
            result = ViewResult(window.frames_shown, last, window.status_text(), shot)
        finally:
            window.close()
            QtCore.QCoreApplication.processEvents()
    return result
