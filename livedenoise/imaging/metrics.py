"""Image-quality metrics against the noise-free expected image, in photoelectrons.

Every metric compares an estimate ``x`` with a reference ``ref`` (the noise-free
expected photoelectrons of the frame, or the deconvolution target) of the same 2D
shape. The *data range* used by :func:`psnr` and :func:`ssim` is always
``ref.max() - ref.min()`` of the reference, never of the estimate, so that every
method is scored on the same scale and a method cannot change its own score by
producing outliers.

Only numpy and scipy are needed (no scikit-image), so the live demo can use them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["data_range", "kolmogorov_distance", "mse", "nrmse", "psnr", "ssim"]


def _pair(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(
            f"estimate is {x.shape} but the reference is {ref.shape}; compare images of one shape"
        )
    if x.size == 0:
        raise ValueError("cannot score empty images")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(ref))):
        raise ValueError("images to score contain NaN or Inf; a restoration must be finite everywhere")
    return x, ref


def data_range(ref: np.ndarray) -> float:
    """``ref.max() - ref.min()``: the data range of PSNR and SSIM.

    Raises
    ------
    ValueError
        If the reference is constant (PSNR and SSIM are then undefined).
    """
    ref = np.asarray(ref)
    r = float(ref.max() - ref.min())
    if not r > 0:
        raise ValueError("the reference image is constant; PSNR and SSIM need a reference with some contrast")
    return r


def mse(x: np.ndarray, ref: np.ndarray) -> float:
    """Mean squared error, in photoelectrons squared."""
    x, ref = _pair(x, ref)
    return float(np.mean((x - ref) ** 2))


def psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB.

    ``PSNR = 10 log10(R^2 / MSE)`` with ``R = ref.max() - ref.min()`` (see
    :func:`data_range`). Identical images give ``inf``.

    Parameters
    ----------
    x : np.ndarray
        Estimate (e.g. a restored frame), photoelectrons.
    ref : np.ndarray
        Noise-free reference, photoelectrons, same shape.
    """
    x, ref = _pair(x, ref)
    r = data_range(ref)
    err = float(np.mean((x - ref) ** 2))
    if err == 0.0:
        return float("inf")
    return float(10.0 * np.log10(r * r / err))


def nrmse(x: np.ndarray, ref: np.ndarray) -> float:
    """Normalised root-mean-square error: ``||x - ref||_2 / ||ref||_2``.

    This is the Euclidean normalisation (scikit-image's default). 0 is perfect;
    the raw noisy frame of a dim image can be well above 1.
    """
    x, ref = _pair(x, ref)
    denom = float(np.sqrt(np.mean(ref**2)))
    if denom == 0.0:
        raise ValueError("the reference image is all zeros; NRMSE is undefined")
    return float(np.sqrt(np.mean((x - ref) ** 2)) / denom)


def ssim(x: np.ndarray, ref: np.ndarray, *, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) with a Gaussian window.

    Gaussian weighting with ``sigma = 1.5`` pixels (truncated at 3.5 sigma),
    ``K1 = 0.01``, ``K2 = 0.03``, population (not sample) covariances, data range
    ``ref.max() - ref.min()``; the mean is taken over the pixels whose window lies
    inside the image. This reproduces scikit-image's
    ``structural_similarity(x, ref, data_range=R, gaussian_weights=True,
    use_sample_covariance=False)``. Identical images give 1.0.
    """
    from scipy.ndimage import gaussian_filter

    x, ref = _pair(x, ref)
    if x.ndim != 2:
        raise ValueError(f"ssim scores 2D images, got {x.ndim} dimensions")
    r = data_range(ref)
    c1 = (0.01 * r) ** 2
    c2 = (0.03 * r) ** 2
    truncate = 3.5

    def filt(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=sigma, truncate=truncate, mode="reflect")

    ux, uy = filt(x), filt(ref)
    vx = filt(x * x) - ux * ux
    vy = filt(ref * ref) - uy * uy
    vxy = filt(x * ref) - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (2 * int(truncate * sigma + 0.5) + 1 - 1) // 2
    inner = s[pad : s.shape[0] - pad, pad : s.shape[1] - pad]
    if inner.size == 0:
        raise ValueError(f"image {x.shape} is too small for an SSIM window of sigma {sigma}")
    return float(inner.mean())


def kolmogorov_distance(x: np.ndarray, ref: np.ndarray) -> float:
    """Largest difference between the intensity distributions (CDFs) of ``x`` and ``ref``.

    ``D = max_v |F_x(v) - F_ref(v)|`` over all intensities ``v``, where ``F`` is the
    empirical cumulative distribution of the pixel values (the two-sample
    Kolmogorov-Smirnov statistic, as the RESUNET paper reports). 0 means identical
    histograms; it ignores where the pixels are.
    """
    x, ref = _pair(x, ref)
    a = np.sort(x.ravel())
    b = np.sort(ref.ravel())
    v = np.concatenate([a, b])
    fa = np.searchsorted(a, v, side="right") / a.size
    fb = np.searchsorted(b, v, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))
