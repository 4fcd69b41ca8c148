"""A napari dock widget that keeps ``raw`` and ``denoised`` (and ``truth``) image layers live.

Registered through the npe2 manifest ``napari.yaml`` beside this module: in napari,
Plugins > livedenoise > Live stream. It connects to a ``livedenoise/1`` publisher and, at
most 25 times a second, puts the newest camera frame of each topic into an image layer of
the same name, in photoelectrons (raw converted as in ``livedenoise view``). The layers'
contrast is linked, so raw and restored share one scale; the frame number, rates, model,
calibration and QC are shown under the controls. Needs ``pip install "livedenoise[napari]"``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from qtpy import QtCore, QtWidgets

from livedenoise.app.viewer.feed import FrameFeed, format_info, raw_to_photoelectrons, shared_limits
from livedenoise.transport.protocol import TOPICS

__all__ = ["LiveStreamWidget"]

log = logging.getLogger("livedenoise")

REDRAW_MS = 40


class LiveStreamWidget(QtWidgets.QWidget):
    """Dock widget: endpoint, topics, connect; then live layers named after the topics."""

    def __init__(self, napari_viewer: Any, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.feed: FrameFeed | None = None
        self.frames_shown = 0
        self._linked = False

        layout = QtWidgets.QFormLayout(self)
        self.endpoint = QtWidgets.QLineEdit("tcp://127.0.0.1:5555")
        layout.addRow("endpoint", self.endpoint)
        self.topic_boxes = {}
        row = QtWidgets.QHBoxLayout()
        for t in TOPICS:
            box = QtWidgets.QCheckBox(t)
            box.setChecked(t != "truth")
            row.addWidget(box)
            self.topic_boxes[t] = box
        layout.addRow("topics", row)
        self.button = QtWidgets.QPushButton("Connect")
        self.button.clicked.connect(self.toggle)
        layout.addRow(self.button)
        self.status = QtWidgets.QLabel("not connected")
        self.status.setWordWrap(True)
        layout.addRow(self.status)
        self.info = QtWidgets.QLabel("")
        self.info.setWordWrap(True)
        layout.addRow(self.info)
        self.timer = QtCore.QTimer(self)
        self.timer.timeout.connect(self.redraw)

    def toggle(self) -> None:
        if self.feed is None:
            self.connect_to(self.endpoint.text().strip())
        else:
            self.disconnect_feed()

    def connect_to(self, endpoint: str) -> None:
        """Subscribe to ``endpoint`` (the checked topics) and start updating the layers."""
        self.disconnect_feed()
        topics = tuple(t for t, box in self.topic_boxes.items() if box.isChecked()) or ("denoised",)
        try:
            self.feed = FrameFeed(endpoint, topics)
        except (OSError, ValueError) as exc:
            self.status.setText(f"cannot connect: {exc}")
            return
        self.endpoint.setText(endpoint)
        self.button.setText("Disconnect")
        self.timer.start(REDRAW_MS)

    def disconnect_feed(self) -> None:
        self.timer.stop()
        if self.feed is not None:
            self.feed.close()
            self.feed = None
        self.button.setText("Connect")
        self.status.setText("not connected")

    def redraw(self) -> None:
        """Put the newest frame into the layers (called by the timer)."""
        if self.feed is None:
            return
        snap = self.feed.take()
        status = self.feed.status()
        self.status.setText(status.message())
        if snap is None:
            return
        den = snap.messages["denoised"].array if "denoised" in snap.messages else None
        for topic, msg in snap.messages.items():
            image = raw_to_photoelectrons(msg.array, msg.header, den)[0] if topic == "raw" else msg.array
            self._update_layer(topic, np.asarray(image, np.float32))
        self._link()
        self.frames_shown += 1
        self.info.setText(format_info(snap, status))

    def _update_layer(self, name: str, image: np.ndarray) -> None:
        layers = self.viewer.layers
        if name in layers and layers[name].data.shape == image.shape:
            layers[name].data = np.array(image)  # the message's buffer is not ours to keep
            return
        if name in layers:  # a new ROI size: a new layer (the old one's contrast is kept)
            limits = layers[name].contrast_limits
            layers.remove(name)
            self._linked = False
        else:
            limits = list(shared_limits(image))
        self.viewer.add_image(np.array(image), name=name, contrast_limits=limits, colormap="gray")

    def _link(self) -> None:
        """One contrast for raw, denoised and truth (napari's linked layers)."""
        if self._linked:
            return
        from napari.experimental import link_layers

        layers = [self.viewer.layers[t] for t in TOPICS if t in self.viewer.layers]
        if len(layers) > 1:
            link_layers(layers, ("contrast_limits", "gamma"))
            self._linked = True

    def closeEvent(self, event: Any) -> None:  # Qt's name
        self.disconnect_feed()
        super().closeEvent(event)
