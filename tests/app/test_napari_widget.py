"""The napari dock widget, found through its npe2 manifest, keeping raw and denoised layers live."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("zmq")
with warnings.catch_warnings():  # napari's own models still use pydantic v1 idioms
    warnings.simplefilter("ignore", DeprecationWarning)
    napari = pytest.importorskip("napari", reason='napari is not installed: pip install -e ".[napari]"')

pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")

from livedenoise.app.viewer.window import wait_ms
from livedenoise.transport.publisher import Publisher


@pytest.fixture
def stream() -> Iterator[tuple[str, dict[str, Any]]]:
    """raw + denoised at ~100 frames/s; ``control["shape"]`` changes the frame size on the fly."""
    pub = Publisher("tcp://127.0.0.1:*", sndhwm=50)
    control: dict[str, Any] = {"shape": (24, 32)}
    stop = threading.Event()

    def feed() -> None:
        i = 0
        while not stop.is_set():
            shape = control["shape"]
            kw = dict(
                frame=i, exposure_ms=5.0, t_acquired=time.time(), dropped=0, camera="c", calibration="k"
            )
            raw = np.full(shape, 100 + 2 * (i % 50), np.uint16)
            pub.publish("raw", raw, model=None, median_offset_adu=100.0, median_gain_adu_per_e=2.0, **kw)
            pub.publish("denoised", np.full(shape, i % 50, np.float32), model="m", **kw)
            i += 1
            stop.wait(0.01)

    th = threading.Thread(target=feed, daemon=True)
    th.start()
    yield pub.endpoint, control
    stop.set()
    th.join(5)
    pub.close()


def _pump(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        wait_ms(20)
    return True


def test_dock_widget_keeps_raw_and_denoised_layers_live(display: str, stream: Any) -> None:
    endpoint, control = stream
    viewer = napari.Viewer(show=True)
    try:
        _, widget = viewer.window.add_plugin_dock_widget("livedenoise", "Live stream")  # via napari.yaml
        widget.connect_to(endpoint)
        assert _pump(lambda: {"raw", "denoised"} <= {layer.name for layer in viewer.layers}, 20)
        first = widget.frames_shown
        assert _pump(lambda: widget.frames_shown >= first + 5, 20)  # kept updated
        raw, den = viewer.layers["raw"], viewer.layers["denoised"]
        assert raw.data.shape == den.data.shape == (24, 32)
        np.testing.assert_allclose(raw.data, den.data, atol=1e-5)  # raw in e⁻ on the same scale
        den.contrast_limits = (1.0, 30.0)
        assert tuple(raw.contrast_limits) == (1.0, 30.0)  # one linked contrast
        assert "frame" in widget.info.text() and "model m" in widget.info.text()
        control["shape"] = (40, 40)  # the ROI changes: the layers follow
        assert _pump(lambda: viewer.layers["denoised"].data.shape == (40, 40), 20)
        assert _pump(lambda: viewer.layers["raw"].data.shape == (40, 40), 20)
        widget.disconnect_feed()
        assert widget.status.text() == "not connected"
    finally:
        widget.disconnect_feed()
        viewer.close()


def test_napari_opens_a_recording_as_a_time_series(display: str, tmp_path: Any) -> None:
    from livedenoise.app.recording import StackRecorder

    path = tmp_path / "rec.tif"
    rec = StackRecorder(path, "denoised", pixel_size_um=0.1)
    for i in range(7):
        header = {"frame": i, "t_acquired": 100.0 + i / 20, "exposure_ms": 5.0, "units": "photoelectrons"}
        rec.write(header, np.full((16, 20), i, np.float32))
    assert rec.close(complete=True, stopped_by="count") == path
    viewer = napari.Viewer(show=False)
    try:
        (layer,) = viewer.open(str(path))
        assert layer.data.shape == (7, 16, 20)  # T, Y, X: a slider over time
        np.testing.assert_array_equal(np.asarray(layer.data)[:, 0, 0], np.arange(7))
    finally:
        viewer.close()
