"""Classical restoration baselines, run on the same photoelectron frames as the networks.

Every baseline takes a float32 ``(H, W)`` frame in photoelectrons (it may hold small
negatives from read noise) and returns a float32 estimate of the noise-free expected
photoelectrons (>= 0) of the same shape.

Methods (``BASELINES``):

- ``nlm``: scikit-image non-local means on the photoelectrons, with
  ``sigma = estimate_sigma(frame)`` (wavelet MAD) and ``h = NLM_H_FACTOR * sigma``.
- ``gat-nlm``: generalized Anscombe transform (Poisson-Gaussian, gain 1 e-/e-, read
  variance from the calibration), NLM with the known unit noise
  (``h = GAT_NLM_H_FACTOR``), then the exact unbiased inverse (Mäkitalo & Foi 2011,
  2013), computed numerically (see :func:`gat_inverse`).
- ``tv``: total variation (Chambolle) on the photoelectrons; weight
  ``TV_WEIGHT_FACTOR * estimate_sigma(frame)`` (TV's weight is in image units, so it
  scales with the noise level).
- ``gat-tv``: total variation in the GAT domain (weight ``GAT_TV_WEIGHT``, unit noise),
  exact unbiased inverse.
- ``gat-bm3d`` (only when the PyPI package ``bm3d`` is installed, ``pip install
  livedenoise[eval]``): BM3D with ``sigma_psd = 1`` after the GAT, exact unbiased inverse.
- ``rl``: Richardson-Lucy deconvolution with the known PSF (``deconvolve`` task),
  ``RL_ITERATIONS`` iterations (at 5-100 e- the tuning picks very few: RL amplifies noise),
  the result seen through the task target's narrower PSF.
- ``gat-nlm-rl``: GAT + NLM first, then ``DENOISED_RL_ITERATIONS`` of Richardson-Lucy.

The factors were tuned once on a *tuning* set (``livedenoise evaluate
--tune-baselines``, seed 777, never the evaluation seed): see :func:`tune`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from livedenoise.imaging.metrics import psnr
from livedenoise.imaging.psf import convolve_fft

__all__ = [
    "BASELINES",
    "available_baselines",
    "gat_bm3d",
    "gat_forward",
    "gat_inverse",
    "gat_inverse_closed_form",
    "gat_nlm",
    "gat_nlm_rl",
    "gat_tv",
    "nlm",
    "richardson_lucy",
    "run_baseline",
    "tune",
    "tv",
]

log = logging.getLogger("livedenoise")

# Tuned on the tuning set (seed 777, 12 frames of 256², 5-100 e- peak): `livedenoise evaluate --tune-baselines
# --n 12` (and `--task deconvolve` for the RL iterations). See tune().
NLM_H_FACTOR = 1.4
GAT_NLM_H_FACTOR = 1.0
TV_WEIGHT_FACTOR = 2.25
GAT_TV_WEIGHT = 2.0
RL_ITERATIONS = 1
DENOISED_RL_ITERATIONS = 2

# NLM patch geometry (scikit-image's documented defaults for 2D)
_NLM_PATCH = {"patch_size": 5, "patch_distance": 6, "fast_mode": True}


def _as_frame(frame_e: np.ndarray) -> np.ndarray:
    a = np.asarray(frame_e, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"baselines restore one 2D frame at a time, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("the frame contains NaN or Inf; baselines need finite photoelectrons")
    return a


def _scalar_read_var(read_var_e2: float | np.ndarray) -> float:
    """One read variance for the whole frame: the median of a per-pixel map."""
    v = float(np.median(read_var_e2)) if np.ndim(read_var_e2) else float(read_var_e2)
    if v < 0 or not np.isfinite(v):
        raise ValueError(f"read_var_e2 must be finite and >= 0, got {v}")
    return v


# -- generalized Anscombe transform ---------------------------------------------


def gat_forward(z: np.ndarray, read_var_e2: float = 0.0) -> np.ndarray:
    """Generalized Anscombe transform for Poisson-Gaussian noise (gain 1, mean 0).

    ``f(z) = 2 sqrt(max(z + 3/8 + sigma^2, 0))`` with ``sigma^2 = read_var_e2``; the
    result has approximately unit noise variance wherever the counts are not tiny.
    """
    return (2.0 * np.sqrt(np.maximum(np.asarray(z, np.float64) + 0.375 + read_var_e2, 0.0))).astype(
        np.float32
    )


def gat_inverse_closed_form(d: np.ndarray, read_var_e2: float = 0.0) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Mäkitalo & Foi 2011/2013).

    ``1/4 D^2 + 1/4 sqrt(3/2) D^-1 - 11/8 D^-2 + 5/8 sqrt(3/2) D^-3 - 1/8 - sigma^2``,
    clipped at 0. Accurate for the Poisson case and for expectations above a few
    counts; :func:`gat_inverse` is exact at every count.
    """
    d = np.maximum(np.asarray(d, np.float64), 1e-6)
    s = np.sqrt(1.5)
    z = 0.25 * d**2 + 0.25 * s / d - 1.375 / d**2 + 0.625 * s / d**3 - 0.125 - read_var_e2
    return np.maximum(z, 0.0)


