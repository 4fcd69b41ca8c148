"""Moving fluorescence scenes for the simulated sCMOS camera, in photoelectrons per second.

A scene maps a time ``t_s`` (scene seconds) and a sensor region to the photon flux each
physical pixel receives, in e-/s, already blurred by the microscope PSF. The camera turns
flux into expected photoelectrons (x exposure, light level, shutter) and adds the noise.

Scenes (all seeded, all deterministic functions of the seed and the sequence of times):

- ``cells``: textured cytoplasm, brighter nuclei with chromatin texture, filaments and
  puncta. The layers are rendered once (blurred by the Airy PSF) and moved by sub-pixel
  (bilinear) shifts along slow, bounded paths: the cells drift, the puncta move on top of
  them, and a smooth brightness field drifts across, so the image changes, not only moves.
- ``beads``: sub-resolution beads diffusing (Brownian motion, reflecting walls), drawn each
  frame as pixel-integrated Gaussians with the sigma that best fits the Airy disk.
- ``flat``: a uniform field, for flat frames (gain calibration).

Brightness: at a 20 ms exposure and light level 1 the background is ~2 e-, cytoplasm
~10-20 e-, nuclei and puncta peak at ~40-80 e-: photon-limited, as live imaging is.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from scipy import ndimage
from scipy.signal import lfilter
from scipy.special import erf

from livedenoise.imaging.psf import airy_psf, airy_sigma_px, convolve_fft

__all__ = ["SCENES", "BeadsScene", "CellsScene", "FlatScene", "make_scene"]

# Optics of the simulated microscope (sample plane): NA 1.3 oil, GFP-like emission.
NA = 1.3
WAVELENGTH_NM = 520.0
PIXEL_NM = 100.0

BACKGROUND_E_PER_S = 100.0  # 2 e- at 20 ms
CELL_PEAK_E_PER_S = 2500.0  # nuclei ~50 e- at 20 ms (x the 0.75-1.25 brightness field)
PUNCTUM_PEAK_E_PER_S = 3000.0
FLAT_E_PER_S = 2500.0  # 50 e- per pixel at 20 ms
BEAD_TOTAL_E_PER_S = (8000.0, 20000.0)  # photons of one bead per second (range)
BEAD_DIFFUSION_PX2_PER_S = 1.0

SCENES = ("cells", "beads", "flat")


def _shift_bilinear(
    layer: np.ndarray, y0: float, x0: float, h: int, w: int, out: np.ndarray, tmp: np.ndarray
) -> np.ndarray:
    """``out = layer`` sampled on the grid starting at fractional (y0, x0), bilinear."""
    iy, ix = math.floor(y0), math.floor(x0)
    fy, fx = y0 - iy, x0 - ix
    a = layer[iy : iy + h, ix : ix + w]
    b = layer[iy : iy + h, ix + 1 : ix + 1 + w]
    c = layer[iy + 1 : iy + 1 + h, ix : ix + w]
    d = layer[iy + 1 : iy + 1 + h, ix + 1 : ix + 1 + w]
    np.multiply(a, (1 - fy) * (1 - fx), out=out)
    for arr, wt in ((b, (1 - fy) * fx), (c, fy * (1 - fx)), (d, fy * fx)):
        if wt:
            np.multiply(arr, wt, out=tmp)
            out += tmp
    return out


class _Path:
    """A slow, bounded Lissajous path: displacement (dy, dx) in pixels at time t."""

    def __init__(self, rng: np.random.Generator, amplitude_px: float, period_s: float) -> None:
        self.amp = amplitude_px * rng.uniform(0.6, 1.0, 2)
        self.omega = 2 * np.pi / (period_s * rng.uniform(0.8, 1.25, 2))
        self.phase = rng.uniform(0, 2 * np.pi, 2)

    def __call__(self, t_s: float) -> tuple[float, float]:
        d = self.amp * np.sin(self.omega * t_s + self.phase)
        return float(d[0]), float(d[1])

    @property
    def max_px(self) -> float:
        return float(self.amp.max())


class FlatScene:
    """A uniform field (for flat frames): ``FLAT_E_PER_S`` on every pixel."""

    name = "flat"
    uniform_e_per_s = FLAT_E_PER_S  # the same flux on every pixel (the simulator samples it faster)

    def __init__(self, sensor_shape: tuple[int, int], seed: int = 0) -> None:
        self.sensor_shape = sensor_shape

    def flux(self, t_s: float, y0: int, x0: int, h: int, w: int, out: np.ndarray) -> np.ndarray:
        out.fill(FLAT_E_PER_S)
        return out


class CellsScene:
    """Cells with textured cytoplasm, nuclei, filaments and puncta, drifting and changing."""

    name = "cells"
    MARGIN = 40  # pixels of pre-rendered scene beyond each sensor edge (covers the motion)

    def __init__(self, sensor_shape: tuple[int, int], seed: int = 0) -> None:
        self.sensor_shape = (int(sensor_shape[0]), int(sensor_shape[1]))
        layers = _cells_layers(self.sensor_shape, int(seed), self.MARGIN)
        self.cells, self.puncta, self.brightness = layers.cells, layers.puncta, layers.brightness
        self.path_cells, self.path_puncta = layers.path_cells, layers.path_puncta
        self.path_brightness = layers.path_brightness
        self._tmp: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def flux(self, t_s: float, y0: int, x0: int, h: int, w: int, out: np.ndarray) -> np.ndarray:
        key = (h, w)
        if key not in self._tmp:
            self._tmp = {key: (np.empty((h, w), np.float32), np.empty((h, w), np.float32))}
        layer, tmp = self._tmp[key]
        m = self.MARGIN
        dy, dx = self.path_cells(t_s)
        _shift_bilinear(self.cells, m + y0 - dy, m + x0 - dx, h, w, out, tmp)
        by, bx = self.path_brightness(t_s)
        _shift_bilinear(self.brightness, m + y0 - by, m + x0 - bx, h, w, layer, tmp)
        out *= layer
        py, px = self.path_puncta(t_s)
        _shift_bilinear(self.puncta, m + y0 - dy - py, m + x0 - dx - px, h, w, layer, tmp)
        out += layer
        out += BACKGROUND_E_PER_S
        return out


class _CellLayers:
    """The pre-rendered, read-only layers of a ``cells`` scene (shared between cameras)."""

    def __init__(self, sensor_shape: tuple[int, int], seed: int, margin: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5CE4E]))
        hp, wp = sensor_shape[0] + 2 * margin + 2, sensor_shape[1] + 2 * margin + 2
        cells, puncta = _render_cells((hp, wp), rng)
        psf = airy_psf(NA, WAVELENGTH_NM, PIXEL_NM)
        cells = convolve_fft(cells, psf)
        puncta = convolve_fft(puncta, psf)
        scale = CELL_PEAK_E_PER_S / max(float(np.percentile(cells, 99.5)), 1e-6)
        pscale = PUNCTUM_PEAK_E_PER_S / max(float(puncta.max()), 1e-6)
        self.cells = (cells * scale).astype(np.float32)
        self.puncta = (puncta * pscale).astype(np.float32)
        self.brightness = _smooth_field((hp, wp), rng, cell_px=64, lo=0.75, hi=1.25)
        for a in (self.cells, self.puncta, self.brightness):
            a.setflags(write=False)
        # cells drift slowly; puncta move faster on top; the brightness field drifts across
        self.path_cells = _Path(rng, 12.0, 120.0)
        self.path_puncta = _Path(rng, 8.0, 25.0)
        self.path_brightness = _Path(rng, 30.0, 90.0)
        if max(self.path_cells.max_px + self.path_puncta.max_px, self.path_brightness.max_px) + 1 >= margin:
            raise AssertionError("scene motion exceeds the pre-rendered margin")


_CACHE: dict[tuple[int, int, int, int], _CellLayers] = {}
_CACHE_LOCK = threading.Lock()


def _cells_layers(sensor_shape: tuple[int, int], seed: int, margin: int) -> _CellLayers:
    """Cached layers (at most two sensor/seed combinations are kept)."""
    key = (seed, *sensor_shape, margin)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if len(_CACHE) >= 2:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = _CellLayers(sensor_shape, seed, margin)
        return _CACHE[key]


def _smooth_field(
    shape: tuple[int, int], rng: np.random.Generator, cell_px: int, lo: float, hi: float
) -> np.ndarray:
    """A smooth random field in [lo, hi], features ~``cell_px`` pixels across."""
    small = (shape[0] // cell_px + 4, shape[1] // cell_px + 4)
    f = ndimage.gaussian_filter(rng.standard_normal(small), 1.0, mode="wrap")
    f = ndimage.zoom(f, cell_px, order=3, grid_mode=True, mode="grid-wrap")[: shape[0], : shape[1]]
    f = (f - f.min()) / max(float(np.ptp(f)), 1e-9)
    return (lo + (hi - lo) * f).astype(np.float32)


def _texture(shape: tuple[int, int], rng: np.random.Generator, sigmas: tuple[float, ...]) -> np.ndarray:
    """Positive band-limited texture with mean ~1 (log-normal of filtered noise)."""
    acc = np.zeros(shape, np.float32)
    for s in sigmas:
        n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), s)
        acc += n / max(float(n.std()), 1e-9)
    acc *= 0.35 / math.sqrt(len(sigmas))
    return np.exp(acc - acc.mean()).astype(np.float32)


def _splat(img: np.ndarray, y: np.ndarray, x: np.ndarray, v: np.ndarray) -> None:
    """Add values ``v`` at fractional positions (y, x) with bilinear weights."""
    h, w = img.shape
    iy, ix = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - iy, x - ix
    corners = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx))
    for oy, ox, wt in corners:
        yy, xx = iy + oy, ix + ox
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        img.ravel()[:] += np.bincount(yy[ok] * w + xx[ok], (v * wt)[ok], minlength=h * w).astype(np.float32)


def _render_cells(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unblurred object: (cells with nuclei and filaments, puncta), relative intensities."""
    h, w = shape
    cyto = np.zeros(shape, np.float32)  # cytoplasm occupancy (0..1) x cell brightness
    nuc = np.zeros(shape, np.float32)  # nucleus occupancy x brightness
    inside = np.zeros(shape, np.float32)  # any cell
    mean_r = 65.0
    n_cells = max(3, round(0.45 * h * w / (np.pi * mean_r**2)))
    fil_y, fil_x, fil_v, pun_y, pun_x, pun_v = [], [], [], [], [], []
    for _ in range(n_cells):
        r0 = rng.uniform(40, 90)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ell, ang = rng.uniform(0.65, 1.0), rng.uniform(0, np.pi)
        harm = rng.normal(0, 0.06, 4)
        hph = rng.uniform(0, 2 * np.pi, 4)
        y0, y1 = max(0, int(cy - 1.4 * r0)), min(h, int(cy + 1.4 * r0) + 1)
        x0, x1 = max(0, int(cx - 1.4 * r0)), min(w, int(cx + 1.4 * r0) + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (yy - cy) * np.cos(ang) + (xx - cx) * np.sin(ang)
        v = (-(yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang)) / ell
        r, phi = np.hypot(u, v), np.arctan2(v, u)
        rb = r0 * (1 + sum(a * np.cos((k + 2) * phi + p) for k, (a, p) in enumerate(zip(harm, hph))))
        cell = 1 / (1 + np.exp(-(rb - r) / 1.5))
        # nucleus: smaller ellipse, off-centre
        ncy, ncx = rng.normal(0, 0.15 * r0, 2)
        rn = r0 * rng.uniform(0.3, 0.42)
        rnu = np.hypot(u - ncy, (v - ncx) * rng.uniform(0.8, 1.0))
        nucleus = cell / (1 + np.exp(-(rn - rnu) / 1.2))
        b = rng.uniform(0.7, 1.3)
        sl = np.s_[y0:y1, x0:x1]
        cyto[sl] = np.maximum(cyto[sl], cell * (1 - nucleus) * b * (0.55 + 0.45 * np.clip(1 - r / rb, 0, 1)))
        nuc[sl] = np.maximum(nuc[sl], nucleus * b)
        inside[sl] = np.maximum(inside[sl], cell)
        # filaments: smooth random walks (AR(1) curvature) from near the nucleus outwards
        nf = int(rng.integers(6, 14))
        steps = int(r0 * 2.2)  # 0.5 px steps, up to 1.1 r0 long
        a0 = rng.uniform(0, 2 * np.pi, nf)
        curv = lfilter([1.0], [1.0, -0.9], rng.normal(0, 0.02, (nf, steps)), axis=1)
        heading = a0[:, None] + rng.normal(0, 0.4, (nf, 1)) + np.cumsum(curv, axis=1)
        ys = cy + 0.9 * rn * np.sin(a0)[:, None] + np.cumsum(0.5 * np.sin(heading), axis=1)
        xs = cx + 0.9 * rn * np.cos(a0)[:, None] + np.cumsum(0.5 * np.cos(heading), axis=1)
        keep = np.arange(steps)[None, :] < (steps * rng.uniform(0.45, 1.0, nf))[:, None]
        fil_y.append(ys[keep])
        fil_x.append(xs[keep])
        fil_v.append(np.repeat(rng.uniform(0.5, 1.0, nf) * b, keep.sum(axis=1)))
        # puncta: points inside the cell
        k = int(rng.integers(15, 40))
        rr = rb.max() * np.sqrt(rng.uniform(0, 0.8, k))
        pa = rng.uniform(0, 2 * np.pi, k)
        pun_y.append(cy + rr * np.sin(pa) * ell)
        pun_x.append(cx + rr * np.cos(pa))
        pun_v.append(rng.uniform(0.4, 1.0, k))
    tex_c = _texture(shape, rng, (1.5, 5.0))
    tex_n = _texture(shape, rng, (1.0, 3.0))
    obj = cyto * tex_c + 2.2 * nuc * tex_n
    fil = np.zeros(shape, np.float32)
    if fil_y:
        # density per 0.5 px step; a blurred line's peak ~0.47/sigma x linear density
        _splat(fil, np.concatenate(fil_y), np.concatenate(fil_x), 0.5 * np.concatenate(fil_v))
    obj += 1.6 * fil * inside
    pun = np.zeros(shape, np.float32)
    if pun_y:
        _splat(pun, np.concatenate(pun_y), np.concatenate(pun_x), np.concatenate(pun_v))
    return obj, pun


class BeadsScene:
    """Sub-resolution fluorescent beads diffusing (Brownian motion, reflecting walls)."""

    name = "beads"
    MARGIN = 6

    def __init__(self, sensor_shape: tuple[int, int], seed: int = 0) -> None:
        self.sensor_shape = sensor_shape
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0xBEAD5]))
        h, w = sensor_shape
        n = max(8, round(h * w / 35.0**2))
        m = self.MARGIN
        self.pos = np.column_stack([self._rng.uniform(-m, h + m, n), self._rng.uniform(-m, w + m, n)])
        self.total = self._rng.uniform(*BEAD_TOTAL_E_PER_S, n)
        self.sigma_px = airy_sigma_px(NA, WAVELENGTH_NM, PIXEL_NM)
        self.t_s = 0.0
        self.diffusion_px2_per_s = BEAD_DIFFUSION_PX2_PER_S
        r = math.ceil(4 * self.sigma_px)
        self._k = np.arange(-r, r + 1)

    def _advance(self, t_s: float) -> None:
        dt = t_s - self.t_s
        if dt <= 0:
            return
        step = math.sqrt(2 * self.diffusion_px2_per_s * dt)
        self.pos += self._rng.normal(0, step, self.pos.shape)
        h, w = self.sensor_shape
        m = self.MARGIN
        for axis, size in ((0, h), (1, w)):
            lo, hi = -m, size + m
            p = self.pos[:, axis]
            span = hi - lo
            q = np.mod(p - lo, 2 * span)  # reflect into [lo, hi]
            self.pos[:, axis] = lo + np.where(q > span, 2 * span - q, q)
        self.t_s = t_s

    def _profile(self, centre: np.ndarray, start: np.ndarray) -> np.ndarray:
        """Pixel-integrated 1D Gaussian for each bead over pixels start + k."""
        edges = start[:, None] + np.concatenate([self._k - 0.5, [self._k[-1] + 0.5]])[None, :]
        c = erf((edges - centre[:, None]) / (math.sqrt(2) * self.sigma_px))
        return 0.5 * np.diff(c, axis=1)

    def flux(self, t_s: float, y0: int, x0: int, h: int, w: int, out: np.ndarray) -> np.ndarray:
        self._advance(t_s)
        out.fill(BACKGROUND_E_PER_S)
        r = int(self._k[-1])
        y, x = self.pos[:, 0] - y0, self.pos[:, 1] - x0
        sel = (y > -r - 1) & (y < h + r) & (x > -r - 1) & (x < w + r)
        if not sel.any():
            return out
        y, x, tot = y[sel], x[sel], self.total[sel]
        cy, cx = np.round(y), np.round(x)
        gy, gx = self._profile(y, cy), self._profile(x, cx)
        patch = tot[:, None, None] * gy[:, :, None] * gx[:, None, :]
        yy = (cy[:, None] + self._k[None, :]).astype(np.int64)[:, :, None]
        xx = (cx[:, None] + self._k[None, :]).astype(np.int64)[:, None, :]
        yy, xx = np.broadcast_to(yy, patch.shape), np.broadcast_to(xx, patch.shape)
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        add = np.bincount((yy[ok] * w + xx[ok]), patch[ok], minlength=h * w)
        out += add.reshape(h, w).astype(np.float32)
        return out


_SCENE_CLASSES = {"cells": CellsScene, "beads": BeadsScene, "flat": FlatScene}


def make_scene(name: str, sensor_shape: tuple[int, int], seed: int) -> CellsScene | BeadsScene | FlatScene:
    """A scene by name (``cells``, ``beads`` or ``flat``) for a sensor, from a seed.

    The pre-rendered ``cells`` layers are read-only and cached per (seed, sensor shape),
    so several cameras (or the cores of a test session) share them; every scene object
    has its own work buffers and state, so cameras never share mutable state.
    """
    if name not in _SCENE_CLASSES:
        raise ValueError(f"unknown scene {name!r}; choose one of {', '.join(SCENES)}")
    return _SCENE_CLASSES[name]((int(sensor_shape[0]), int(sensor_shape[1])), int(seed))
