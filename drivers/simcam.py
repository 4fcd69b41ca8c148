"""A simulated sCMOS camera, shutter and replay camera for pymmcore-plus ``UniMMCore``.

Everything in livedenoise is tested against this camera, so its physics is the real
thing, per pixel::

    expected_e = exposure_s * (flux(x, y, t) * LightLevel * shutter_open + dark_e_per_s)
    adu        = offset_adu + gain_adu_per_e * (Poisson(expected_e) + Normal(0, read_var_e2))

rounded and clipped to uint16 per physical pixel; binning sums b x b physical pixels (each
with its own offset, gain and noise), as digital sCMOS binning does. The maps are seeded
(pre-init ``Seed``); :meth:`SimSCMOSCamera.true_calibration` returns them.

Devices (load them with ``drivers/simcam.cfg``, or :func:`load_sim_core`):

- :class:`SimSCMOSCamera`: properties ``Exposure`` (ms), ``Binning`` (1, 2, 4),
  ``LightLevel``, ``Scene`` (cells, beads, flat), ``Motion`` (0 freezes the scene),
  ``ReadoutTime`` (ms, read-only), ``LineTimeUs``; pre-init ``SensorWidth``,
  ``SensorHeight``, ``Seed``, ``Illumination``.
- :class:`SimShutter`: ``State`` 0/1. A closed shutter makes the cameras of its light path
  (same core, same pre-init ``Illumination`` name) see no light: dark frames. It starts
  open. UniMMCore's auto-shutter does not drive Python shutters; the shipped config
  turns auto-shutter off so that MDA never closes it behind the user's back.
- :class:`ReplayCamera`: replays a preloaded uint16 stack in a loop (benchmarks).

Timing: a sequence paces frames with a monotonic clock at ``max(exposure, readout)``
(readout = half the physical rows x ``LineTimeUs``: the two halves of the sensor are read in
parallel, 10 ms for 2048 rows; sCMOS overlap mode); the first frame (and a
snap) arrives after exposure + readout. The scene clock is simulated (it advances one frame
period per frame), so frames are reproducible from the seed whatever the machine's load.
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pymmcore_plus import Keyword as KW
from pymmcore_plus.experimental.unicore import CameraDevice, pymm_property

from livedenoise.acquisition.core import load_core
from livedenoise.calibration.maps import Calibration

from . import config_path
from ._poisson import PoissonAlias, add_sparse_poisson
from ._replay import ReplayCamera
from ._scene import SCENES, make_scene
from ._shutter import SimShutter, _Choices, light_on

if TYPE_CHECKING:
    from pymmcore_plus.experimental.unicore import UniMMCore

    from livedenoise.calibration.maps import Calibration

__all__ = [
    "ReplayCamera",
    "SimSCMOSCamera",
    "SimShutter",
    "load_sim_core",
    "python_device",
    "simulated_camera_label",
]

log = logging.getLogger("livedenoise")

# A UniMMCore that has run a sequence leaves reference cycles whose destruction during
# interpreter finalization can abort the process ("FATAL: exception not rethrown"), even
# after a clean stop and unloadAllDevices(). Collecting them while the interpreter is still
# intact (atexit) prevents it; a program may also call gc.collect() itself before exiting.
atexit.register(gc.collect)

DEFAULT_SENSOR = (2048, 2048)  # (height, width)
DEFAULT_EXPOSURE_MS = 20.0
# ORCA-Flash4.0 / Zyla-class rolling shutter: the two sensor halves are read in parallel
# from the centre, one row pair per line time: 2048 rows in 1024 x 9.74 us = 10 ms (100 fps)
LINE_TIME_US = 9.74
TRUTH_FRAMES = 64
TRUTH_MAX_BYTES = 256 * 2**20
EXPOSURE_LIMITS_MS = (0.01, 60_000.0)
# frames of at least this many physical pixels are rendered in RENDER_BANDS row bands in parallel,
# each band with its own seeded stream (so a frame depends on the seed only, not on the machine)
PARALLEL_MIN_PIXELS = 1024 * 1024
RENDER_BANDS = 2


# -- the sensor ------------------------------------------------------------------------------


class _Sensor:
    """Per-pixel maps of a simulated sCMOS sensor (float32, full sensor)."""

    def __init__(self, shape: tuple[int, int], seed: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E4507]))
        h, w = shape
        col = rng.normal(0.0, 1.5, (1, w))
        row = rng.normal(0.0, 0.3, (h, 1))
        self.offset_adu = (100.0 + col + row + rng.normal(0.0, 0.8, shape)).astype(np.float32)
        spread = np.clip(rng.normal(0.0, 0.05, shape), -0.2, 0.2)  # +-5% per pixel
        self.gain_adu_per_e = (2.0 * (1.0 + spread)).astype(np.float32)
        # read noise: skewed (log-normal, median ~1.6 e- rms) plus a tail of noisy pixels
        sigma = 1.6 * np.exp(rng.normal(0.0, 0.25, shape))
        noisy = rng.random(shape) < 0.003
        sigma[noisy] = rng.uniform(3.0, 10.0, int(noisy.sum()))
        self.read_var_e2 = np.clip(sigma, 0.6, 10.0).astype(np.float32) ** 2
        # dark current: cooled sCMOS ~0.1 e-/px/s; a few hot pixels up to 2000 e-/px/s
        self.dark_e_per_s = (0.1 * np.exp(rng.normal(0.0, 0.3, shape))).astype(np.float32)
        n_hot = max(3, round(1e-4 * h * w))
        hot = rng.choice(h * w, n_hot, replace=False)
        self.dark_e_per_s.ravel()[hot] = np.exp(rng.uniform(np.log(50.0), np.log(2000.0), n_hot))
        self.hot_pixels = np.column_stack(np.unravel_index(np.sort(hot), shape)).astype(int)
        self.read_std_e = np.sqrt(self.read_var_e2)
        for a in (self.offset_adu, self.gain_adu_per_e, self.read_var_e2, self.dark_e_per_s, self.read_std_e):
            a.setflags(write=False)


class _Geometry:
    """Cropped maps for one (x, y, w, h, binning) readout (x, y, w, h in binned pixels)."""

    def __init__(self, sensor: _Sensor, x: int, y: int, w: int, h: int, b: int) -> None:
        self.key = (x, y, w, h, b)
        self.x, self.y, self.w, self.h, self.b = x, y, w, h, b
        self.py, self.px, self.ph, self.pw = y * b, x * b, h * b, w * b
        sl = np.s_[self.py : self.py + self.ph, self.px : self.px + self.pw]
        self.offset = np.ascontiguousarray(sensor.offset_adu[sl])
        self.gain = np.ascontiguousarray(sensor.gain_adu_per_e[sl])
        self.read_std = np.ascontiguousarray(sensor.read_std_e[sl])
        self.dark = np.ascontiguousarray(sensor.dark_e_per_s[sl])
        self.flux = np.empty((self.ph, self.pw), np.float32)
        self.work = np.empty((self.ph, self.pw), np.float32)
        self._uniform_buffers: tuple[np.ndarray, np.ndarray] | None = None
        self._dark_cumsums: dict[tuple[int, int], np.ndarray] = {}

    def uniform_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """``(counts float32, uniforms float64)`` work buffers of the uniform-scene sampler."""
        if self._uniform_buffers is None:
            shape = (self.ph, self.pw)
            self._uniform_buffers = (np.empty(shape, np.float32), np.empty(shape, np.float64))
        return self._uniform_buffers

    def dark_cumsum(self, r0: int, r1: int) -> np.ndarray:
        """Cumulative dark current (e-/s) over rows ``r0:r1``, for the sparse dark events."""
        key = (r0, r1)
        if key not in self._dark_cumsums:
            self._dark_cumsums[key] = np.cumsum(self.dark[r0:r1].ravel(), dtype=np.float64)
        return self._dark_cumsums[key]


# -- the camera ------------------------------------------------------------------------------


class SimSCMOSCamera(CameraDevice):
    """Simulated sCMOS camera: per-pixel offset, gain, read noise and dark current, Poisson
    shot noise, a moving PSF-blurred scene, ROI, binning and exposure/readout-limited timing.

    Use through a ``UniMMCore`` (``drivers/simcam.cfg`` or :func:`load_sim_core`). Besides
    the core API it offers :meth:`true_calibration` (the real maps, as a
    :class:`~livedenoise.calibration.maps.Calibration`) and :meth:`truth` (the noise-free expected
    photoelectrons of a recent frame; every frame's metadata carries ``"SimFrame"``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._settings = threading.Lock()  # guards settings read by the acquisition thread
        self._render_lock = threading.Lock()  # one frame rendered at a time
        self._truth_lock = threading.Lock()
        self._sensor_shape = DEFAULT_SENSOR
        self._seed = 0
        self._path = "default"
        self._exposure_ms = DEFAULT_EXPOSURE_MS
        self._binning = 1
        self._roi: tuple[int, int, int, int] | None = None  # binned pixels, None = full
        self._light_level = 1.0
        self._scene_name = "cells"
        self._motion = 1.0
        self._line_time_us = LINE_TIME_US
        self._sensor: _Sensor | None = None
        self._scene: Any = None
        self._rng: np.random.Generator | None = None
        self._band_rngs: list[np.random.Generator] = []
        self._aliases: dict[float, PoissonAlias] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._geom: _Geometry | None = None
        self._t_scene_s = 0.0
        self._truth: OrderedDict[int, np.ndarray] = OrderedDict()
        self._run = -1
        self._calibration: Calibration | None = None
        self.late_frames = 0  # frames that came later than the frame period (slow machine)
        self.set_property_limits(KW.Exposure, EXPOSURE_LIMITS_MS)
        self.set_property_allowed_values(KW.Binning, _Choices((1, 2, 4)))

    # -- pre-init properties ------------------------------------------------------------

    def _check_pre_init(self, name: str) -> None:
        if self._sensor is not None:
            raise ValueError(
                f"{name} is a pre-initialization property; set it before the camera is "
                "initialized (in the .cfg, above 'Property,Core,Initialize,1')"
            )

    @pymm_property(is_pre_init=True, limits=(8, 8192), property_type=int, name="SensorWidth")
    def sensor_width(self) -> int:
        """Sensor width in physical pixels."""
        return self._sensor_shape[1]

    @sensor_width.setter
    def sensor_width(self, value: int | str) -> None:
        self._check_pre_init("SensorWidth")
        self._sensor_shape = (self._sensor_shape[0], int(float(value)))

    @pymm_property(is_pre_init=True, limits=(8, 8192), property_type=int, name="SensorHeight")
    def sensor_height(self) -> int:
        """Sensor height in physical pixels."""
        return self._sensor_shape[0]

    @sensor_height.setter
    def sensor_height(self, value: int | str) -> None:
        self._check_pre_init("SensorHeight")
        self._sensor_shape = (int(float(value)), self._sensor_shape[1])

    @pymm_property(is_pre_init=True, limits=(0, 2**31 - 1), property_type=int, name="Seed")
    def seed(self) -> int:
        """Seed of the sensor maps, the scene and the noise."""
        return self._seed

    @seed.setter
    def seed(self, value: int | str) -> None:
        self._check_pre_init("Seed")
        self._seed = int(float(value))

    @pymm_property(is_pre_init=True, property_type=str, name="Illumination")
    def illumination(self) -> str:
        """Light path: SimShutters with this name (in the same core) gate the light."""
        return self._path

    @illumination.setter
    def illumination(self, value: str) -> None:
        self._check_pre_init("Illumination")
        self._path = str(value).strip() or "default"

    # -- runtime properties ---------------------------------------------------------------

    @pymm_property(limits=(0.0, 1000.0), property_type=float, name="LightLevel")
    def light_level(self) -> float:
        """Multiplier of the photon flux (excitation power); 0 = no light."""
        return self._light_level

    @light_level.setter
    def light_level(self, value: float | str) -> None:
        with self._settings:
            self._light_level = float(value)

    @pymm_property(allowed_values=SCENES, property_type=str, name="Scene")
    def scene(self) -> str:
        """What the camera looks at: cells, beads or flat (uniform, for flat frames)."""
        return self._scene_name

    @scene.setter
    def scene(self, value: str) -> None:
        value = str(value).strip()
        with self._settings:
            if value != self._scene_name and self._sensor is not None:
                self._scene = make_scene(value, self._sensor_shape, self._seed)
            self._scene_name = value

    @pymm_property(limits=(0.0, 100.0), property_type=float, name="Motion")
    def motion(self) -> float:
        """Speed of the scene's motion (1 = default drift and diffusion; 0 = frozen)."""
        return self._motion

    @motion.setter
    def motion(self, value: float | str) -> None:
        with self._settings:
            self._motion = float(value)

    @pymm_property(limits=(0.1, 1000.0), property_type=float, name="LineTimeUs")
    def line_time_us(self) -> float:
        """Rolling-shutter line time in microseconds (readout = physical rows / 2 x this)."""
        return self._line_time_us

    @line_time_us.setter
    def line_time_us(self, value: float | str) -> None:
        with self._settings:
            self._line_time_us = float(value)

    # -- standard camera properties ---------------------------------------------------------

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        value = float(exposure)
        lo, hi = EXPOSURE_LIMITS_MS
        if not lo <= value <= hi:
            raise ValueError(f"exposure must be {lo}-{hi} ms, got {exposure!r}")
        with self._settings:
            self._exposure_ms = value

    def get_binning(self) -> int:
        return self._binning

    def set_binning(self, value: int | str) -> None:
        b = int(float(value))
        if b not in (1, 2, 4):
            raise ValueError(f"binning must be 1, 2 or 4, got {value!r}")
        with self._settings:
            if b != self._binning:
                self._roi = None  # as Micro-Manager cameras do: a new binning clears the ROI
            self._binning = b

    def _readout_ms(self) -> float:
        _, _, _, h = self.get_roi()
        return math.ceil(h * self._binning / 2) * self._line_time_us / 1000.0

    def get_readout_time(self) -> float:
        """Time to read the current ROI, in ms: ceil(physical rows / 2) x LineTimeUs."""
        return self._readout_ms()

    def get_camera_name(self) -> str:
        return "livedenoise simulated sCMOS"

    # -- shape, ROI --------------------------------------------------------------------------

    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def _binned_sensor(self) -> tuple[int, int]:
        h, w = self._sensor_shape
        return h // self._binning, w // self._binning

    def shape(self) -> tuple[int, int]:
        _, _, w, h = self.get_roi()
        return (h, w)

    def get_roi(self) -> tuple[int, int, int, int]:
        if self._roi is not None:
            return self._roi
        h, w = self._binned_sensor()
        return (0, 0, w, h)

    def set_roi(self, x: int, y: int, width: int, height: int) -> None:
        x, y, width, height = int(x), int(y), int(width), int(height)
        h, w = self._binned_sensor()
        if x < 0 or y < 0 or width < 1 or height < 1 or x + width > w or y + height > h:
            raise ValueError(
                f"ROI {width}x{height} at ({x}, {y}) does not fit the {w}x{h} sensor "
                f"(binning {self._binning}; ROI is given in binned pixels)"
            )
        with self._settings:
            self._roi = None if (x, y, width, height) == (0, 0, w, h) else (x, y, width, height)

    def clear_roi(self) -> None:
        with self._settings:
            self._roi = None

    # -- life cycle --------------------------------------------------------------------------

    def initialize(self) -> None:
        """Generate the sensor maps and the scene from the pre-init properties."""
        if self._sensor is not None:
            return
        t0 = time.perf_counter()
        big = self._sensor_shape[0] * self._sensor_shape[1] >= PARALLEL_MIN_PIXELS
        if big:  # seconds at 2048²: say so
            log.info(
                "simulated sCMOS %dx%d: generating its per-pixel maps and scene ...",
                *self._sensor_shape[::-1],
            )
        sensor = _Sensor(self._sensor_shape, self._seed)
        self._rng = np.random.default_rng(np.random.SeedSequence([self._seed, 0x4015E]))
        self._band_rngs = [
            np.random.default_rng(np.random.SeedSequence([self._seed, 0x4015E, band]))
            for band in range(RENDER_BANDS)
        ]
        self._scene = make_scene(self._scene_name, self._sensor_shape, self._seed)
        self._sensor = sensor
        log.log(
            logging.INFO if big else logging.DEBUG,
            "simulated sCMOS %dx%d (seed %d) ready in %.2f s",
            self._sensor_shape[1],
            self._sensor_shape[0],
            self._seed,
            time.perf_counter() - t0,
        )

    def shutdown(self) -> None:
        with self._truth_lock:
            self._truth.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _ready(self) -> _Sensor:
        if self._sensor is None:
            self.initialize()
        assert self._sensor is not None
        return self._sensor

    # -- what a test or the demo may ask -------------------------------------------------------

    @property
    def sensor_shape(self) -> tuple[int, int]:
        """(height, width) of the sensor in physical pixels."""
        return self._sensor_shape

    @property
    def dark_current_e_per_s(self) -> np.ndarray:
        """Dark current map (e-/pixel/s, full sensor); hot pixels are its outliers."""
        return self._ready().dark_e_per_s

    @property
    def hot_pixels(self) -> np.ndarray:
        """(n, 2) array of (row, column) of the hot pixels."""
        return self._ready().hot_pixels

    def illuminated(self) -> bool:
        """True if no shutter of this camera's light path (same core) is closed."""
        return light_on(self, self._path)

    def true_calibration(self) -> Calibration:
        """The simulator's own maps as a full-sensor, unbinned ``Calibration``.

        The offset excludes dark current: hot pixels add ``dark_current_e_per_s * exposure``
        on top of it (a dark-frame calibration folds that into its offset, as on a real
        camera).
        """

        sensor = self._ready()
        if self._calibration is None:
            meta = {
                "camera": self.get_label() or type(self).__name__,
                "source": "simulator",
                "seed": self._seed,
                "created": datetime.now(UTC).isoformat(),
                "hot_pixels": sensor.hot_pixels.tolist(),
            }
            self._calibration = Calibration(
                sensor.offset_adu, sensor.gain_adu_per_e, sensor.read_var_e2, meta=meta
            )
        return self._calibration

    def truth(self, frame_id: int) -> np.ndarray | None:
        """Noise-free expected photoelectrons of frame ``frame_id`` of the current (or last)
        sequence, ROI and binning applied (a binned pixel's truth is the sum of its physical
        pixels); None once the frame has left the history (the last 64 frames, at most
        256 MB)."""
        with self._truth_lock:
            return self._truth.get(int(frame_id))

    # -- acquisition ---------------------------------------------------------------------------

    def _snapshot(self) -> tuple[_Geometry, float, float, float, float]:
        sensor = self._ready()
        with self._settings:
            x, y, w, h = self.get_roi()
            key = (x, y, w, h, self._binning)
            if self._geom is None or self._geom.key != key:
                self._geom = _Geometry(sensor, *key)
            readout_ms = self._readout_ms()
            return self._geom, self._exposure_ms, readout_ms, self._light_level, self._motion

    def _render(
        self, g: _Geometry, exposure_ms: float, light: float, out: np.ndarray
    ) -> tuple[np.ndarray, bool]:
        """Fill ``out`` (uint16, binned ROI) with one frame; returns (truth, shutter open)."""
        assert self._rng is not None
        exp_s = exposure_ms / 1000.0
        is_open = light_on(self, self._path)
        with self._settings:
            scene = self._scene
        flux = scene.flux(self._t_scene_s, g.py, g.px, g.ph, g.pw, g.flux)
        lam = np.multiply(flux, np.float32(exp_s * light * is_open))
        lam += g.dark * np.float32(exp_s)
        noise = g.work
        # one mean for every pixel (a closed shutter, the flat scene): the fast exact sampler
        level = getattr(scene, "uniform_e_per_s", None) if is_open else 0.0
        uniform = None if level is None else (self._alias(float(level) * exp_s * light), exp_s)
        if lam.size < PARALLEL_MIN_PIXELS:
            self._noisy_adu(self._rng, lam, g, (0, g.ph), uniform)
        else:  # large frames: row bands on threads, each with its own stream (numpy frees the GIL)
            bands = self._band_rngs
            rows = np.linspace(0, g.ph, len(bands) + 1).astype(int)
            parts = [(int(rows[i]), int(rows[i + 1])) for i in range(len(bands))]
            list(
                self._pool().map(
                    lambda i: self._noisy_adu(bands[i], lam, g, parts[i], uniform), range(len(bands))
                )
            )
        if g.b == 1:
            np.copyto(out, noise, casting="unsafe")
            return lam, is_open
        b = g.b
        summed = noise.reshape(g.h, b, g.w, b).sum(axis=(1, 3))
        np.clip(summed, 0, 65535, out=summed)
        np.copyto(out, summed, casting="unsafe")
        return lam.reshape(g.h, b, g.w, b).sum(axis=(1, 3), dtype=np.float32), is_open

    def _alias(self, lam0: float) -> PoissonAlias:
        table = self._aliases.get(lam0)
        if table is None:
            if len(self._aliases) >= 8:
                self._aliases.pop(next(iter(self._aliases)))
            table = self._aliases[lam0] = PoissonAlias(lam0)
        return table

    @staticmethod
    def _noisy_adu(
        rng: np.random.Generator,
        lam: np.ndarray,
        g: _Geometry,
        band: tuple[int, int],
        uniform: tuple[PoissonAlias, float] | None = None,
    ) -> None:
        """ADU (float, rounded and clipped) of rows ``band`` into ``g.work``: shot + read noise.

        ``uniform`` = (alias table of the common mean, exposure s): Poisson of the common mean from
        the table plus the dark current as sparse events (drivers/_poisson.py), exact and ~3x faster.
        """
        rows = np.s_[band[0] : band[1], :]
        if uniform is None:
            counts = rng.poisson(lam[rows])
        else:
            table, exp_s = uniform
            c, u = g.uniform_buffers()
            counts = table.sample(rng, c[rows], u[rows])
            add_sparse_poisson(rng, counts, g.dark_cumsum(*band), exp_s)
        noise = g.work[rows]
        rng.standard_normal(out=noise, dtype=np.float32)
        noise *= g.read_std[rows]
        noise += counts
        noise *= g.gain[rows]
        noise += g.offset[rows]
        np.rint(noise, out=noise)
        np.clip(noise, 0, 65535, out=noise)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(len(self._band_rngs), thread_name_prefix="simcam-render")
        return self._executor

    def _keep_truth(self, frame_id: int, truth: np.ndarray) -> None:
        truth.setflags(write=False)
        with self._truth_lock:
            self._truth[frame_id] = truth
            limit = max(1, min(TRUTH_FRAMES, TRUTH_MAX_BYTES // max(truth.nbytes, 1)))
            while len(self._truth) > limit:
                self._truth.popitem(last=False)

    def start_sequence(
        self, n: int | None, get_buffer: Callable[[Sequence[int], Any], np.ndarray]
    ) -> Iterator[Mapping]:
        """Acquire ``n`` frames (None: until stopped), paced by exposure and readout."""
        self._ready()
        with self._truth_lock:
            self._truth.clear()
            self._run += 1
            run = self._run
        dtype = self.dtype()
        # UniMMCore runs this generator in its AcquisitionThread, whose stop_event is set by
        # stopSequenceAcquisition: waiting on it makes a stop immediate even for long
        # exposures (snaps run in the caller's thread, which has none).
        stop = getattr(threading.current_thread(), "stop_event", None)
        if not isinstance(stop, threading.Event):
            stop = None
        k = 0
        ready = None  # monotonic time at which the previous frame was complete
        while n is None or k < n:
            g, exposure_ms, readout_ms, light, motion = self._snapshot()
            period_s = max(exposure_ms, readout_ms) / 1000.0
            if ready is None:
                ready = time.monotonic() + (exposure_ms + readout_ms) / 1000.0
            else:
                ready += period_s
            buf = get_buffer((g.h, g.w), dtype)
            with self._render_lock:
                t_scene = self._t_scene_s
                truth, is_open = self._render(g, exposure_ms, light, buf)
                self._t_scene_s += motion * period_s
            self._keep_truth(k, truth)
            now = time.monotonic()
            if now < ready:
                if stop is None:
                    time.sleep(ready - now)
                elif stop.wait(ready - now):
                    return  # stopped during the exposure: that frame is never read out
            elif now > ready + 0.5 * period_s:
                self.late_frames += 1
                ready = now  # a camera cannot catch up: the next frame is a full period later
            yield {
                "SimFrame": k,
                "SimRun": run,
                "SimTime-s": round(t_scene, 6),
                "SimTimestamp-s": ready,
                "SimShutterOpen": int(is_open),
                KW.Metadata_Exposure: exposure_ms,
                KW.Binning: g.b,
                KW.Metadata_ROI_X: str(g.x),
                KW.Metadata_ROI_Y: str(g.y),
                KW.Metadata_Width: str(g.w),
                KW.Metadata_Height: str(g.h),
                "LightLevel": light,
                "Scene": self._scene_name,
            }
            k += 1


# -- building a core -------------------------------------------------------------------------------


def python_device(core: UniMMCore, label: str) -> Any:
    """The Python device object loaded in ``core`` under ``label``.

    UniMMCore has no public accessor for its Python devices; this reads its device
    manager and raises a clear error if the label is not a Python device.
    """
    if not core.isPyDevice(label):
        raise KeyError(
            f"{label!r} is not a Python device of this core (loaded: "
            f"{', '.join(core.getLoadedDevices()) or 'none'})"
        )
    return core._pydevices[label]


def simulated_camera_label(config: str | Path) -> str | None:
    """The label of the :class:`SimSCMOSCamera` a configuration loads, or None if it loads none."""
    for line in Path(config).read_text(errors="replace").splitlines():
        parts = [p.strip() for p in line.removeprefix("#py ").split(",")]
        if len(parts) == 4 and parts[0] == "pyDevice" and parts[3] == SimSCMOSCamera.__name__:
            return parts[1]
    return None


def load_sim_core(
    config: str | Path | None = None,
    *,
    sensor_shape: tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[UniMMCore, SimSCMOSCamera]:
    """A ready ``UniMMCore`` with the simulated camera (the shipped ``simcam.cfg`` by default).

    Parameters
    ----------
    config : path, optional
        A Micro-Manager configuration with a ``SimSCMOSCamera`` (``#py pyDevice`` line).
    sensor_shape : (height, width), optional
        Overrides the camera's pre-init ``SensorHeight``/``SensorWidth`` (small sensors make
        fast tests).
    seed : int
        The camera's pre-init ``Seed`` (maps, scene and noise); overrides the config's.

    Returns
    -------
    (core, camera)
        The core, with the camera as its current camera, and the camera object (for
        ``true_calibration()``, ``truth()``).
    """

    path = Path(config) if config is not None else config_path("simcam.cfg")
    if not path.is_file():
        raise FileNotFoundError(f"configuration {path} does not exist")
    lines = path.read_text().splitlines()
    cam_label = simulated_camera_label(path)
    if cam_label is None:
        raise ValueError(
            f"{path} loads no {SimSCMOSCamera.__name__} (expected a line "
            f"'#py pyDevice,Camera,livedenoise.drivers.simcam,{SimSCMOSCamera.__name__}')"
        )
    extra = [f"#py Property,{cam_label},Seed,{int(seed)}"]
    if sensor_shape is not None:
        h, w = (int(v) for v in sensor_shape)
        extra += [f"#py Property,{cam_label},SensorHeight,{h}", f"#py Property,{cam_label},SensorWidth,{w}"]
    init_line = "Property,Core,Initialize,1"
    init = next(
        (i for i, ln in enumerate(lines) if ln.removeprefix("#py ").replace(" ", "") == init_line),
        None,
    )
    if init is None:
        raise ValueError(f"{path} has no 'Property,Core,Initialize,1' line")
    text = "\n".join([*lines[:init], *extra, *lines[init:]]) + "\n"
    core = load_core(path, text=text)
    camera = python_device(core, cam_label)
    state = camera._initialized_
    if state is not True:
        raise RuntimeError(f"camera {cam_label!r} failed to initialize: {state!r}")
    if core.getCameraDevice() != cam_label:
        core.setCameraDevice(cam_label)
    return core, camera
