"""Synthetic training and evaluation data: phantoms, PSF, photons and sCMOS noise.

Everything is reproducible from a seed (``np.random.default_rng``), vectorised numpy,
and in photoelectrons.

Pipeline of one frame
---------------------
1. A phantom (relative intensity) mixing dots, rings/shells, lines and filaments,
   blobs and textured cells (:func:`make_phantom`).
2. Blurred by a microscope PSF (Gaussian or Airy from NA, wavelength and pixel size,
   drawn in a range) and scaled so its bright end (99.9th percentile) sits at the
   peak photon level (log-uniform, ~1 to ~500 e-), plus a background.
   That is the noise-free expected image, the ``denoise`` target.
   The ``deconvolve`` target is the same object seen through a PSF half as wide.
3. Poisson shot noise, then the sCMOS camera: per-pixel offset, gain and read-noise
   maps, ADU quantisation, and conversion back to photoelectrons with the same maps
   (:func:`add_noise`). The input can hold small negatives, like a real frame.

Held-out data (:func:`make_eval_set`) uses a separate seed range, a different
structure mix and its own photon levels, so evaluation never sees training frames.

Sample-like data (:mod:`livedenoise.imaging.samples`): the families ``meshes``, ``nuclei``,
``puncta`` and ``tubules`` (weight 0 in :data:`TRAIN_MIX`, so the original phantoms and their
seeds are unchanged; :data:`SAMPLE_MIX` mixes all nine), ``background="sample"`` (0-30 e- with
slow drifts and out-of-focus haze) and ``psf_range="wide"`` (Gaussian sigma 0.8 px up to wide
widefield Born-Wolf PSFs), selectable in :func:`make_frame` and :class:`SyntheticPatches`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livedenoise.imaging import samples
from livedenoise.imaging.psf import (
    airy_psf,
    airy_sigma_px,
    convolve_fft,
    deconvolve_target_psf,
    gaussian_psf,
    named_psf,
)
from livedenoise.imaging.samples import _coords, _splat

__all__ = [
    "BACKGROUNDS",
    "EVAL_SEED_OFFSET",
    "HELD_OUT_MIX",
    "PSF_RANGES",
    "SAMPLE_MIX",
    "TASKS",
    "TRAIN_MIX",
    "SyntheticPatches",
    "add_noise",
    "make_eval_set",
    "make_frame",
    "make_phantom",
]

TASKS = ("denoise", "deconvolve")
STRUCTURES = ("dots", "rings", "filaments", "blobs", "cells", *samples.SAMPLE_FAMILIES)
TRAIN_MIX = {"dots": 1.0, "rings": 1.0, "filaments": 1.0, "blobs": 1.0, "cells": 1.0}
"""Relative weights of the structure families in training phantoms."""
HELD_OUT_MIX = {"dots": 0.5, "rings": 1.5, "filaments": 2.0, "blobs": 0.5, "cells": 2.0}
"""Another mix for held-out evaluation (more filaments and cells, fewer dots and blobs)."""
SAMPLE_MIX = {
    "dots": 0.5,
    "rings": 0.5,
    "filaments": 1.0,
    "blobs": 0.5,
    "cells": 1.0,
    "meshes": 1.5,
    "nuclei": 1.5,
    "puncta": 1.0,
    "tubules": 1.5,
}
"""Every family, weighted towards what samples show (networks, textured nuclei, organelles)."""
BACKGROUNDS = ("legacy", "sample")
"""``legacy``: flat, up to 15 % of the peak + 2 e-; ``sample``: :func:`samples.sample_background`."""
PSF_RANGES = ("legacy", "wide")
"""``legacy``: :func:`random_psf`; ``wide``: :func:`samples.sample_psf`."""
EVAL_SEED_OFFSET = 1_000_000_007
"""Held-out sets draw their randomness from ``seed + EVAL_SEED_OFFSET`` (training seeds stay below it)."""


# ---------------------------------------------------------------- phantoms


def _dots(rng, size, n):
    img = np.zeros((size, size), np.float32)
    ys, xs = rng.uniform(0, size - 1, (2, n))
    _splat(img, ys, xs, rng.uniform(0.3, 1.0, n).astype(np.float32) * 4.0)
    return img


def _radial(rng, size, n, shell: bool, r_range):
    yy, xx = _coords(size)
    img = np.zeros((size, size), np.float32)
    for _ in range(n):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(*r_range)
        a = rng.uniform(0.6, 1.4)  # ellipticity
        th = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(th) + dx * np.sin(th)) * a
        v = (-dy * np.sin(th) + dx * np.cos(th)) / a
        d = np.sqrt(u * u + v * v)
        if shell:
            t = rng.uniform(0.8, 2.0)
            obj = np.exp(-((d - r) ** 2) / (2 * (t / 2) ** 2))
        else:  # projected sphere
            obj = np.sqrt(np.clip(r * r - d * d, 0, None)) / r
        img += rng.uniform(0.3, 1.0) * obj.astype(np.float32)
    return img


def _filaments(rng, size, n):
    img = np.zeros((size, size), np.float32)
    for _ in range(n):
        length = rng.uniform(0.2, 1.2) * size
        steps = max(8, int(length * 2))
        th0 = rng.uniform(0, 2 * np.pi)
        curv = rng.normal(0, rng.uniform(0.0, 0.08), steps).cumsum()
        th = th0 + curv
        ys = rng.uniform(0, size) + np.cumsum(0.5 * np.sin(th))
        xs = rng.uniform(0, size) + np.cumsum(0.5 * np.cos(th))
        _splat(img, ys, xs, np.full(steps, rng.uniform(0.3, 1.0) * 0.8, np.float32))
    return img


def _smooth_noise(rng, size, scale_px):
    """Low-frequency random texture in [0, 1] (Gaussian-filtered white noise via FFT)."""
    f = np.fft.rfft2(rng.standard_normal((size, size)).astype(np.float32))
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    f *= np.exp(-2 * (np.pi * scale_px) ** 2 * (ky**2 + kx**2))
    t = np.fft.irfft2(f, s=(size, size)).astype(np.float32)
    t -= t.min()
    return t / max(float(t.max()), 1e-12)


def _cells(rng, size, n):
    yy, xx = _coords(size)
    img = np.zeros((size, size), np.float32)
    tex = _smooth_noise(rng, size, rng.uniform(1.5, 4.0))
    for _ in range(n):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(0.12, 0.35) * size
        a = rng.uniform(0.6, 1.5)
        th = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(th) + dx * np.sin(th)) * a / r
        v = (-dy * np.sin(th) + dx * np.cos(th)) / a / r
        d = np.sqrt(u * u + v * v)
        body = 1.0 / (1.0 + np.exp((d - 1.0) * 12.0))  # soft-edged cell
        nucleus = 1.0 / (1.0 + np.exp((np.hypot(u - 0.2, v) - 0.35) * 15.0))
        cyto = rng.uniform(0.2, 0.6) + rng.uniform(0.3, 1.0) * tex
        img += (body * (1 - 0.7 * nucleus) * cyto).astype(np.float32)
    return img


def _blobs(rng, size, n):
    yy, xx = _coords(size)
    img = np.zeros((size, size), np.float32)
    for _ in range(n):
        cy, cx = rng.uniform(0, size, 2)
        s = rng.uniform(1.0, 6.0)
        img += rng.uniform(0.2, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).astype(
            np.float32
        )
    return img


def make_phantom(rng: np.random.Generator, size: int, mix: dict[str, float] | None = None) -> np.ndarray:
    """A random object (relative intensity, max ~1) of ``size`` x ``size`` pixels.

    Parameters
    ----------
    rng : numpy.random.Generator
    size : int
        Side length in pixels.
    mix : dict, optional
        Relative weights of ``dots``, ``rings``, ``filaments``, ``blobs``, ``cells`` (and the
        sample-like ``meshes``, ``nuclei``, ``puncta``, ``tubules``); default :data:`TRAIN_MIX`.
        One to three families are drawn per phantom.
    """
    mix = dict(TRAIN_MIX if mix is None else mix)
    unknown = set(mix) - set(STRUCTURES)
    if unknown:
        raise ValueError(f"unknown structure families {sorted(unknown)}; expected some of {STRUCTURES}")
    names = [k for k in STRUCTURES if mix.get(k, 0) > 0]
    p = np.array([mix[k] for k in names], float)
    p /= p.sum()
    k = int(rng.integers(1, min(3, len(names)) + 1))
    chosen = rng.choice(names, size=k, replace=False, p=p)
    area = (size / 64.0) ** 2
    img = np.zeros((size, size), np.float32)
    for name in chosen:
        if name == "dots":
            part = _dots(rng, size, max(1, int(rng.uniform(3, 25) * area)))
        elif name == "rings":
            part = _radial(
                rng,
                size,
                max(1, int(rng.uniform(1, 5) * area)),
                shell=bool(rng.random() < 0.7),
                r_range=(3.0, min(14.0, size / 3)),
            )
        elif name == "filaments":
            part = _filaments(rng, size, max(1, int(rng.uniform(2, 10) * np.sqrt(area))))
        elif name == "blobs":
            part = _blobs(rng, size, max(1, int(rng.uniform(3, 15) * area)))
        elif name == "cells":
            part = _cells(rng, size, max(1, int(rng.uniform(1, 3) * np.sqrt(area))))
        else:
            part = samples.sample_family(str(name), rng, size)
        m = float(part.max())
        if m > 0:
            img += part / m * rng.uniform(0.4, 1.0)
    return img


# ---------------------------------------------------------------- optics, photons, camera


def random_psf(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A widefield PSF drawn in a realistic range (NA 0.8-1.45, 450-680 nm, 65-130 nm pixels)."""
    na = float(rng.uniform(0.8, 1.45))
    wl = float(rng.uniform(450, 680))
    px = float(rng.uniform(65, 130))
    sigma = airy_sigma_px(na, wl, px)
    if rng.random() < 0.5:
        return airy_psf(na, wl, px), {
            "psf": "airy",
            "na": na,
            "wavelength_nm": wl,
            "pixel_nm": px,
            "sigma_px": sigma,
        }
    return gaussian_psf(sigma), {"psf": "gaussian", "sigma_px": sigma}


