"""The figure of the real-structure evaluation (:mod:`livedenoise.training.evaluate_real`).

Example frames (raw | each method | truth), PSNR against the peak, and each method's gain over
GAT+BM3D (or the best baseline evaluated) per peak. With many methods (every installed model is
evaluated by default) the figure shows :data:`FIGURE_METHODS` of them: the shipped live and
quality models, the best other models, every baseline; the tables hold them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.imaging import metrics
from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL
from livedenoise.util.atomic import atomic_path

__all__ = ["FIGURE_METHODS", "figure_methods", "write_real_figure"]

FIGURE_METHODS = 8
"""Methods with crops and curves in the figure (the tables hold them all)."""


def _baselines(report: dict[str, Any], methods: list[str]) -> list[str]:
    """The classical baselines among ``methods`` (every method the report has no model entry for)."""
    return [m for m in methods if m not in report["models"]]


def figure_methods(report: dict[str, Any]) -> list[str]:
    """The methods the figure shows (all of them up to :data:`FIGURE_METHODS`; every one is in the tables).

    Over that: the shipped live and quality models, the best-scoring other models that fit, and
    every baseline, in the report's order.
    """
    methods = [m for m in report["methods"] if m != "raw"]
    if len(methods) <= FIGURE_METHODS:
        return methods
    models = [m for m in methods if m in report["models"]]
    baselines = _baselines(report, methods)
    shipped = [m for m in models if m.split(" (")[0] in (DEFAULT_MODEL, QUALITY_MODEL)]
    others = sorted(
        (m for m in models if m not in shipped),
        key=lambda m: -(report["summary"][m]["psnr"] if report["summary"][m]["psnr"] is not None else -1e9),
    )
    keep = set(shipped + others[: max(FIGURE_METHODS - len(shipped) - len(baselines), 0)] + baselines)
    return [m for m in methods if m in keep]


def _reference(report: dict[str, Any], shown: list[str]) -> str:
    """The method the figure's gain panel is measured against: GAT+BM3D, else the best baseline, else raw."""
    baselines = _baselines(report, shown)
    if "gat-bm3d" in baselines:
        return "gat-bm3d"
    scored = [m for m in baselines if report["summary"][m]["psnr"] is not None]
    return max(scored, key=lambda m: report["summary"][m]["psnr"]) if scored else "raw"


def write_real_figure(report: dict[str, Any], path: str | Path) -> None:
    """PNG: example frames (raw | each method | truth), PSNR vs peak, and each method's gain over a baseline.

    With more than :data:`FIGURE_METHODS` methods, the figure shows those :func:`figure_methods`
    picks and names how many more the tables hold.
    """
    from matplotlib.figure import Figure

    examples = report["examples"]
    methods = figure_methods(report)
    left_out = len(report["methods"]) - 1 - len(methods)
    cols = 2 + len(methods)
    rows = len(examples) + 1
    fig = Figure(figsize=(max(2.0 * cols, 10.0), 2.5 * rows + 1.5), dpi=100)
    if left_out:
        fig.suptitle(
            f"{len(methods)} of {len(methods) + left_out} methods shown: the shipped live and quality "
            f"models, the best others, the baselines (every method is in the tables)",
            fontsize=9,
        )
    grid = fig.add_gridspec(rows, 2 * cols)  # a crop spans 2 columns, each curve panel half of them
    for r, ex in enumerate(examples):
        truth = ex["truth"]
        c = min(128, truth.shape[0])
        y0 = (truth.shape[0] - c) // 2
        vmin, vmax = float(truth.min()), float(np.percentile(truth, 99.8))
        panels = [("raw", ex["raw"])] + [(m, ex["restored"].get(m)) for m in methods] + [("truth", truth)]
        for k, (title, img) in enumerate(panels):
            ax = fig.add_subplot(grid[r, 2 * k : 2 * k + 2])
            ax.set_axis_off()
            if img is None:
                ax.set_title(f"{title}\n(skipped)", fontsize=7)
                continue
            ax.imshow(
                img[y0 : y0 + c, y0 : y0 + c], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest"
            )
            label = title
            if title not in ("truth",):
                label += f"\n{metrics.psnr(img, truth):.1f} dB"
            if k == 0:
                d = ex["design"]
                label = (
                    f"{d['crop']}, {d['psf']}\npeak {d['peak_e']:g}, bg {d['background_e']:g} e⁻\n" + label
                )
            ax.set_title(label, fontsize=7)
    peaks = [float(p) for p in report["config"]["peaks"]]

    def curve(m: str) -> np.ndarray:
        ys = [report["by_peak"][m][str(p)]["psnr"] for p in peaks]
        return np.array([np.nan if v is None else v for v in ys], float)

    curves = {m: curve(m) for m in ["raw", *methods]}
    ref = _reference(report, methods)
    ax = fig.add_subplot(grid[rows - 1, :cols])
    gain = fig.add_subplot(grid[rows - 1, cols:])
    for m, ys in curves.items():
        (line,) = ax.plot(peaks, ys, marker="o", label=m)
        if m != ref:
            gain.plot(peaks, ys - curves[ref], marker="o", color=line.get_color(), label=m)
    gain.axhline(0.0, color="k", lw=0.8)
    for a, ylabel in ((ax, "PSNR (dB)"), (gain, f"PSNR − {ref} (dB)")):
        a.set_xscale("log")
        a.set_xlabel("peak (e⁻)")
        a.set_ylabel(ylabel)
        a.grid(True, alpha=0.3)
    if ref != "raw":
        lo = np.nanmin([np.nanmin(curves[m] - curves[ref]) for m in methods if m != ref] or [0.0])
        gain.set_ylim(max(lo, -6.0) - 0.5, None)  # raw sits 20 dB below: the scale is the methods'
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path, "figure") as tmp:
        fig.savefig(tmp, format="png")
