"""Sub-pixel registration of two noisy images (the motion check of paired datasets).

:func:`phase_shift` finds the shift between a short and a long exposure of one field by
Fourier cross-correlation refined with an upsampled DFT; :func:`registration_confidence`
says whether the frames carry enough structure for that shift to mean anything.
"""

from __future__ import annotations

import numpy as np

__all__ = ["phase_shift", "registration_confidence"]


def _upsampled_dft(data: np.ndarray, size: int, factor: int, offsets: np.ndarray) -> np.ndarray:
    """Inverse DFT of ``data`` on a ``size``² grid upsampled by ``factor``, starting at ``-offsets``."""
    for n, off in zip(data.shape[::-1], offsets[::-1]):
        kernel = (np.arange(size) - off)[:, None] * np.fft.fftfreq(n, factor)[None, :]
        data = np.tensordot(np.exp(-2j * np.pi * kernel), data, axes=(1, -1))
    return data


def _tukey(n: int, alpha: float = 0.3) -> np.ndarray:
    """Tukey (tapered cosine) window: flat in the middle, cosine edges over ``alpha`` of it."""
    x = np.linspace(0.0, 1.0, n)
    w = np.ones(n)
    edge = alpha / 2
    lo, hi = x < edge, x > 1 - edge
    w[lo] = 0.5 * (1 + np.cos(np.pi * (x[lo] / edge - 1)))
    w[hi] = 0.5 * (1 + np.cos(np.pi * ((x[hi] - 1) / edge + 1)))
    return w


def _shift_image(img: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``img`` shifted by ``(dy, dx)`` pixels (Fourier phase ramp, circular)."""
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    ramp = np.exp(-2j * np.pi * (fy * shift[0] + fx * shift[1]))
    return np.fft.ifft2(np.fft.fft2(img) * ramp).real


def _cross_power(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    h, w = a.shape
    window = np.outer(_tukey(h), _tukey(w))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    cross = fa * np.conj(fb)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    cross *= np.exp(-(fy**2 + fx**2) / (2 * 0.1**2))  # low-pass: shot noise lives at high frequencies
    return cross


def registration_confidence(reference: np.ndarray, moving: np.ndarray) -> float:
    """How far the correlation peak stands above chance: ``peak / max(null peaks)``.

    The null peaks correlate ``reference`` with ``moving`` turned by 180° and transposed
    (same power spectrum, no alignment). Below ~1.2 the frames carry too little
    structure (too few photons) for the shift to mean anything.
    """
    a = np.asarray(reference, np.float64)
    b = np.asarray(moving, np.float64)
    peak = np.fft.ifft2(_cross_power(a, b)).real.max()
    nulls = [b[::-1, ::-1]] + ([b.T[::-1]] if b.shape[0] == b.shape[1] else [b[::-1]])
    null = max(np.fft.ifft2(_cross_power(a, n)).real.max() for n in nulls)
    return float(peak / null) if null > 0 else float("inf")


def _correlation_peak(a: np.ndarray, b: np.ndarray, upsample: int) -> np.ndarray:
    h, w = a.shape
    cross = _cross_power(a, b)
    corr = np.fft.ifft2(cross).real
    peak = np.array(np.unravel_index(int(np.argmax(corr)), corr.shape), dtype=np.float64)
    dims = np.array([h, w], dtype=np.float64)
    peak[peak > dims // 2] -= dims[peak > dims // 2]
    if upsample > 1:
        size = int(np.ceil(upsample * 1.5))
        center = float(size // 2)
        fine = _upsampled_dft(np.conj(cross), size, upsample, center - peak * upsample).conj().real
        sub = np.array(np.unravel_index(int(np.argmax(fine)), fine.shape), dtype=np.float64)
        peak = peak + (sub - center) / upsample
    return peak


def phase_shift(reference: np.ndarray, moving: np.ndarray, *, upsample: int = 20) -> tuple[float, float]:
    """Sub-pixel shift ``(dy, dx)`` that, applied to ``moving``, aligns it with ``reference``.

    Cross-correlation in Fourier space (with a Gaussian low-pass against shot noise:
    whitening it to pure phase correlation amplifies the noise of low-light frames),
    refined by a matrix-multiply DFT upsampled ``upsample`` times around the peak
    (Guizar-Sicairos et al., Opt. Lett. 2008): the grid is ``1 / upsample`` px. Both
    images are mean-subtracted and Tukey-windowed; the window biases the estimate toward
    zero, so ``moving`` is shifted by the estimate and the residual measured again (up
    to three times) until the residual is below the grid.

    Parameters
    ----------
    reference, moving : np.ndarray
        2D images of one shape (any units; photoelectrons here).
    upsample : int
        Sub-pixel refinement factor.

    Returns
    -------
    tuple of float
        ``(dy, dx)`` in pixels; ``np.roll(moving, (round(dy), round(dx)))`` ~ ``reference``.
    """
    a = np.asarray(reference, np.float64)
    b = np.asarray(moving, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"phase_shift needs two 2D images of one shape, got {a.shape} and {b.shape}")
    total = _correlation_peak(a, b, upsample)
    for _ in range(3):
        if not np.any(total):
            break
        residual = _correlation_peak(a, _shift_image(b, total), upsample)
        total = total + residual
        if np.all(np.abs(residual) < 1.0 / upsample):
            break
    return round(float(total[0]), 4), round(float(total[1]), 4)
