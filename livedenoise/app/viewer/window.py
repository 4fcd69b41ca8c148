"""The viewer window: one ndv ``ArrayViewer`` per topic, side by side, on one photoelectron scale.

What ndv gives each panel: the canvas (vispy), zoom and pan, the contrast slider, auto
contrast, the histogram. What this module adds through ndv's public API and the vispy camera
behind its canvas: linked zoom and pan (the vispy cameras are linked; ndv has no public
"link views"), one shared contrast across panels (the panels' LUT models kept in step), the
flip between topics in one panel, the info and status lines, and the live feed. Each panel
shows a buffer that is updated in place, then redrawn by emitting its ``DataWrapper``'s
``data_changed`` (ndv's streaming recipe), only for the newest frame.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from livedenoise.app.viewer._icons import use_offline_icons
from livedenoise.app.viewer.feed import FrameFeed, Snapshot, format_info, raw_to_photoelectrons, shared_limits

__all__ = ["ViewerWindow"]

log = logging.getLogger("livedenoise")

TITLES = {"raw": "raw", "denoised": "restored", "truth": "truth (simulator)"}
REDRAW_MS = 30


def _qt() -> Any:
    from qtpy import QtCore, QtGui, QtWidgets

    return QtCore, QtGui, QtWidgets


class _Panel:
    """One ndv ArrayViewer with a title, showing one topic (in photoelectrons)."""

    def __init__(self, topic: str) -> None:
        import ndv
        from ndv.models import ArrayViewerModel
        from qtpy import QtWidgets

        self.topic = topic
        self.shape: tuple[int, ...] | None = None
        self.buffer = np.zeros((16, 16), np.float32)
        options = ArrayViewerModel()
        self.viewer = ndv.ArrayViewer(self.buffer, viewer_options=options)
        # ndv 0.5 applies these options when they change, not at construction: set them after it
        options.show_3d_button = False
        options.show_channel_mode_selector = False
        options.show_play_button = False
        options.show_data_info = False
        self.widget = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(self.widget)
        layout.setContentsMargins(2, 2, 2, 2)
        self.title = QtWidgets.QLabel(TITLES.get(topic, topic))
        self.title.setStyleSheet("font-weight: bold")
        # a long title must not make one panel wider than the others (the cameras are linked)
        self.title.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        layout.addWidget(self.title)
        layout.addWidget(self.viewer.widget(), 1)

    @property
    def lut(self) -> Any:
        return self.viewer.display_model.default_lut

    @property
    def camera(self) -> Any:
        # ndv has no public "link views"; its vispy canvas keeps the camera here
        canvas: Any = self.viewer._canvas
        return canvas._camera

    def show(self, image: np.ndarray) -> bool:
        """Copy ``image`` into the buffer and redraw; True if the shape changed (a new ROI)."""
        if image.shape != self.shape:
            self.shape = image.shape
            self.buffer = np.array(image, np.float32)
            self.viewer.data = self.buffer  # a new shape: ndv resets the view to it
            return True
        np.copyto(self.buffer, image, casting="unsafe")
        # ndv 0.5 redraws on current_index.update() only when the index changed: tell it the
        # data changed instead (its DataWrapper's signal; the streaming recipe of older ndv)
        self.viewer.data_wrapper.data_changed.emit()
        return False


class ViewerWindow:
    """The ``livedenoise view`` window (a ``QWidget`` in :attr:`widget`).

    Parameters
    ----------
    feed
        Where the frames come from.
    topics
        Panels, in order (``raw``, ``denoised``, ``truth``); a panel appears once its topic arrives.
    """

    def __init__(self, feed: FrameFeed, topics: tuple[str, ...]) -> None:
        from ndv.models import ClimsManual, ClimsPercentile

        QtCore, QtGui, QtWidgets = _qt()
        os.environ.setdefault("NDV_SYNCHRONOUS", "1")  # the buffer is redrawn in place: no race
        use_offline_icons()
        self._ClimsManual, self._ClimsPercentile = ClimsManual, ClimsPercentile
        self.feed = feed
        self.topics = topics
        self.frames_shown = 0
        self.last: Snapshot | None = None
        self.images: dict[str, np.ndarray] = {}
        self._auto = True
        self._syncing = False

        self.widget = w = QtWidgets.QWidget()
        w.setWindowTitle(f"livedenoise view — {feed.endpoint}")
        outer = QtWidgets.QVBoxLayout(w)

        bar = QtWidgets.QHBoxLayout()
        self.topic_boxes: dict[str, Any] = {}
        bar.addWidget(QtWidgets.QLabel("show:"))
        for t in topics:
            box = QtWidgets.QCheckBox(TITLES.get(t, t))
            box.setChecked(True)
            box.toggled.connect(self._layout_panels)
            bar.addWidget(box)
            self.topic_boxes[t] = box
        bar.addSpacing(16)
        self.shared_box = QtWidgets.QCheckBox("one contrast for all panels")
        self.shared_box.setChecked(True)
        self.shared_box.toggled.connect(self._on_shared_toggled)
        bar.addWidget(self.shared_box)
        bar.addSpacing(16)
        self.flip_box = QtWidgets.QCheckBox("flip in one panel:")
        self.flip_box.toggled.connect(self._layout_panels)
        bar.addWidget(self.flip_box)
        self.flip_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.flip_slider.setRange(0, len(topics) - 1)
        self.flip_slider.setFixedWidth(80)
        self.flip_slider.valueChanged.connect(self._on_flip)
        bar.addWidget(self.flip_slider)
        self.flip_label = QtWidgets.QLabel(TITLES.get(topics[0], topics[0]))
        bar.addWidget(self.flip_label)
        bar.addStretch(1)
        outer.addLayout(bar)

        row = QtWidgets.QHBoxLayout()
        self.panels = [_Panel(t) for t in topics]
        for p in self.panels:
            row.addWidget(p.widget, 1)
            p.lut.clims = ClimsManual(min=0, max=1)
            p.lut.events.clims.connect(lambda new, _p=p: self._on_clims(_p, new))
        for p in self.panels[1:]:
            self.panels[0].camera.link(p.camera)  # vispy links both ways: linked zoom and pan
        outer.addLayout(row, 1)

        self.info = QtWidgets.QLabel("")
        self.info.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.info)
        self.status = QtWidgets.QLabel("")
        outer.addWidget(self.status)
        QtGui.QShortcut(QtGui.QKeySequence("F"), w, activated=self._flip_next)

        self._layout_panels()
        self._set_status()
        self.timer = QtCore.QTimer(w)
        self.timer.timeout.connect(self.redraw)
        self.timer.start(REDRAW_MS)

    # -- layout --------------------------------------------------------------------------------

    def _visible_topics(self) -> list[str]:
        live = set(self.images) or set(self.topics)
        return [t for t in self.topics if self.topic_boxes[t].isChecked() and t in live]

    def _layout_panels(self) -> None:
        visible = self._visible_topics()
        flip = self.flip_box.isChecked()
        for i, p in enumerate(self.panels):
            if flip:
                p.widget.setVisible(i == 0)
            else:
                p.widget.setVisible(p.topic in visible)
        if not flip:
            for p, t in zip(self.panels, self.topics):
                if p.topic != t:
                    p.topic = t
                    p.title.setText(TITLES.get(t, t))
        self._on_flip(self.flip_slider.value())

    def _flip_next(self) -> None:
        self.flip_box.setChecked(True)
        self.flip_slider.setValue((self.flip_slider.value() + 1) % len(self.topics))

    def _on_flip(self, index: int) -> None:
        topic = self.topics[index]
        self.flip_label.setText(TITLES.get(topic, topic))
        if self.flip_box.isChecked():
            p = self.panels[0]
            p.topic = topic
            p.title.setText(f"{TITLES.get(topic, topic)} (flip: F key or the slider)")
            if topic in self.images:
                p.show(self.images[topic])

    # -- contrast ------------------------------------------------------------------------------

    def _on_shared_toggled(self, shared: bool) -> None:
        self._auto = True
        self._syncing = True
        try:
            for p in self.panels:
                if shared:
                    p.lut.clims = self._ClimsManual(min=0, max=1)
                else:  # each panel its own auto contrast (ndv computes it per frame)
                    p.lut.clims = self._ClimsPercentile(min_percentile=0.1, max_percentile=99.9)
        finally:
            self._syncing = False
        self._apply_shared_limits()

    def _on_clims(self, panel: _Panel, new: Any) -> None:
        """A panel's contrast changed (slider, Auto button): keep the others in step if shared."""
        if self._syncing or not self.shared_box.isChecked():
            return
        if new.is_manual:
            self._auto = False
            self._set_all(new, except_panel=panel)
        else:  # Auto pressed in one panel: auto for all, from one frame's percentiles
            self._auto = True
            self._apply_shared_limits()

    def _set_all(self, clims: Any, except_panel: _Panel | None = None) -> None:
        self._syncing = True
        try:
            for p in self.panels:
                if p is not except_panel:
                    p.lut.clims = clims
        finally:
            self._syncing = False

    def _apply_shared_limits(self) -> None:
        if not (self.shared_box.isChecked() and self._auto and self.images):
            return
        # the restored frame sets the scale: the noise in raw then shows as what it is
        ref = next((t for t in ("denoised", "truth", "raw") if t in self.images), next(iter(self.images)))
        lo, hi = shared_limits(self.images[ref])
        self._set_all(self._ClimsManual(min=lo, max=hi))

    # -- the live loop -------------------------------------------------------------------------

    def redraw(self) -> None:
        """Show the newest frame, if there is a new one; refresh the status line."""
        snap = self.feed.take()
        if snap is not None:
            self._show(snap)
        self._set_status()

    def _show(self, snap: Snapshot) -> None:
        msgs = snap.messages
        first_topics = set(self.images)
        images: dict[str, np.ndarray] = {}
        notes: dict[str, str] = {}
        den = msgs["denoised"].array if "denoised" in msgs else None
        for topic, msg in msgs.items():
            if topic == "raw":
                images[topic], notes[topic] = raw_to_photoelectrons(msg.array, msg.header, den)
            else:
                images[topic] = msg.array
        self.images.update(images)
        if set(self.images) != first_topics:
            self._layout_panels()
        resized = False
        for p in self.panels:
            if p.topic in images and p.widget.isVisible():
                resized |= p.show(images[p.topic])
                title = TITLES.get(p.topic, p.topic)
                h, wd = images[p.topic].shape
                note = notes.get(p.topic, "e⁻")
                if not self.flip_box.isChecked():
                    p.title.setText(f"{title}  {wd}×{h}  {note}")
        if resized:
            for p in self.panels:
                p.viewer._canvas.set_range()
        self._apply_shared_limits()
        self.last = snap
        self.frames_shown += 1
        self.info.setText(format_info(snap, self.feed.status()))

    def _set_status(self) -> None:
        st = self.feed.status()
        text = st.message()
        if st.state == "live":
            counts = ", ".join(f"{t} {n}" for t, n in st.received.items() if n)
            text = f"{text}  ·  messages: {counts}"
            self.status.setStyleSheet("color: #2a6f2a")
        else:
            self.status.setStyleSheet("color: #b00020; font-weight: bold")
        self.status.setText(text)
        self._status_text = text

    def status_text(self) -> str:
        return self._status_text

    def grab(self, path: str) -> None:
        """Save a screenshot of the whole window (PNG)."""
        from qtpy import QtWidgets

        QtWidgets.QApplication.processEvents()
        pixmap = self.widget.grab()
        if not pixmap.save(str(path)):
            raise OSError(f"could not write the screenshot {path}")

    def close(self) -> None:
        self.timer.stop()
        for p in self.panels:
            p.viewer.close()
        self.widget.close()


def wait_ms(ms: int) -> None:
    """Run the Qt event loop for ``ms`` milliseconds (tests and the non-interactive mode)."""
    from qtpy import QtWidgets

    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        QtWidgets.QApplication.processEvents()
        time.sleep(0.005)
