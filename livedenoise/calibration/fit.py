"""Photon-transfer calibration of an sCMOS camera: per-pixel offset, gain and read noise.

The method of Huang et al. (Nat Methods 2013) and Mandracchia et al. (Nat Commun 2020):

- offset (ADU) = per-pixel mean of dark frames; read variance (ADU^2) = their variance;
- for each flat level ``l``: per-pixel mean ``m_l`` and variance ``s2_l``;
- gain (ADU/e-) = per-pixel slope of ``v_l = s2_l - dark_var`` against
  ``x_l = m_l - offset``, fitted through the origin by weighted least squares with
  weights ``1 / Var(v_l)``, ``Var(v_l) ~ 2 s2_l^2 / (N_l - 1) + 2 dark_var^2 / (N_d - 1)``
  (+ the error of ``x_l`` times the slope), the variances taken from the model
  ``s2_l = dark_var + g x_l`` and iterated;
- read_var_e2 = dark_var / gain^2.

Frames are streamed into :class:`MomentAccumulator` (float64 sums, one frame at a
time), so any number of frames fits in memory. :func:`fit_calibration` turns the
per-level statistics into a :class:`~livedenoise.calibration.maps.Calibration` with a defect
map (hot, noisy, dead, gain outlier, non-linear) and fit quality in its ``meta``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from livedenoise.calibration.maps import Calibration, CalibrationError
from livedenoise.calibration.moments import (
    ADVICE,
    MIN_FRAMES,
    MIN_LEVELS,
    RECOMMENDED_DARKS,
    RECOMMENDED_FLAT_FRAMES,
    RECOMMENDED_LEVELS,
    LevelStats,
    MomentAccumulator,
)

__all__ = [
    "MIN_FRAMES",
    "MIN_LEVELS",
    "RECOMMENDED_DARKS",
    "RECOMMENDED_FLAT_FRAMES",
    "RECOMMENDED_LEVELS",
    "CalibrationFit",
    "DefectThresholds",
    "LevelStats",
    "MomentAccumulator",
    "check_flat_level",
    "check_level_counts",
    "fit_calibration",
]

log = logging.getLogger("livedenoise")

MAX_DEFECT_LIST = 20000  # pixel coordinates stored per defect type in the file's JSON


# -- input checks ---------------------------------------------------------------------------


def check_level_counts(n_dark: int, n_flats: Sequence[int]) -> list[str]:
    """Refuse frame counts where the fit is meaningless; return warnings for thin data.

    Raises
    ------
    CalibrationError
        Fewer than :data:`MIN_FRAMES` frames in a stack, or fewer than
        :data:`MIN_LEVELS` flat levels.
    """
    if len(n_flats) < MIN_LEVELS:
        raise CalibrationError(
            f"got {len(n_flats)} flat level(s); the gain is the slope of variance against mean "
            f"and needs at least {MIN_LEVELS} light levels (pass --flat once per level). {ADVICE}"
        )
    if n_dark < MIN_FRAMES:
        raise CalibrationError(f"got {n_dark} dark frames, need at least {MIN_FRAMES}. {ADVICE}")
    for i, n in enumerate(n_flats):
        if n < MIN_FRAMES:
            raise CalibrationError(f"flat level {i + 1} has {n} frames, need at least {MIN_FRAMES}. {ADVICE}")
    warnings = []
    if n_dark < RECOMMENDED_DARKS:
        warnings.append(f"only {n_dark} dark frames (>= {RECOMMENDED_DARKS} recommended)")
    if len(n_flats) < RECOMMENDED_LEVELS:
        warnings.append(f"only {len(n_flats)} flat levels (>= {RECOMMENDED_LEVELS} recommended)")
    if min(n_flats) < RECOMMENDED_FLAT_FRAMES:
        warnings.append(
            f"a flat level has only {min(n_flats)} frames (>= {RECOMMENDED_FLAT_FRAMES} recommended)"
        )
    for w in warnings:
        log.warning("calibration: %s; the per-pixel maps will be noisy", w)
    return warnings


def check_flat_level(
    flat: LevelStats,
    dark: LevelStats,
    *,
    min_signal_e: float = 5.0,
    max_saturated_fraction: float = 1e-3,
) -> dict[str, float]:
    """Check one flat level against the darks: not saturated, not too dark.

    Returns the level's median signal (ADU above offset), median variance above the
    dark variance, a rough gain and the mean signal in photoelectrons.

    Raises
    ------
    CalibrationError
        Saturated pixels above ``max_saturated_fraction``, or a mean signal below
        ``min_signal_e`` photoelectrons; the message says what to change.
    """
    frac = flat.saturated_fraction
    if frac > max_saturated_fraction:
        raise CalibrationError(
            f"flat {flat.label}: {100 * frac:.2f} % of pixels reach the saturation value "
            f"{flat.saturation_adu:g} ADU; lower the light or the exposure for this level "
            "(the brightest flat should stay well below saturation, about half of full well)"
        )
    x = float(np.median(flat.mean_adu.astype(np.float64) - dark.mean_adu))
    v = float(np.median(flat.var_adu2.astype(np.float64) - dark.var_adu2))
    if x <= 0 or v <= 0:
        raise CalibrationError(
            f"flat {flat.label}: no brighter than the darks (median signal {x:.2f} ADU above "
            f"the offset, variance {v:+.2f} ADU^2 above the dark variance); is the shutter open and "
            "the light on? Flats need a uniform, lit field: raise the light or the exposure"
        )
    gain = v / x
    signal_e = x / gain
    if signal_e < min_signal_e:
        raise CalibrationError(
            f"flat {flat.label}: mean signal {signal_e:.1f} e- per pixel is too dark for a "
            f"photon-transfer fit (need >= {min_signal_e:g} e-); raise the light or lengthen "
            "the exposure of this level (aim for ~10 e- at the dimmest level)"
        )
    return {
        "signal_adu": x,
        "var_adu2": v,
        "gain_adu_per_e": gain,
        "signal_e": signal_e,
        "saturated_fraction": frac,
    }


# -- the fit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DefectThresholds:
    """When a pixel counts as defective.

    Attributes
    ----------
    hot_sigma : float
        Hot: offset above the median by more than this many robust SDs of the offsets
        *and* by more than ``hot_read_sd`` dark-noise SDs of that pixel's median.
    hot_read_sd : float
    noisy_factor : float
        Noisy: read noise (e-) above this multiple of the median read noise.
    dead_fraction : float
        Dead: signal at the brightest level below this fraction of the median signal,
        or no positive gain.
    gain_low, gain_high : float
        Gain outlier: gain outside ``[gain_low, gain_high]`` times the median gain.
    nonlinear_p : float
        Non-linear: photon-transfer chi^2 beyond the ``1 - nonlinear_p`` quantile.
    """

    hot_sigma: float = 10.0
    hot_read_sd: float = 5.0
    noisy_factor: float = 3.0
    dead_fraction: float = 0.25
    gain_low: float = 0.5
    gain_high: float = 2.0
    nonlinear_p: float = 1e-6


@dataclass
class CalibrationFit:
    """A fitted calibration and what the report needs.

    Attributes
    ----------
    calibration : Calibration
        The maps (defective gains replaced by the median gain); ``meta`` holds the
        summary, defects and fit quality.
    summary : dict
        JSON-able summary (also ``calibration.meta["summary"]``).
    defects : dict[str, np.ndarray]
        Boolean map per defect type.
    chi2_dof : np.ndarray
        Per-pixel reduced chi^2 of the photon-transfer fit.
    gain_stderr : np.ndarray
        Per-pixel standard error of the gain (ADU/e-).
    ptc : list[dict]
        Per level: median signal (ADU above offset), median variance (ADU^2, dark
        variance included), mean e-, frames, label.
    dark_var_adu2 : float
        Median dark variance (ADU^2), the curve's floor.
    """

    calibration: Calibration
    summary: dict[str, Any]
    defects: dict[str, np.ndarray]
    chi2_dof: np.ndarray
    gain_stderr: np.ndarray
    ptc: list[dict[str, Any]]
    dark_var_adu2: float


def _robust_sd(a: np.ndarray) -> float:
    med = np.median(a)
    return float(1.4826 * np.median(np.abs(a - med)))


def _fit_gain(
    x: np.ndarray,
    v: np.ndarray,
    ok: np.ndarray,
    n_l: np.ndarray,
    dvar: np.ndarray,
    n_dark: int,
    *,
    weighted: bool,
    iterations: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel slope through the origin of ``v`` (L, ...) against ``x`` (L, ...).

    Returns gain, its standard error and the chi^2 (sum of weighted squared residuals).
    """
    okf = ok.astype(np.float64)
    nl = n_l.reshape((-1,) + (1,) * (x.ndim - 1))
    if not weighted:
        w = okf
        sxx = (w * x * x).sum(0)
        g = np.where(sxx > 0, (w * x * v).sum(0) / np.where(sxx > 0, sxx, 1), np.nan)
        iterations = 0
    else:
        # first pass: weights from the measured variances
        s2 = np.maximum(v + dvar, 1e-12)
        w = okf / (2 * s2**2 / (nl - 1) + 2 * dvar**2 / (n_dark - 1))
        sxx = (w * x * x).sum(0)
        g = np.where(sxx > 0, (w * x * v).sum(0) / np.where(sxx > 0, sxx, 1), np.nan)
    for _ in range(iterations):
        # weights from the model variance dark_var + g x (no bias from noisy weights)
        gp = np.where(np.isfinite(g) & (g > 0), g, np.nanmedian(g))
        s2 = np.maximum(dvar + gp * x, 1e-12)
        var_v = 2 * s2**2 / (nl - 1) + 2 * dvar**2 / (n_dark - 1) + gp**2 * (s2 / nl + dvar / n_dark)
        w = okf / var_v
        sxx = (w * x * x).sum(0)
        g = np.where(sxx > 0, (w * x * v).sum(0) / np.where(sxx > 0, sxx, 1), np.nan)
    if weighted:
        stderr = np.where(sxx > 0, 1.0 / np.sqrt(np.where(sxx > 0, sxx, 1)), np.nan)
        gp = np.where(np.isfinite(g), g, 0.0)
        chi2 = (w * (v - gp * x) ** 2).sum(0)
    else:
        resid = okf * (v - np.where(np.isfinite(g), g, 0.0) * x)
        dof = np.maximum(okf.sum(0) - 1, 1)
        stderr = np.sqrt((resid**2).sum(0) / dof / np.where(sxx > 0, sxx, np.inf))
        chi2 = np.full(g.shape, np.nan)
    return g, stderr, chi2


