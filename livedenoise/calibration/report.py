"""A one-page PNG report of a calibration: photon-transfer curve, maps, histograms, defects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.calibration.fit import CalibrationFit
from livedenoise.util.atomic import atomic_path

__all__ = ["write_report"]


def _hist(ax: Any, data: np.ndarray, title: str, xlabel: str, color: str) -> None:
    d = data[np.isfinite(data)].ravel()
    lo, hi = np.percentile(d, [0.05, 99.95]) if d.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    ax.hist(np.clip(d, lo, hi), bins=120, range=(lo, hi), color=color, alpha=0.85)
    ax.set_yscale("log")
    med = float(np.median(d)) if d.size else float("nan")
    ax.axvline(med, color="k", lw=1, ls="--")
    ax.set_title(f"{title}\nmedian {med:.4g}", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pixels")


def _image(fig: Any, ax: Any, data: np.ndarray, title: str, cmap: str) -> None:
    h, w = data.shape
    step = max(1, int(np.ceil(max(h, w) / 512)))  # a thumbnail: at most ~512 px a side
    d = data[::step, ::step]
    lo, hi = np.percentile(d, [1, 99])
    im = ax.imshow(d, cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    ax.set_title(title + (f" (every {step}th px)" if step > 1 else ""), fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)


def write_report(fit: CalibrationFit, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Write the calibration report PNG to ``path`` (atomically).

    Panels: the photon-transfer curve (per-level median variance against median
    signal, log-log, with the fitted gain line and the read-noise floor), images and
    histograms of the offset, gain and read-noise maps, the defect counts and the
    summary.
    """
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, no display needed

    cal = fit.calibration
    s = fit.summary
    gmed = s["gain_adu_per_e_median"]
    fig = Figure(figsize=(16, 9.5), dpi=dpi, layout="constrained")
    gs = fig.add_gridspec(3, 4, height_ratios=[1.15, 1, 1])

    # photon-transfer curve
    ax = fig.add_subplot(gs[0, 0:2])
    x = np.array([p["signal_adu"] for p in fit.ptc])
    v = np.array([p["variance_adu2"] for p in fit.ptc])
    dv = fit.dark_var_adu2
    xs = np.geomspace(max(min(x.min(), dv / gmed) / 3, 1e-3), x.max() * 2, 200)
    ax.loglog(xs, dv + gmed * xs, color="C0", lw=1.5, label=f"fit: var = read var + {gmed:.3g}·signal")
    ax.loglog(xs, gmed * xs, color="C0", lw=0.8, ls=":", label="shot noise only (slope 1)")
    ax.axhline(
        dv,
        color="C3",
        lw=1,
        ls="--",
        label=f"read-noise floor {dv:.3g} ADU² ({s['read_noise_e_median']:.2f} e⁻)",
    )
    ax.loglog(x, v, "o", color="k", ms=7, label="flat levels (median over pixels)")
    for p, xi, vi in zip(fit.ptc, x, v):
        ax.annotate(
            f"{p['mean_e']:.0f} e⁻", (xi, vi), textcoords="offset points", xytext=(6, -12), fontsize=8
        )
    ax.set_xlabel("signal: mean − offset (ADU)")
    ax.set_ylabel("temporal variance (ADU²)")
    ax.set_title("Photon-transfer curve", fontsize=11, fontweight="bold")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")

    # summary text and defects
    ax = fig.add_subplot(gs[0, 2])
    ax.axis("off")
    q = cal.meta.get("fit_quality", {})
    h, w = s["shape"]
    lines = [
        f"camera: {cal.meta.get('camera') or '—'}",
        f"calibration id: {cal.id}",
        f"sensor: {w} × {h} px",
        "",
        f"gain (median):        {gmed:.4g} ADU/e⁻",
        f"read noise (median): {s['read_noise_e_median']:.3g} e⁻ rms",
        f"read noise (rms):      {s['read_noise_e_rms']:.3g} e⁻",
        f"offset (median):       {s['offset_adu_median']:.5g} ADU",
        "",
        f"dark frames: {s['dark_frames']}",
        f"flat levels: {s['flat_levels']} × {', '.join(str(n) for n in s['flat_frames'])} frames",
        "mean e⁻ per level: " + ", ".join(f"{m:.3g}" for m in s["mean_e_per_level"]),
        "",
        f"gain std. error per pixel: {100 * q.get('gain_rel_stderr_median', float('nan')):.2g} % (median)",
    ]
    if q.get("chi2_dof_median") is not None:
        lines.append(f"PTC χ²/dof: {q['chi2_dof_median']:.2f} (median; 1 = ideal)")
    roi = cal.meta.get("sensor_roi")
    if roi:
        lines.append(f"PARTIAL: ROI {roi['width']}×{roi['height']} at ({roi['x']}, {roi['y']})")
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9, transform=ax.transAxes)
    ax.set_title("Summary", fontsize=11, fontweight="bold", loc="left")

    ax = fig.add_subplot(gs[0, 3])
    counts = s["defects"]
    names = [k for k in ("hot", "noisy", "dead", "gain_outlier", "nonlinear") if k in counts]
    vals = [counts[k] for k in names]
    bars = ax.barh(names[::-1], vals[::-1], color=["C3", "C1", "k", "C4", "C2"][: len(names)][::-1])
    for b, val in zip(bars, vals[::-1]):
        ax.text(
            b.get_width(),
            b.get_y() + b.get_height() / 2,
            f" {val} ({100 * val / (h * w):.3g} %)",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, max([*vals, 1]) * 1.6)
    rep = cal.meta.get("defects", {}).get("gain_replaced", {}).get("count", 0)
    ax.set_title(
        f"Defective pixels: {counts.get('any', sum(vals))}\n({rep} gains set to the median)", fontsize=10
    )
    ax.set_xlabel("pixels")

    read_e = np.sqrt(cal.read_var_e2)
    maps = [
        (cal.offset_adu, "offset", "ADU", "viridis", "C0"),
        (cal.gain_adu_per_e, "gain", "ADU/e⁻", "magma", "C1"),
        (read_e, "read noise", "e⁻ rms", "cividis", "C2"),
    ]
    for i, (m, title, unit, cmap, color) in enumerate(maps):
        _image(fig, fig.add_subplot(gs[1, i]), m, f"{title} map ({unit})", cmap)
        _hist(fig.add_subplot(gs[2, i]), m, f"{title} ({unit})", unit, color)
    _image(
        fig,
        fig.add_subplot(gs[1, 3]),
        np.log10(np.maximum(fit.chi2_dof, 1e-3)),
        "PTC fit log10(χ²/dof)",
        "coolwarm",
    )
    _hist(
        fig.add_subplot(gs[2, 3]),
        100 * fit.gain_stderr / cal.gain_adu_per_e,
        "gain std. error",
        "% of gain",
        "C4",
    )
    fig.suptitle("livedenoise sCMOS calibration (photon transfer)", fontsize=13, fontweight="bold")

    path = Path(path)
    with atomic_path(path, "report") as tmp:
        fig.savefig(tmp, format="png")
    return path