_EXACT_MAX_Y = 300.0  # above this the closed form is exact to < 1e-4 e-


@functools.lru_cache(maxsize=16)
def _exact_table(read_var_key: float) -> tuple[np.ndarray, np.ndarray]:
    """``(E[f(z) | y], y)`` on a grid of expectations ``y`` in [0, _EXACT_MAX_Y].

    ``z = Poisson(y) + Normal(0, sigma^2)``; the Gaussian integral uses Gauss-Hermite
    quadrature (60 nodes), the Poisson sum runs to ``y + 12 sqrt(y) + 30``.
    """
    from scipy.stats import poisson

    var = read_var_key
    y = np.unique(np.concatenate([np.linspace(0.0, 2.0, 81), np.geomspace(2.0, _EXACT_MAX_Y, 320)]))
    kmax = int(_EXACT_MAX_Y + 12 * np.sqrt(_EXACT_MAX_Y) + 30)
    k = np.arange(kmax + 1, dtype=np.float64)
    if var > 0:
        t, w = np.polynomial.hermite_e.hermegauss(60)  # weight exp(-t^2/2)
        w = w / w.sum()
        n = np.sqrt(var) * t
        g = (
            2.0 * np.sqrt(np.maximum(k[:, None] + n[None, :] + 0.375 + var, 0.0))
        ) @ w  # E over Gaussian, per k
    else:
        g = 2.0 * np.sqrt(k + 0.375)
    pmf = poisson.pmf(k[None, :], y[:, None])  # (len(y), kmax+1)
    e = pmf @ g
    return e, y


def gat_inverse(d: np.ndarray, read_var_e2: float = 0.0) -> np.ndarray:
    """Exact unbiased inverse of :func:`gat_forward` (Mäkitalo & Foi).

    Maps a denoised value ``D`` in the GAT domain to the expectation ``y`` for which
    ``E[f(z) | y] = D`` (so that an unbiased estimate of ``E[f(z)]`` becomes an
    unbiased estimate of ``y``), by monotone interpolation in a numerically computed
    table for ``y <= 300`` e- and with the closed form above (where the two agree to
    better than 1e-4). Values below ``E[f(z) | 0]`` map to 0.
    """
    var = round(float(read_var_e2), 4)
    e, y = _exact_table(var)
    d = np.asarray(d, np.float64)
    out = np.interp(d, e, y, left=0.0)
    high = d > e[-1]
    if np.any(high):
        out[high] = gat_inverse_closed_form(d[high], var)
    return out.astype(np.float32)


# -- the denoisers -----------------------------------------------------------------


def _restoration() -> Any:
    """``skimage.restoration``, or an error that says how to install it."""
    try:
        import pywt  # noqa: F401  (scikit-image's noise estimate needs PyWavelets)
        from skimage import restoration
    except ImportError as exc:
        raise ImportError(
            f"the classical baselines need scikit-image and PyWavelets ({exc}); "
            'install them with: pip install -e ".[eval]"'
        ) from exc
    return restoration


def _noise_sigma(frame: np.ndarray) -> float:
    estimate_sigma = _restoration().estimate_sigma

    s = float(estimate_sigma(frame))
    return max(s, 1e-3)


