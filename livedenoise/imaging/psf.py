"""Point-spread functions of a widefield microscope, sampled on the camera grid.

All PSFs are 2D, odd-sized, non-negative and normalised to sum 1, so convolving an
object in photoelectrons keeps its total count.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NAMED_PSFS",
    "airy_psf",
    "airy_sigma_px",
    "convolve_fft",
    "deconvolve_target_psf",
    "gaussian_psf",
    "named_psf",
]


def _grid(size: int, oversample: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centred coordinates (in pixels) with ``oversample`` sub-samples a pixel."""
    n = size * oversample
    c = (np.arange(n) - (n - 1) / 2) / oversample
    return np.meshgrid(c, c, indexing="ij")


def _bin(a: np.ndarray, f: int) -> np.ndarray:
    n = a.shape[0] // f
    return a.reshape(n, f, n, f).sum(axis=(1, 3))


def _check_size(size: int) -> int:
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"PSF size must be a positive odd number of pixels, got {size}")
    return size


def gaussian_psf(sigma_px: float, size: int | None = None, oversample: int = 5) -> np.ndarray:
    """Gaussian PSF integrated over each pixel.

    Parameters
    ----------
    sigma_px : float
        Standard deviation in pixels (> 0).
    size : int, optional
        Odd side length; default covers ±4 sigma.
    oversample : int
        Sub-samples per pixel used to integrate over the pixel area.
    """
    if not sigma_px > 0:
        raise ValueError(f"sigma_px must be > 0, got {sigma_px}")
    if size is None:
        size = 2 * int(np.ceil(4 * sigma_px)) + 1
    size = _check_size(size)
    y, x = _grid(size, oversample)
    k = _bin(np.exp(-(x**2 + y**2) / (2 * sigma_px**2)), oversample)
    return (k / k.sum()).astype(np.float32)


def airy_sigma_px(na: float, wavelength_nm: float, pixel_nm: float) -> float:
    """Sigma (pixels) of the Gaussian that best matches the in-focus Airy disk.

    Uses the paraxial fit sigma = 0.21 lambda / NA (Zhang, Zerubia & Olivo-Marin 2007).
    """
    return 0.21 * wavelength_nm / na / pixel_nm


def airy_psf(
    na: float,
    wavelength_nm: float,
    pixel_nm: float,
    size: int | None = None,
    oversample: int = 5,
) -> np.ndarray:
    """In-focus widefield (Airy / Born-Wolf at z=0) intensity PSF.

    ``I(r) = [2 J1(v) / v]^2`` with ``v = 2 pi NA r / lambda``, integrated over pixels.

    Parameters
    ----------
    na : float
        Numerical aperture of the objective (0 < NA < 1.7).
    wavelength_nm : float
        Emission wavelength in nanometres.
    pixel_nm : float
        Pixel size in the sample plane, in nanometres.
    size : int, optional
        Odd side length; default covers the first four dark rings.
    """
    from scipy.special import j1

    if not 0 < na < 1.7:
        raise ValueError(f"NA must be in (0, 1.7), got {na}")
    if wavelength_nm <= 0 or pixel_nm <= 0:
        raise ValueError("wavelength_nm and pixel_nm must be > 0")
    if size is None:
        # fourth zero of J1 at v ~ 13.3
        r_px = 13.3 * wavelength_nm / (2 * np.pi * na) / pixel_nm
        size = 2 * max(2, int(np.ceil(r_px))) + 1
    size = _check_size(size)
    y, x = _grid(size, oversample)
    v = 2 * np.pi * na * np.hypot(x, y) * pixel_nm / wavelength_nm
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.where(v > 1e-8, 2 * j1(v) / np.where(v > 1e-8, v, 1.0), 1.0)
    k = _bin(a**2, oversample)
    return (k / k.sum()).astype(np.float32)


def convolve_fft(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Convolve a 2D image with a centred PSF (reflect padding, same shape, float32)."""
    from scipy.signal import fftconvolve

    ph, pw = psf.shape[0] // 2, psf.shape[1] // 2
    padded = np.pad(image.astype(np.float32, copy=False), ((ph, ph), (pw, pw)), mode="reflect")
    out = fftconvolve(padded, psf, mode="valid")
    return np.maximum(out, 0).astype(np.float32, copy=False)


NAMED_PSFS: dict[str, tuple[str, dict[str, float]]] = {
    "gauss-0.8": ("gaussian", {"sigma_px": 0.8}),
    "airy-na1.4": ("airy", {"na": 1.4, "wavelength_nm": 520.0, "pixel_nm": 65.0}),
    "airy-na0.75": ("airy", {"na": 0.75, "wavelength_nm": 600.0, "pixel_nm": 100.0}),
}
"""PSFs known by name: the real-structure evaluation's, and the fixed PSF of a deconvolution model.

``gauss-0.8``: a sharp Gaussian of sigma 0.8 px; ``airy-na1.4``: in-focus widefield Born-Wolf
PSF of a 1.4 NA oil objective at 520 nm on 65 nm pixels (sigma ~1.2 px); ``airy-na0.75``: a
0.75 NA air objective at 600 nm on 100 nm pixels (sigma ~1.7 px).
"""


def named_psf(name: str) -> tuple[np.ndarray, dict[str, float | str]]:
    """The kernel of a :data:`NAMED_PSFS` entry and its description (with ``sigma_px``)."""
    try:
        kind, params = NAMED_PSFS[name]
    except KeyError:
        raise ValueError(f"unknown PSF {name!r}; choose from {', '.join(NAMED_PSFS)}") from None
    if kind == "gaussian":
        return gaussian_psf(params["sigma_px"]), {"name": name, "psf": kind, **params}
    sigma = airy_sigma_px(params["na"], params["wavelength_nm"], params["pixel_nm"])
    kernel = airy_psf(params["na"], params["wavelength_nm"], params["pixel_nm"])
    return kernel, {"name": name, "psf": kind, **params, "sigma_px": sigma}


def deconvolve_target_psf(sigma_px: float) -> np.ndarray:
    """What the ``deconvolve`` task restores to: the object seen through a Gaussian of half the PSF's width.

    (At least 0.35 px, so that the target stays a band-limited image on the camera grid.)
    """
    return gaussian_psf(max(0.35, float(sigma_px) / 2))
