"""Sample-like synthetic structure, backgrounds and PSFs: training data that looks like cells.

The phantoms of :mod:`livedenoise.imaging.synthetic` (dots, rings, filaments, blobs, cells)
are kept as they are; this module adds what real samples show and they lack:

- structure families (relative intensity, max ~1): ``meshes`` (actin-like networks of long,
  nearly straight filaments crossing at random angles, plus cortical bundles), ``nuclei``
  (densely packed nuclei with fine chromatin texture, nucleoli and a brighter envelope),
  ``puncta`` (vesicle-like spots, clustered, with a wide spread of brightness) and
  ``tubules`` (mitochondria-like short curved tubes, 1.5 to 4 pixels wide);
- backgrounds that look like a sample's (:func:`sample_background`): a level from 0 to 30 e-
  per pixel (autofluorescence, camera-side light), slow drifts across the field (a gradient
  and low-frequency variation) and out-of-focus haze (the structure itself, heavily blurred);
- PSFs across the range of real widefield and confocal set-ups (:func:`sample_psf`): Gaussian
  sigma 0.8 to 2.2 px, and in-focus Born-Wolf (Airy) PSFs at NA 0.7 to 1.45, 450 to 680 nm,
  65 to 160 nm pixels.

Everything is vectorised numpy and reproducible from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from livedenoise.imaging.psf import airy_psf, airy_sigma_px, convolve_fft, gaussian_psf

__all__ = [
    "BACKGROUND_MAX_E",
    "SAMPLE_FAMILIES",
    "meshes",
    "nuclei",
    "puncta",
    "sample_background",
    "sample_family",
    "sample_psf",
    "tubules",
]

SAMPLE_FAMILIES = ("meshes", "nuclei", "puncta", "tubules")
BACKGROUND_MAX_E = 30.0


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float32)
    return c[:, None], c[None, :]


def _splat(img: np.ndarray, ys: np.ndarray, xs: np.ndarray, w: np.ndarray) -> None:
    """Add weights at sub-pixel positions (bilinear, in place)."""
    h, wd = img.shape
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy = (ys - y0).astype(np.float32)
    fx = (xs - x0).astype(np.float32)
    for dy, dx, ww in (
        (0, 0, (1 - fy) * (1 - fx)),
        (1, 0, fy * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
        np.add.at(img, (yy[ok], xx[ok]), (w * ww)[ok])


def _texture(rng: np.random.Generator, size: int, scale_px: float) -> np.ndarray:
    """Band-limited random texture in [0, 1] (white noise filtered at ``scale_px``)."""
    f = np.fft.rfft2(rng.standard_normal((size, size)).astype(np.float32))
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    f *= np.exp(-2 * (np.pi * scale_px) ** 2 * (ky**2 + kx**2))
    t = np.fft.irfft2(f, s=(size, size)).astype(np.float32)
    t -= t.min()
    return t / max(float(t.max()), 1e-12)


def _path(
    rng: np.random.Generator, size: int, length: float, curvature: float
) -> tuple[np.ndarray, np.ndarray]:
    steps = max(4, int(length * 2))
    th = rng.uniform(0, 2 * np.pi) + rng.normal(0, curvature, steps).cumsum()
    ys = rng.uniform(0, size) + np.cumsum(0.5 * np.sin(th))
    xs = rng.uniform(0, size) + np.cumsum(0.5 * np.cos(th))
    return ys, xs


def meshes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Actin-like network: many long, nearly straight filaments and a few thicker bundles."""
    img = np.zeros((size, size), np.float32)
    n = max(4, int(rng.uniform(15, 60) * size / 64))
    for _ in range(n):
        ys, xs = _path(rng, size, rng.uniform(0.5, 2.0) * size, rng.uniform(0.0, 0.02))
        _splat(img, ys, xs, np.full(ys.shape, rng.lognormal(-0.5, 0.5), np.float32))
    bundles = np.zeros_like(img)
    for _ in range(int(rng.integers(0, 4))):
        ys, xs = _path(rng, size, rng.uniform(0.5, 1.5) * size, rng.uniform(0.0, 0.03))
        _splat(bundles, ys, xs, np.full(ys.shape, rng.uniform(1.0, 3.0), np.float32))
    if bundles.any():
        img += convolve_fft(bundles, gaussian_psf(rng.uniform(0.8, 1.6)))
    return img


def nuclei(rng: np.random.Generator, size: int) -> np.ndarray:
    """Densely packed nuclei with chromatin texture, nucleoli and a brighter envelope."""
    yy, xx = _coords(size)
    img = np.zeros((size, size), np.float32)
    fine = _texture(rng, size, rng.uniform(0.7, 1.5))
    coarse = _texture(rng, size, rng.uniform(2.0, 4.0))
    r_mean = rng.uniform(0.08, 0.2) * size
    n = max(1, int(rng.uniform(0.4, 1.0) * (size / (2.2 * r_mean)) ** 2))
    for _ in range(n):
        cy, cx = rng.uniform(0, size, 2)
        r = r_mean * rng.uniform(0.7, 1.3)
        a, th = rng.uniform(0.7, 1.4), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(th) + dx * np.sin(th)) * a / r
        v = (-dy * np.sin(th) + dx * np.cos(th)) / a / r
        d = np.sqrt(u * u + v * v)
        with np.errstate(over="ignore"):  # far outside the nucleus exp overflows to inf: body 0, as meant
            body = 1.0 / (1.0 + np.exp((d - 1.0) * rng.uniform(10, 25)))
        rim = np.exp(-((d - 0.95) ** 2) / (2 * 0.06**2)) * rng.uniform(0.0, 0.5)
        chrom = 0.35 + rng.uniform(0.3, 0.8) * fine + rng.uniform(0.0, 0.5) * coarse
        nucleoli = np.zeros_like(img)
        for _ in range(int(rng.integers(0, 4))):
            q = rng.uniform(-0.5, 0.5, 2)
            nucleoli += np.exp(-((u - q[0]) ** 2 + (v - q[1]) ** 2) / (2 * rng.uniform(0.06, 0.15) ** 2))
        sign = 1.0 if rng.random() < 0.5 else -0.6  # nucleoli bright (stained) or dark (excluded)
        obj = body * np.clip(chrom + sign * nucleoli, 0.05, None) + rim * body
        img += rng.uniform(0.4, 1.0) * obj.astype(np.float32)
    return img