def nlm(frame_e: np.ndarray, *, h_factor: float | None = None, **_: Any) -> np.ndarray:
    """Non-local means on photoelectrons with scikit-image's wavelet noise estimate."""
    denoise_nl_means = _restoration().denoise_nl_means

    f = _as_frame(frame_e)
    sigma = _noise_sigma(f)
    h = (NLM_H_FACTOR if h_factor is None else h_factor) * sigma
    out = denoise_nl_means(f, h=h, sigma=sigma, preserve_range=True, **_NLM_PATCH)
    return np.maximum(out, 0).astype(np.float32)


def gat_nlm(
    frame_e: np.ndarray, *, read_var_e2: float | np.ndarray = 0.0, h_factor: float | None = None, **_: Any
) -> np.ndarray:
    """GAT -> non-local means (unit noise) -> exact unbiased inverse."""
    denoise_nl_means = _restoration().denoise_nl_means

    f = _as_frame(frame_e)
    var = _scalar_read_var(read_var_e2)
    d = gat_forward(f, var)
    h = GAT_NLM_H_FACTOR if h_factor is None else h_factor
    dd = denoise_nl_means(d, h=h, sigma=1.0, preserve_range=True, **_NLM_PATCH)
    return gat_inverse(dd, var)


def tv(frame_e: np.ndarray, *, weight_factor: float | None = None, **_: Any) -> np.ndarray:
    """Total variation (Chambolle) on photoelectrons, weight proportional to the noise."""
    denoise_tv_chambolle = _restoration().denoise_tv_chambolle

    f = _as_frame(frame_e)
    w = (TV_WEIGHT_FACTOR if weight_factor is None else weight_factor) * _noise_sigma(f)
    return np.maximum(denoise_tv_chambolle(f, weight=w), 0).astype(np.float32)


def gat_tv(
    frame_e: np.ndarray, *, read_var_e2: float | np.ndarray = 0.0, weight: float | None = None, **_: Any
) -> np.ndarray:
    """GAT -> total variation (unit noise) -> exact unbiased inverse."""
    denoise_tv_chambolle = _restoration().denoise_tv_chambolle

    f = _as_frame(frame_e)
    var = _scalar_read_var(read_var_e2)
    d = gat_forward(f, var)
    dd = denoise_tv_chambolle(d, weight=GAT_TV_WEIGHT if weight is None else weight)
    return gat_inverse(dd, var)


def _bm3d_available() -> tuple[bool, str]:
    try:
        import bm3d  # noqa: F401
    except Exception as exc:  # ImportError, or a broken binary
        return False, f"the PyPI package 'bm3d' is not usable here ({exc}); pip install bm3d"
    return True, "bm3d installed"


def gat_bm3d(frame_e: np.ndarray, *, read_var_e2: float | np.ndarray = 0.0, **_: Any) -> np.ndarray:
    """GAT -> BM3D (``sigma_psd = 1``) -> exact unbiased inverse: the classical state of the art."""
    ok, why = _bm3d_available()
    if not ok:
        raise RuntimeError(why)
    import bm3d

    f = _as_frame(frame_e)
    var = _scalar_read_var(read_var_e2)
    d = gat_forward(f, var).astype(np.float64)
    dd = bm3d.bm3d(d, sigma_psd=1.0)
    return gat_inverse(np.asarray(dd), var)


def richardson_lucy(
    frame_e: np.ndarray,
    *,
    psf: np.ndarray | None = None,
    iterations: int | None = None,
    target_psf: np.ndarray | None = None,
    **_: Any,
) -> np.ndarray:
    """Richardson-Lucy deconvolution with the known PSF (scikit-image), photoelectrons kept.

    The negative photoelectrons that read noise produces are clipped to 0 first (RL
    needs a non-negative image). With ``target_psf`` the deconvolved object is seen
    through that (narrower) PSF, as the ``deconvolve`` task's target is.
    """
    _rl = _restoration().richardson_lucy

    if psf is None:
        raise ValueError("Richardson-Lucy needs the PSF of the blur to undo (psf=...)")
    f = np.maximum(_as_frame(frame_e), 0.0)
    psf = np.asarray(psf, np.float64)
    psf = psf / psf.sum()
    n = RL_ITERATIONS if iterations is None else int(iterations)
    scale = max(float(f.mean()), 1e-6)  # RL starts from 0.5 everywhere: work near unit scale
    out = _rl(f / scale, psf, num_iter=n, clip=False) * scale
    if target_psf is not None:
        out = convolve_fft(out.astype(np.float32), np.asarray(target_psf, np.float32))
    return np.maximum(out, 0).astype(np.float32)


