"""A virtual X server for the viewer tests (tests/app/test_viewer*.py, the napari widget)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """Xvfb for this test session, with DISPLAY set for in-process Qt and for subprocesses.

    Qt's connection is opened here and held to the end: Xvfb runs with ``-terminate``, so it
    exits by itself once the test process (its last client) has gone, and is never shut down
    under a live QApplication (which would abort the process with an X I/O error).
    """
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb libgl1-mesa-dri; .ci/run does it)")
    pytest.importorskip("qtpy", reason='the view extra is not installed: pip install -e ".[view]"')
    read, write = os.pipe()
    # started in the background by a shell that exits at once: Xvfb is nobody's child here, so
    # nothing has to wait for it (it ends by itself, -terminate, after the last client)
    args = f"Xvfb -displayfd {write} -screen 0 1600x1000x24 -nolisten tcp -terminate"
    subprocess.run(["sh", "-c", f"{args} >/dev/null 2>&1 &"], pass_fds=(write,), check=True, timeout=30)
    os.close(write)
    with os.fdopen(read) as fh:
        number = fh.readline().strip()  # written once the server accepts clients
    if not number:
        pytest.fail("Xvfb did not start")
    # With a QApplication alive, pymmcore-plus would route every later test's core signals
    # through Qt's event loop, which only the viewer tests run: keep them on psygnal.
    os.environ["PYMM_SIGNALS_BACKEND"] = "psygnal"
    os.environ["DISPLAY"] = f":{number}"
    os.environ.pop("QT_QPA_PLATFORM", None)
    os.environ.pop("WAYLAND_DISPLAY", None)
    from qtpy import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["livedenoise-tests"])
    app.setQuitOnLastWindowClosed(False)
    yield f":{number}"


@pytest.fixture(scope="session")
def qapp(display: str) -> Any:
    from qtpy import QtWidgets

    return QtWidgets.QApplication.instance()