def add_noise(rng: np.random.Generator, expected_e: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Poisson shot noise plus an sCMOS camera with random per-pixel maps.

    Counts are converted to ADU with per-pixel offset and gain, read noise (per-pixel
    variance, a few noisy pixels) is added, ADU are quantised, and the frame is
    converted back to photoelectrons with the same maps. Returns float32
    photoelectrons (small negatives possible) and the camera parameters.
    """
    shape = expected_e.shape
    counts = rng.poisson(np.clip(expected_e, 0, None)).astype(np.float32)
    gain_med = float(rng.uniform(0.4, 2.5))  # ADU per e-
    gain = (gain_med * (1 + 0.03 * rng.standard_normal(shape))).astype(np.float32)
    offset = (100 + 2 * rng.standard_normal(shape)).astype(np.float32)
    read_var_med = float(rng.uniform(0.5, 4.0))  # e-^2
    read_var = (read_var_med * rng.lognormal(0, 0.3, shape)).astype(np.float32)
    noisy = rng.random(shape) < 0.002
    read_var[noisy] *= rng.uniform(5, 50, int(noisy.sum())).astype(np.float32)
    e = counts + np.sqrt(read_var) * rng.standard_normal(shape).astype(np.float32)
    adu = np.clip(np.rint(e * gain + offset), 0, 65535)
    out = ((adu - offset) / gain).astype(np.float32)
    return out, {"gain_adu_per_e": gain_med, "read_var_e2": read_var_med}


def make_frame(
    rng: np.random.Generator,
    size: int,
    peak_e: float,
    task: str = "denoise",
    mix: dict[str, float] | None = None,
    *,
    background: str = "legacy",
    psf_range: str = "legacy",
    psf: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One synthetic frame: ``(input_e, target_e, params)``, float32 ``(size, size)``.

    ``background`` (:data:`BACKGROUNDS`) and ``psf_range`` (:data:`PSF_RANGES`) choose the
    sample-like variants; the defaults reproduce the original frames seed for seed. ``psf``
    (a :data:`~livedenoise.imaging.psf.NAMED_PSFS` name) fixes the PSF instead of drawing one.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    _check_variants(background, psf_range)
    obj = make_phantom(rng, size, mix)
    kernel, pinfo = _draw_psf(rng, psf_range, psf)
    blurred = convolve_fft(obj, kernel)
    scale = float(np.percentile(blurred, 99.9))
    scale = scale if scale > 1e-6 else 1.0
    bg_params: dict[str, Any] = {}
    if background == "legacy":
        bg_e: Any = float(peak_e * rng.uniform(0.0, 0.15) + rng.uniform(0.0, 2.0))
    else:
        bg_e, bg_params = samples.sample_background(rng, blurred / scale, peak_e)
    expected = (blurred * (peak_e / scale) + bg_e).astype(np.float32)
    if task == "denoise":
        target = expected
    else:
        narrow = deconvolve_target_psf(pinfo["sigma_px"])
        target = (convolve_fft(obj, narrow) * (peak_e / scale) + bg_e).astype(np.float32)
    noisy, cam = add_noise(rng, expected)
    params = {"peak_e": float(peak_e), "background_e": bg_e, **pinfo, **cam}
    if bg_params:
        params.update(bg_params)
    return noisy, target, params


def _draw_psf(rng: np.random.Generator, psf_range: str, psf: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    if psf is not None:
        return named_psf(psf)
    return random_psf(rng) if psf_range == "legacy" else samples.sample_psf(rng)


def _check_variants(background: str, psf_range: str) -> None:
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; expected one of {BACKGROUNDS}")
    if psf_range not in PSF_RANGES:
        raise ValueError(f"unknown psf_range {psf_range!r}; expected one of {PSF_RANGES}")


def _log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


def make_eval_set(
    n: int,
    size: int = 128,
    peak_e_range: tuple[float, float] = (5.0, 100.0),
    task: str = "denoise",
    seed: int = 0,
    *,
    held_out: bool = True,
    background: str = "legacy",
    psf_range: str = "legacy",
    psf: str | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """A fixed evaluation set.

    Parameters
    ----------
    n : int
        Number of frames.
    size : int
        Side length in pixels.
    peak_e_range : (float, float)
        Peak photon levels, log-uniform in this range (equal bounds: one level).
    task : str
        ``"denoise"`` or ``"deconvolve"``.
    seed : int
        Seed; with ``held_out`` the generator uses ``seed + EVAL_SEED_OFFSET`` and the
        :data:`HELD_OUT_MIX` structure mix, which training never uses.
    background, psf_range, psf : str
        As in :func:`make_frame` (sample-like backgrounds and PSFs, a fixed named PSF).

    Returns
    -------
    inputs : (n, size, size) float32 noisy photoelectrons
    targets : (n, size, size) float32 (noise-free expected image, or the narrow-PSF object)
    params : list of dict, the parameters of each frame (peak_e, background_e, PSF, camera)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    lo, hi = float(peak_e_range[0]), float(peak_e_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"peak_e_range must be 0 < low <= high, got {peak_e_range}")
    rng = np.random.default_rng(seed + (EVAL_SEED_OFFSET if held_out else 0))
    mix = HELD_OUT_MIX if held_out else TRAIN_MIX
    xs = np.empty((n, size, size), np.float32)
    ts = np.empty((n, size, size), np.float32)
    params = []
    for i in range(n):
        xs[i], ts[i], p = make_frame(
            rng,
            size,
            _log_uniform(rng, lo, hi),
            task,
            mix,
            background=background,
            psf_range=psf_range,
            psf=psf,
        )
        params.append(p)
    return xs, ts, params


# ---------------------------------------------------------------- training stream


@dataclass
class SyntheticPatches:
    """Endless, seeded stream of ``(input_e, target_e, ratio)`` training patches.

    A pool of clean frames (``pool`` frames of ``2 * patch`` pixels, object and PSF
    drawn afresh) is cropped, flipped and rotated; every patch gets its own photon
    level, background and camera noise. One pool frame is replaced every
    ``refresh_every`` patches, so the stream keeps changing while staying cheap.

    Parameters
    ----------
    patch : int
        Patch side length.
    task : str
        ``"denoise"`` or ``"deconvolve"``.
    seed : int
        Seed of the stream (training seeds should stay below ``EVAL_SEED_OFFSET``).
    peak_e_range : (float, float)
        Peak photon levels, log-uniform.
    mix : dict
        Structure families (:data:`TRAIN_MIX`; :data:`SAMPLE_MIX` for sample-like data).
    background, psf_range : str
        ``"legacy"`` (the original stream, seed for seed) or ``"sample"`` / ``"wide"``: per-patch
        backgrounds of 0-30 e- with drifts and out-of-focus haze, PSFs from sigma 0.8 px to wide
        widefield (:mod:`livedenoise.imaging.samples`).
    psf : str or None
        A :data:`~livedenoise.imaging.psf.NAMED_PSFS` name: every patch is blurred by that one
        PSF (a deconvolution model is made for one microscope), instead of a drawn one.
    """

    patch: int = 64
    task: str = "denoise"
    seed: int = 0
    peak_e_range: tuple[float, float] = (1.0, 500.0)
    mix: dict[str, float] = field(default_factory=lambda: dict(TRAIN_MIX))
    pool: int = 32
    refresh_every: int = 4
    background: str = "legacy"
    psf_range: str = "legacy"
    psf: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        _check_variants(self.background, self.psf_range)
        if self.psf is not None:
            named_psf(self.psf)  # raises on an unknown name
        if self.patch < 8:
            raise ValueError(f"patch must be >= 8 pixels, got {self.patch}")

    def _clean(self, rng) -> tuple[np.ndarray, np.ndarray]:
        size = 2 * self.patch
        obj = make_phantom(rng, size, self.mix)
        kernel, pinfo = _draw_psf(rng, self.psf_range, self.psf)
        blurred = convolve_fft(obj, kernel)
        scale = float(np.percentile(blurred, 99.9))
        scale = scale if scale > 1e-6 else 1.0
        if self.task == "denoise":
            return blurred / scale, blurred / scale
        narrow = convolve_fft(obj, deconvolve_target_psf(pinfo["sigma_px"]))
        return blurred / scale, narrow / scale

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
        rng = np.random.default_rng(self.seed)
        pool = [self._clean(rng) for _ in range(self.pool)]
        p = self.patch
        lo, hi = self.peak_e_range
        i = 0
        while True:
            if i % self.refresh_every == 0:
                pool[int(rng.integers(self.pool))] = self._clean(rng)
            i += 1
            blurred, target = pool[int(rng.integers(self.pool))]
            y, x = (int(v) for v in rng.integers(0, blurred.shape[0] - p + 1, 2))
            b = blurred[y : y + p, x : x + p]
            t = target[y : y + p, x : x + p]
            k = int(rng.integers(4))
            flip = bool(rng.random() < 0.5)
            b, t = np.rot90(b, k), np.rot90(t, k)
            if flip:
                b, t = b[:, ::-1], t[:, ::-1]
            peak = _log_uniform(rng, lo, hi)
            if self.background == "legacy":
                bg: Any = peak * rng.uniform(0.0, 0.15) + rng.uniform(0.0, 2.0)
            else:
                bg, _ = samples.sample_background(rng, np.ascontiguousarray(b, np.float32), peak)
            expected = np.ascontiguousarray(b * peak + bg, dtype=np.float32)
            tgt = np.ascontiguousarray(t * peak + bg, dtype=np.float32)
            noisy, _ = add_noise(rng, expected)
            yield noisy, tgt, 1.0