def gat_nlm_rl(
    frame_e: np.ndarray,
    *,
    read_var_e2: float | np.ndarray = 0.0,
    psf: np.ndarray | None = None,
    target_psf: np.ndarray | None = None,
    iterations: int | None = None,
    **_: Any,
) -> np.ndarray:
    """Denoise first (GAT + NLM), then Richardson-Lucy with the known PSF: the usual classical pipeline."""
    d = gat_nlm(frame_e, read_var_e2=read_var_e2)
    n = DENOISED_RL_ITERATIONS if iterations is None else iterations
    return richardson_lucy(d, psf=psf, target_psf=target_psf, iterations=n)


# name -> (function, tasks it applies to)
BASELINES: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]] = {
    "nlm": (nlm, ("denoise", "deconvolve")),
    "gat-nlm": (gat_nlm, ("denoise", "deconvolve")),
    "tv": (tv, ("denoise", "deconvolve")),
    "gat-tv": (gat_tv, ("denoise", "deconvolve")),
    "gat-bm3d": (gat_bm3d, ("denoise", "deconvolve")),
    "rl": (richardson_lucy, ("deconvolve",)),
    "gat-nlm-rl": (gat_nlm_rl, ("deconvolve",)),
}


def available_baselines(task: str = "denoise") -> dict[str, tuple[bool, str]]:
    """``{name: (usable, reason)}`` of the baselines for ``task``."""
    out: dict[str, tuple[bool, str]] = {}
    for name, (_, tasks) in BASELINES.items():
        if task not in tasks:
            out[name] = (False, f"not a {task} method")
        elif name == "gat-bm3d":
            out[name] = _bm3d_available()
        else:
            out[name] = (True, "scikit-image")
    return out


def run_baseline(
    name: str, frame_e: np.ndarray, *, read_var_e2: float | np.ndarray = 0.0, **params: Any
) -> np.ndarray:
    """Run baseline ``name`` (a key of ``BASELINES``) on one photoelectron frame.

    ``params``: ``psf`` and ``target_psf`` for ``rl``, or a tuning parameter (``h_factor``...).
    """
    try:
        fn, _ = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}") from None
    return fn(frame_e, read_var_e2=read_var_e2, **params)


# -- tuning --------------------------------------------------------------------------

TUNING_GRID: dict[str, tuple[str, Sequence[float]]] = {
    "nlm": ("h_factor", (0.6, 0.8, 1.0, 1.2, 1.4, 1.7, 2.0)),
    "gat-nlm": ("h_factor", (0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4)),
    "tv": ("weight_factor", (1.0, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0)),
    "gat-tv": ("weight", (0.6, 0.8, 1.0, 1.2, 1.4, 1.7, 2.0, 2.5)),
    "rl": ("iterations", (1, 2, 3, 4, 6, 10, 20)),
    "gat-nlm-rl": ("iterations", (2, 5, 10, 20, 40)),
}


def tune(
    samples: Iterable[tuple[np.ndarray, np.ndarray, float | np.ndarray, dict[str, np.ndarray] | None]],
    methods: Sequence[str] = ("nlm", "gat-nlm", "tv", "gat-tv"),
) -> dict[str, dict[str, Any]]:
    """Grid-search each baseline's parameter for the best mean PSNR on a tuning set.

    Parameters
    ----------
    samples : iterable of (noisy_e, target_e, read_var_e2, extra)
        A tuning set drawn with a seed that the evaluation never uses; ``extra`` holds
        keyword arguments such as ``psf`` and ``target_psf`` (deconvolve task) or None.
    methods : names in ``TUNING_GRID``

    Returns
    -------
    dict
        ``{method: {"param": name, "best": value, "scores": {value: mean PSNR}}}``.
    """

    samples = list(samples)
    result: dict[str, dict[str, Any]] = {}
    for m in methods:
        param, grid = TUNING_GRID[m]
        scores = {}
        for v in grid:
            vals = [
                psnr(run_baseline(m, x, read_var_e2=rv, **(ex or {}), **{param: v}), t)
                for x, t, rv, ex in samples
            ]
            scores[v] = float(np.mean(vals))
            log.info("tune %s %s=%s: %.3f dB", m, param, v, scores[v])
        best = max(scores, key=scores.__getitem__)
        result[m] = {"param": param, "best": best, "scores": scores}
    return result