def fit_calibration(
    dark: LevelStats,
    flats: Sequence[LevelStats],
    *,
    camera: str | None = None,
    weighted: bool = True,
    iterations: int = 3,
    thresholds: DefectThresholds | None = None,
    min_signal_e: float = 5.0,
    max_saturated_fraction: float = 1e-3,
    roi: tuple[int, int, int, int] | None = None,
    rows_per_block: int = 128,
    extra_meta: dict[str, Any] | None = None,
) -> CalibrationFit:
    """Fit per-pixel offset, gain and read noise from dark and flat statistics.

    Parameters
    ----------
    dark : LevelStats
        Statistics of the dark frames (shutter closed).
    flats : sequence of LevelStats
        One per light level (>= 2; 4-6 recommended).
    camera : str, optional
        Camera name recorded in the file.
    weighted : bool
        Weighted least squares (default) or ordinary least squares through the origin.
    iterations : int
        Re-weighting passes with model variances.
    thresholds : DefectThresholds, optional
        Defect criteria.
    min_signal_e, max_saturated_fraction : float
        Per-level checks (:func:`check_flat_level`).
    roi : (x, y, w, h), optional
        Sensor region the frames came from, when not the full sensor (recorded in meta).
    rows_per_block : int
        Rows fitted at a time (bounds the memory of the fit).
    extra_meta : dict, optional
        Added to the calibration's meta.

    Returns
    -------
    CalibrationFit

    Raises
    ------
    CalibrationError
        Too few frames or levels, mismatched shapes, saturated or too-dark flats.
    """
    th = thresholds or DefectThresholds()
    flats = list(flats)
    warnings = check_level_counts(dark.n, [f.n for f in flats])
    shape = dark.mean_adu.shape
    for f in flats:
        if f.mean_adu.shape != shape:
            raise CalibrationError(
                f"flat {f.label} is {f.mean_adu.shape[1]}×{f.mean_adu.shape[0]} but the darks are "
                f"{shape[1]}×{shape[0]}; acquire darks and flats with the same ROI and binning"
            )
    level_checks = [
        check_flat_level(f, dark, min_signal_e=min_signal_e, max_saturated_fraction=max_saturated_fraction)
        for f in flats
    ]
    order = np.argsort([c["signal_adu"] for c in level_checks])
    flats = [flats[i] for i in order]
    level_checks = [level_checks[i] for i in order]

    h, w = shape
    L = len(flats)
    n_l = np.array([f.n for f in flats], np.float64)
    gain = np.empty(shape, np.float64)
    stderr = np.empty(shape, np.float64)
    chi2 = np.empty(shape, np.float64)
    n_used = np.empty(shape, np.int16)
    for r0 in range(0, h, rows_per_block):
        sl = np.s_[r0 : r0 + rows_per_block]
        off = dark.mean_adu[sl].astype(np.float64)
        dvar = dark.var_adu2[sl].astype(np.float64)
        x = np.stack([f.mean_adu[sl].astype(np.float64) - off for f in flats])
        v = np.stack([f.var_adu2[sl].astype(np.float64) - dvar for f in flats])
        ok = np.stack([~f.saturated[sl] for f in flats]) & (x > 0)
        g, se, c2 = _fit_gain(x, v, ok, n_l, dvar, dark.n, weighted=weighted, iterations=iterations)
        gain[sl], stderr[sl], chi2[sl] = g, se, c2
        n_used[sl] = ok.sum(0)
    dof = np.maximum(n_used.astype(np.float64) - 1, 1)
    chi2_dof = chi2 / dof

    offset = dark.mean_adu.astype(np.float64)
    dvar_all = dark.var_adu2.astype(np.float64)
    valid = np.isfinite(gain) & (gain > 0)
    if not np.any(valid):
        raise CalibrationError(
            "no pixel has a positive gain; are the flats lit and the darks dark? " + ADVICE
        )
    gmed = float(np.median(gain[valid]))

    # -- defects --------------------------------------------------------------------------
    top = flats[-1].mean_adu.astype(np.float64) - offset
    dead = ~valid | (top < th.dead_fraction * np.median(top)) | (n_used < 1)
    gain_outlier = ~dead & ((gain < th.gain_low * gmed) | (gain > th.gain_high * gmed))
    replace = dead | gain_outlier
    gain_fixed = np.where(replace, gmed, gain)
    read_var_e2 = dvar_all / gain_fixed**2
    read_sd_e = np.sqrt(read_var_e2)
    rn_med = float(np.median(read_sd_e))
    off_med = float(np.median(offset))
    dark_sd = float(np.median(np.sqrt(dvar_all)))
    hot_level = max(th.hot_sigma * _robust_sd(offset), th.hot_read_sd * dark_sd)
    hot = offset - off_med > hot_level
    noisy = read_sd_e > th.noisy_factor * rn_med
    nonlinear = np.zeros(shape, bool)
    if weighted and L >= 2:
        from scipy.stats import chi2 as chi2_dist

        limit = chi2_dist.isf(th.nonlinear_p, dof)
        nonlinear = ~dead & (n_used >= 2) & (chi2 > limit)
    defects = {"hot": hot, "noisy": noisy, "dead": dead, "gain_outlier": gain_outlier, "nonlinear": nonlinear}
    any_defect = np.zeros(shape, bool)
    for m in defects.values():
        any_defect |= m
    counts = {k: int(np.count_nonzero(m)) for k, m in defects.items()}
    counts["any"] = int(np.count_nonzero(any_defect))
    pixels = {}
    truncated = {}
    for k, m in defects.items():
        ys, xs = np.nonzero(m)
        truncated[k] = len(ys) > MAX_DEFECT_LIST
        pixels[k] = [[int(a), int(b)] for a, b in zip(ys[:MAX_DEFECT_LIST], xs[:MAX_DEFECT_LIST])]

    # -- summary --------------------------------------------------------------------------
    good = ~any_defect
    ptc: list[dict[str, Any]] = []
    for f, c in zip(flats, level_checks):
        xl = f.mean_adu.astype(np.float64) - offset
        ptc.append(
            {
                "label": f.label,
                "frames": f.n,
                "exposure_ms": f.exposure_ms,
                "signal_adu": float(np.median(xl[good])) if good.any() else c["signal_adu"],
                "variance_adu2": float(np.median(f.var_adu2[good]))
                if good.any()
                else c["var_adu2"] + dark_sd**2,
                "mean_e": float(np.mean(xl / gain_fixed)),
                "saturated_fraction": c["saturated_fraction"],
                **{k: v for k, v in f.info.items() if isinstance(v, (int, float, str))},
            }
        )
    rel_se = stderr[good] / gain[good] if good.any() else stderr / gmed
    fit_quality = {
        "method": "photon transfer, weighted least squares through the origin"
        if weighted
        else "photon transfer, ordinary least squares through the origin",
        "iterations": iterations if weighted else 0,
        "gain_rel_stderr_median": float(np.nanmedian(rel_se)),
        "gain_rel_stderr_p95": float(np.nanpercentile(rel_se, 95)),
        "chi2_dof_median": float(np.nanmedian(chi2_dof)) if weighted else None,
        "nonlinear_p": th.nonlinear_p,
    }
    summary = {
        "gain_adu_per_e_median": gmed,
        "read_noise_e_median": rn_med,
        "read_noise_e_rms": float(np.sqrt(np.mean(read_var_e2))),
        "offset_adu_median": off_med,
        "dark_frames": dark.n,
        "flat_levels": L,
        "flat_frames": [f.n for f in flats],
        "mean_e_per_level": [round(p["mean_e"], 3) for p in ptc],
        "defects": counts,
        "shape": [h, w],
    }
    meta: dict[str, Any] = {
        "camera": camera,
        "created": datetime.now(UTC).isoformat(),
        "source": "livedenoise calibrate (photon transfer)",
        "summary": summary,
        "fit_quality": fit_quality,
        "levels": ptc,
        "dark": {"label": dark.label, "frames": dark.n, "exposure_ms": dark.exposure_ms},
        "defects": {
            "counts": counts,
            "thresholds": asdict(th),
            "pixels_yx": pixels,
            "truncated": truncated,
            "gain_replaced": {
                "count": int(np.count_nonzero(replace)),
                "value_adu_per_e": gmed,
                "rule": "dead and gain-outlier pixels get the median gain",
            },
        },
        "warnings": warnings,
    }
    if roi is not None:
        x0, y0, rw, rh = (int(a) for a in roi)
        meta["sensor_roi"] = {
            "x": x0,
            "y": y0,
            "width": rw,
            "height": rh,
            "note": "partial calibration: these maps cover only this region of the sensor",
        }
    if extra_meta:
        meta.update(extra_meta)
    cal = Calibration(
        offset.astype(np.float32), gain_fixed.astype(np.float32), read_var_e2.astype(np.float32), meta=meta
    )
    log.info(
        "calibration: gain %.4g ADU/e- (median), read noise %.3g e-, offset %.5g ADU, %d defective pixels",
        gmed,
        rn_med,
        off_med,
        counts["any"],
    )
    return CalibrationFit(
        calibration=cal,
        summary=summary,
        defects=defects,
        chi2_dof=chi2_dof.astype(np.float32),
        gain_stderr=stderr.astype(np.float32),
        ptc=ptc,
        dark_var_adu2=float(np.median(dvar_all)),
    )


def stats_from_frames(
    frames: Iterable[np.ndarray],
    shape: tuple[int, int],
    *,
    label: str = "",
    saturation_adu: float = 65535,
    exposure_ms: float | None = None,
) -> LevelStats:
    """Accumulate an iterable of frames (or chunks) into :class:`LevelStats`."""
    acc = MomentAccumulator(shape, saturation_adu=saturation_adu, label=label)
    for f in frames:
        acc.add(f)
    return acc.finish(exposure_ms=exposure_ms)


__all__ += ["stats_from_frames"]


# -- TIFF stacks ---------------------------------------------------------------------------