def puncta(rng: np.random.Generator, size: int) -> np.ndarray:
    """Vesicle-like spots: clusters and scattered ones, sub-pixel to ~1.5 px, brightness spread."""
    img = np.zeros((size, size), np.float32)
    area = (size / 64.0) ** 2
    n_clusters = max(1, int(rng.uniform(1, 6) * area))
    ys_all, xs_all = [], []
    for _ in range(n_clusters):
        c = rng.uniform(0, size, 2)
        k = int(rng.integers(3, 30))
        spread = rng.uniform(2, 0.15 * size)
        ys_all.append(c[0] + rng.normal(0, spread, k))
        xs_all.append(c[1] + rng.normal(0, spread, k))
    k = int(rng.uniform(5, 40) * area)
    ys_all.append(rng.uniform(0, size, k))
    xs_all.append(rng.uniform(0, size, k))
    ys, xs = np.concatenate(ys_all), np.concatenate(xs_all)
    _splat(img, ys, xs, rng.lognormal(0.0, 0.7, ys.size).astype(np.float32))
    return convolve_fft(img, gaussian_psf(rng.uniform(0.4, 1.2)))


def tubules(rng: np.random.Generator, size: int) -> np.ndarray:
    """Mitochondria-like short, curved tubes 1.5-4 px wide (some hollow in the middle)."""
    img = np.zeros((size, size), np.float32)
    n = max(2, int(rng.uniform(8, 40) * (size / 64.0) ** 2))
    for _ in range(n):
        ys, xs = _path(rng, size, rng.uniform(4, 30), rng.uniform(0.05, 0.25))
        _splat(img, ys, xs, np.full(ys.shape, rng.uniform(0.4, 1.0), np.float32))
    width = rng.uniform(0.6, 1.6)
    out = convolve_fft(img, gaussian_psf(width))
    if rng.random() < 0.3:  # hollow tubes: outer membrane brighter than the matrix
        out = np.clip(out - 0.6 * convolve_fft(img, gaussian_psf(max(0.4, 0.5 * width))), 0, None)
    return out


def sample_family(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One of :data:`SAMPLE_FAMILIES` at ``size`` x ``size`` (relative intensity, not yet normalised)."""
    fn = {"meshes": meshes, "nuclei": nuclei, "puncta": puncta, "tubules": tubules}.get(name)
    if fn is None:
        raise ValueError(f"unknown sample family {name!r}; expected one of {SAMPLE_FAMILIES}")
    return fn(rng, size)


def sample_psf(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A PSF from a sharp Gaussian (sigma 0.8 px) to a wide widefield Born-Wolf PSF."""
    if rng.random() < 0.4:
        sigma = float(rng.uniform(0.8, 2.2))
        return gaussian_psf(sigma), {"psf": "gaussian", "sigma_px": sigma}
    na = float(rng.uniform(0.7, 1.45))
    wl = float(rng.uniform(450, 680))
    px = float(rng.uniform(65, 160))
    return airy_psf(na, wl, px), {
        "psf": "airy",
        "na": na,
        "wavelength_nm": wl,
        "pixel_nm": px,
        "sigma_px": airy_sigma_px(na, wl, px),
    }


def sample_background(
    rng: np.random.Generator, obj_rel: np.ndarray, peak_e: float
) -> tuple[np.ndarray, dict[str, float]]:
    """A sample-like background in e- per pixel for a frame whose object is ``obj_rel`` (max ~1).

    ``level`` (0 to :data:`BACKGROUND_MAX_E` e-, a quarter of the frames near 0, else log-uniform
    from 0.3), times a slow drift (a gradient of up to +-30 % and low-frequency variation of up
    to +-20 %), plus out-of-focus haze: the object blurred with sigma 6-20 px at 0-40 % of the peak.
    """
    size = obj_rel.shape[0]
    if rng.random() < 0.25:
        level = float(rng.uniform(0.0, 0.3))
    else:
        level = float(np.exp(rng.uniform(np.log(0.3), np.log(BACKGROUND_MAX_E))))
    yy, xx = _coords(size)
    g = rng.uniform(-0.3, 0.3, 2) / max(size - 1, 1)
    drift = 1.0 + g[0] * (yy - size / 2) * 2 + g[1] * (xx - size / 2) * 2
    wobble = rng.uniform(0.0, 0.2)
    drift = drift + wobble * (2 * _texture(rng, size, rng.uniform(0.15, 0.3) * size) - 1)
    haze_frac = float(rng.uniform(0.0, 0.4)) if rng.random() < 0.6 else 0.0
    bg = level * np.clip(drift, 0.2, None)
    if haze_frac > 0:
        haze = convolve_fft(obj_rel.astype(np.float32), gaussian_psf(float(rng.uniform(6, 20))))
        bg = bg + haze_frac * peak_e * haze / max(float(haze.max()), 1e-12)
    params = {"background_e": level, "drift": float(np.abs(g).max() * size), "haze_frac": haze_frac}
    return bg.astype(np.float32), params
