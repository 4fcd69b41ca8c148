"""Live calibration: drive the camera through a Micro-Manager core, fit, restore its settings.

Darks with the shutter closed, then flats at several light levels, set either by an
exposure sweep (works on any camera) or by a light property (``DEVICE,PROP``). Frames
are taken by sequence acquisition and streamed into per-level accumulators (never a
whole stack in memory). Whatever happens (error, Ctrl-C), the camera's exposure,
shutter and auto-shutter state, ROI, binning and every property changed are restored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.acquisition.core import CoreSettings, load_core
from livedenoise.calibration.fit import (
    CalibrationFit,
    LevelStats,
    MomentAccumulator,
    check_flat_level,
    check_level_counts,
    fit_calibration,
)
from livedenoise.calibration.maps import CalibrationError, write_calibration
from livedenoise.calibration.report import write_report
from livedenoise.drivers.simcam import load_sim_core, simulated_camera_label
from livedenoise.util.atomic import check_writable_dir
from livedenoise.util.progress import progress_bar

__all__ = ["LiveOptions", "calibrate_live", "calibrate_live_config", "simulator_defaults"]

log = logging.getLogger("livedenoise")

PROBE_FRAMES = 16


@dataclass(frozen=True)
class LiveOptions:
    """What a live calibration acquires.

    Attributes
    ----------
    darks, frames, levels : int
        Dark frames, frames per flat level, number of flat levels.
    signal_e : (lo, hi)
        Mean photoelectrons wanted at the dimmest and brightest level (planned from a
        short probe; the brightest is lowered if it would come near saturation).
    light_property : (device, property), optional
        Set the light with this property instead of the exposure.
    light_values : tuple of float, optional
        Explicit values of ``light_property``, one per level (otherwise planned
        assuming the signal is proportional to the value).
    properties : tuple of (device, property, value)
        Set first (e.g. ``("Camera", "Scene", "flat")``); restored afterwards.
    exposure_ms : float, optional
        Exposure of the darks (and of all levels with a light property); default:
        the camera's current exposure.
    roi : (x, y, w, h), optional
        Calibrate only this sensor region (recorded in the file); default full sensor.
    saturation_adu : float, optional
        Saturated value; default ``2**bit_depth - 1`` of the camera.
    max_exposure_ms : float
        Longest exposure the sweep may use.
    max_saturated_fraction, min_signal_e : float
        Per-level checks.
    frame_timeout_s : float
        Longest wait for one frame beyond its exposure.
    """

    darks: int = 400
    frames: int = 400
    levels: int = 6
    signal_e: tuple[float, float] = (15.0, 1500.0)
    light_property: tuple[str, str] | None = None
    light_values: tuple[float, ...] | None = None
    properties: tuple[tuple[str, ...], ...] = ()
    exposure_ms: float | None = None
    roi: tuple[int, int, int, int] | None = None
    saturation_adu: float | None = None
    max_exposure_ms: float = 5000.0
    max_saturated_fraction: float = 1e-3
    min_signal_e: float = 5.0
    frame_timeout_s: float = 10.0


def _binning(value: str) -> int:
    try:
        return int(float(str(value).split("x")[0]))
    except ValueError:
        return 1


def _acquire(core: Any, n: int, acc: MomentAccumulator, bar: Any, timeout_s: float) -> None:
    """Add ``n`` frames from sequence acquisition to ``acc``, in batches the buffer can hold."""
    try:
        capacity = int(core.getBufferTotalCapacity())
    except Exception:
        capacity = 0
    batch = n if capacity <= 0 else max(1, min(n, capacity // 2))
    per_frame_s = core.getExposure() / 1000.0 + timeout_s
    if bar is not None:
        bar.set_description(acc.label)
    remaining = n
    while remaining > 0:
        k = min(batch, remaining)
        core.startSequenceAcquisition(k, 0, True)
        got = 0
        last = time.monotonic()
        try:
            while got < k:
                if core.getRemainingImageCount() > 0:
                    try:
                        img = core.popNextImage()
                    except (RuntimeError, IndexError, ValueError):  # "Circular buffer is empty"
                        continue
                    acc.add(img)
                    got += 1
                    last = time.monotonic()
                    if bar is not None:
                        bar.update(1)
                    continue
                if not core.isSequenceRunning() and core.getRemainingImageCount() == 0:
                    raise CalibrationError(
                        f"the camera stopped after {got} of {k} frames ({acc.label}); "
                        "check the camera and its buffer, then retry"
                    )
                if time.monotonic() - last > per_frame_s:
                    raise CalibrationError(
                        f"no frame from the camera for {per_frame_s:.1f} s ({acc.label}, {got} of {k}); "
                        "is it acquiring? check triggers and cables"
                    )
                time.sleep(0.0005)  # the core has no per-frame signal for sequences: poll
        finally:
            if core.isSequenceRunning():
                core.stopSequenceAcquisition()
        remaining -= k


def _stats(core: Any, n: int, label: str, sat: float, bar: Any, opts: LiveOptions, **info: Any) -> LevelStats:
    shape = (core.getImageHeight(), core.getImageWidth())
    acc = MomentAccumulator(shape, saturation_adu=sat, label=label)
    _acquire(core, n, acc, bar, opts.frame_timeout_s)
    return acc.finish(exposure_ms=core.getExposure(), **info)


class _Knob:
    """The light control of the sweep: the exposure, or a property (signal ∝ value assumed)."""

    def __init__(self, core: Any, settings: CoreSettings, opts: LiveOptions) -> None:
        self.core, self.settings, self.opts = core, settings, opts
        self.prop = opts.light_property
        if self.prop:
            dev, p = self.prop
            if not core.hasProperty(dev, p):
                raise CalibrationError(f"--light-property: device {dev!r} has no property {p!r}")
            try:
                self.value = float(core.getProperty(dev, p))
            except ValueError as exc:
                raise CalibrationError(
                    f"--light-property {dev},{p} is not numeric; give --light-values"
                ) from exc
            self.lo, self.hi = 0.0, float("inf")
            if core.hasPropertyLimits(dev, p):
                self.lo, self.hi = core.getPropertyLowerLimit(dev, p), core.getPropertyUpperLimit(dev, p)
            self.name = f"{dev}.{p}"
        else:
            self.value = core.getExposure()
            self.lo, self.hi = 1e-3, opts.max_exposure_ms
            self.name = "exposure_ms"

    def set(self, value: float) -> float:
        if self.prop:
            self.settings.set_property(*self.prop, value)
            self.value = float(self.core.getProperty(*self.prop))
        else:
            self.core.setExposure(value)
            self.value = self.core.getExposure()
        return self.value


def _probe(core: Any, dark: LevelStats, sat: float, opts: LiveOptions) -> dict[str, float]:
    """Mean signal and rough gain of a few frames at the current setting (no accumulation kept)."""
    st = _stats(core, PROBE_FRAMES, "probe", sat, None, opts)
    if st.saturated_fraction > opts.max_saturated_fraction:  # no variance to read: just say so
        return {"saturated_fraction": st.saturated_fraction, "signal_e": float("inf")}
    return check_flat_level(st, dark, min_signal_e=0.0, max_saturated_fraction=1.0)


def _plan(
    core: Any, knob: _Knob, dark: LevelStats, sat: float, opts: LiveOptions
) -> tuple[list[float], dict]:
    """Knob values for the levels, from a probe (adapting the knob until the probe is usable)."""
    info: dict[str, Any] = {}
    for _ in range(8):
        try:
            p = _probe(core, dark, sat, opts)
        except CalibrationError:  # no measurable signal at all: more light
            p = None
        if p is None or p["signal_e"] < 2.0:
            if knob.value >= knob.hi:
                break
            knob.set(min(knob.hi, knob.value * 10))
            continue
        if p["saturated_fraction"] > 0:
            knob.set(max(knob.lo, knob.value * 0.1))
            continue
        g = p["gain_adu_per_e"]
        rate = p["signal_e"] / knob.value  # e- per knob unit
        lo_e, hi_e = opts.signal_e
        # keep the brightest level's mean + 5 sd below 90 % of saturation
        room_adu = 0.9 * sat - float(np.median(dark.mean_adu))
        while (
            hi_e > lo_e and g * hi_e + 5 * np.sqrt(g * g * hi_e + float(np.median(dark.var_adu2))) > room_adu
        ):
            hi_e *= 0.8
        if hi_e < opts.signal_e[1]:
            info["brightest_level_lowered_to_e"] = hi_e
            log.warning("calibrate: brightest level lowered to %.0f e- to stay below saturation", hi_e)
        if hi_e <= lo_e * 2:
            raise CalibrationError(
                f"the camera saturates ({sat:g} ADU) near {hi_e:.0f} e- at gain {g:.3g} ADU/e-: no room for "
                f"{opts.levels} levels from {lo_e:g} e-; lower --signal-e or check --saturation-adu"
            )
        targets = np.geomspace(lo_e, hi_e, opts.levels)
        values = [float(t / rate) for t in targets]
        if values[-1] > knob.hi:
            raise CalibrationError(
                f"too little light: the brightest level ({hi_e:.0f} e-) would need {knob.name} = "
                f"{values[-1]:.4g} (limit {knob.hi:g}); {rate:.3g} e- per unit now. Raise the light "
                "(lamp/LED power, a brighter slide), or lower --signal-e"
            )
        if values[0] < knob.lo:
            raise CalibrationError(
                f"too much light: the dimmest level ({lo_e:g} e-) would need {knob.name} = {values[0]:.3g} "
                f"(limit {knob.lo:g}); dim the light, or raise --signal-e"
            )
        info.update(probe_signal_e=p["signal_e"], probe_gain_adu_per_e=g, rate_e_per_unit=rate)
        return values, info
    raise CalibrationError(
        f"too little light: no usable signal even at {knob.name} = {knob.value:g}; open the light path "
        "(shutter, lamp/LED, filter), put a uniform fluorescent slide, or pass --light-property"
    )


def _flat_level(
    core: Any,
    knob: _Knob,
    value: float,
    dark: LevelStats,
    sat: float,
    i: int,
    bar: Any,
    opts: LiveOptions,
    adapt: bool,
) -> LevelStats:
    """One flat level: a quick check (adapting the knob if allowed), then the full acquisition."""
    for _ in range(6):
        knob.set(value)
        p = _probe(core, dark, sat, opts)
        if p["saturated_fraction"] > opts.max_saturated_fraction:
            if not adapt:
                raise CalibrationError(
                    f"flat level {i + 1} ({knob.name} = {knob.value:g}) saturates "
                    f"{100 * p['saturated_fraction']:.2f} % of pixels; lower the light or the exposure"
                )
            value = knob.value * 0.6
            continue
        if p["signal_e"] < opts.min_signal_e:
            if not adapt or knob.value >= knob.hi:
                raise CalibrationError(
                    f"flat level {i + 1} ({knob.name} = {knob.value:g}) gives only {p['signal_e']:.2g} e-; "
                    "raise the light or lengthen the exposure"
                )
            value = min(knob.hi, knob.value * 2)
            continue
        break
    label = f"level {i + 1} ({knob.name} {knob.value:.4g})"
    st = _stats(
        core,
        opts.frames,
        label,
        sat,
        bar,
        opts,
        **({} if knob.name == "exposure_ms" else {knob.name: knob.value}),
    )
    check_flat_level(
        st, dark, min_signal_e=opts.min_signal_e, max_saturated_fraction=opts.max_saturated_fraction
    )
    return st


def calibrate_live(
    core: Any,
    output: str | os.PathLike[str] | None,
    *,
    options: LiveOptions | None = None,
    report: str | os.PathLike[str] | None = None,
    camera: str | None = None,
    progress: bool = False,
) -> CalibrationFit:
    """Calibrate the current camera of ``core`` and write the file (if ``output``).

    Parameters
    ----------
    core : pymmcore_plus.CMMCorePlus
        A loaded core, not acquiring.
    output : path or None
        Calibration file to write (atomically); ``None`` returns the fit only.
    options : LiveOptions
        What to acquire.
    report : path, optional
        PNG report to write.
    camera : str, optional
        Name recorded in the file (default: the camera label and its device name).
    progress : bool
        Show the progress over frames: a bar on a terminal, log lines (INFO) otherwise.

    Raises
    ------
    CalibrationError
        No camera or shutter, camera busy, 8-bit camera, too little or too much light;
        the camera settings are restored in every case.
    """

    opts = options or LiveOptions()
    for target, what in ((output, "calibration"), (report, "report")):
        if target is not None:
            t = Path(target)
            if t.is_dir():
                raise CalibrationError(f"the {what} output {t} is a folder; give a file name")
            check_writable_dir(t.parent if str(t.parent) else Path("."), what)
    check_level_counts(opts.darks, [opts.frames] * opts.levels)
    if opts.light_values is not None and len(opts.light_values) != opts.levels:
        opts = LiveOptions(**{**opts.__dict__, "levels": len(opts.light_values)})
        check_level_counts(opts.darks, [opts.frames] * opts.levels)
    if core.isSequenceRunning():
        raise CalibrationError(
            "the camera is acquiring (a live stream or sequence is running); stop it first"
        )

    with CoreSettings(core, what="calibrate") as st:
        cam = st.camera
        if not st.shutter:
            raise CalibrationError(
                "this configuration has no shutter (Core-Shutter is empty), so darks cannot be taken: "
                "add a shutter, or acquire darks and flats yourself and use --dark/--flat"
            )
        if core.getBytesPerPixel() != 2:
            raise CalibrationError(
                f"the camera gives {8 * core.getBytesPerPixel()}-bit pixels; calibration needs its raw "
                "16-bit ADU: set its pixel type / bit depth to 16 bit"
            )
        for dev, prop, value in opts.properties:
            st.set_property(dev, prop, value)
        if core.hasProperty(cam, "Binning") and _binning(core.getProperty(cam, "Binning")) != 1:
            if core.isPropertyReadOnly(cam, "Binning"):
                raise CalibrationError(
                    "the camera is binned and its Binning is read-only; calibrate unbinned"
                )
            st.set_property(cam, "Binning", "1")
        core.clearROI()
        if opts.roi is not None:
            x, y, w, h = opts.roi
            sw, sh = core.getImageWidth(), core.getImageHeight()
            if x + w > sw or y + h > sh:
                raise CalibrationError(f"--roi {w}×{h} at ({x}, {y}) does not fit the {sw}×{sh} sensor")
            core.setROI(x, y, w, h)
        sat = opts.saturation_adu or float(2 ** core.getImageBitDepth() - 1)
        core.setAutoShutter(False)
        if opts.exposure_ms is not None:
            core.setExposure(opts.exposure_ms)
        base_exposure = core.getExposure()
        total = opts.darks + opts.levels * opts.frames
        with progress_bar(total, "calibrate", enabled=progress) as bar:
            core.setShutterOpen(False)
            dark = _stats(core, opts.darks, f"darks ({base_exposure:g} ms)", sat, bar, opts)
            core.setShutterOpen(True)
            knob = _Knob(core, st, opts)
            plan_info: dict[str, Any] = {}
            if opts.light_values is not None:
                values, adapt = [float(v) for v in opts.light_values], False
            else:
                values, plan_info = _plan(core, knob, dark, sat, opts)
                adapt = True
            flats = [_flat_level(core, knob, v, dark, sat, i, bar, opts, adapt) for i, v in enumerate(values)]
            core.setShutterOpen(False)
        name = camera or f"{cam} ({core.getDeviceName(cam)})"
        live_meta = {
            "acquisition": {
                "mode": "live",
                "knob": knob.name,
                "dark_exposure_ms": base_exposure,
                "saturation_adu": sat,
                "properties_set": [list(p) for p in opts.properties],
                **plan_info,
            }
        }
        fit = fit_calibration(
            dark,
            flats,
            camera=name,
            roi=opts.roi,
            min_signal_e=opts.min_signal_e,
            max_saturated_fraction=opts.max_saturated_fraction,
            extra_meta=live_meta,
        )
    if output is not None:
        write_calibration(output, fit.calibration)
    if report is not None:
        write_report(fit, report)
    return fit


@contextlib.contextmanager
def _loaded_core(config: str | os.PathLike[str] | None, seed: int) -> Iterator[Any]:
    if config is None:
        raise CalibrationError("live calibration needs --config RIG.cfg (the simulator: drivers/simcam.cfg)")
    path = Path(config)
    if not path.is_file():
        raise CalibrationError(f"configuration {path} does not exist")
    try:
        if simulated_camera_label(path) is not None:  # the simulator takes the seed before it starts
            core, _ = load_sim_core(str(path), seed=seed)
        else:
            core = load_core(path)
    except (RuntimeError, ValueError, OSError) as exc:
        raise CalibrationError(f"could not load the configuration {path}: {exc}") from exc
    try:
        yield core
    finally:
        with contextlib.suppress(Exception):
            core.unloadAllDevices()


def simulator_defaults(opts: LiveOptions, label: str) -> LiveOptions:
    """``opts`` with the simulated camera ``label`` on its flat scene and lit by ``LightLevel``."""
    changes: dict[str, Any] = {}
    if not any(p[0] == label and p[1] == "Scene" for p in opts.properties):
        changes["properties"] = (*opts.properties, (label, "Scene", "flat"))
    if opts.light_property is None and opts.light_values is None:
        changes["light_property"] = (label, "LightLevel")
    if changes:
        log.info(
            "%s is the simulated camera: calibrating on its uniform scene%s",
            label,
            ", the light set with its LightLevel" if "light_property" in changes else "",
        )
    return replace(opts, **changes)


def calibrate_live_config(
    config: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    options: LiveOptions | None = None,
    report: str | os.PathLike[str] | None = None,
    camera: str | None = None,
    progress: bool = False,
    seed: int = 0,
) -> CalibrationFit:
    """Load a Micro-Manager configuration and run :func:`calibrate_live` on its camera.

    On the simulator (a configuration that loads ``SimSCMOSCamera``) the camera is pointed at
    its uniform scene (``Scene`` flat, as a rig is at a uniform fluorescent slide) and the light
    is set with its ``LightLevel`` (the excitation power) unless options say otherwise, so the
    README's plain command works there and every level is taken at the darks' exposure.
    """
    label = simulated_camera_label(config) if config is not None and Path(config).is_file() else None
    if label is not None:
        options = simulator_defaults(options or LiveOptions(), label)
    with _loaded_core(config, seed) as core:
        return calibrate_live(core, output, options=options, report=report, camera=camera, progress=progress)
