"""Measured quality: shipped models against classical baselines on held-out synthetic frames.

The evaluation set comes from :func:`livedenoise.imaging.synthetic.make_eval_set` with
``held_out=True``: its own seed range, another mix of structures than training, and
fixed photon levels (bins at 5, 10, 20, 50 and 100 e- peak, plus a 1-10 e- bin). Every
method restores the *same* photoelectron frames; PSNR, SSIM, NRMSE and the Kolmogorov
distance are taken against the noise-free target (:mod:`livedenoise.imaging.metrics`).
Timings are the median and the best wall time per frame of the evaluation's frame size
(on a shared machine the best is closer to the method's own cost).

``python -m livedenoise.cli evaluate`` / ``livedenoise evaluate`` prints the table.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from livedenoise.imaging import metrics
from livedenoise.imaging.psf import airy_psf, deconvolve_target_psf, gaussian_psf
from livedenoise.imaging.synthetic import make_eval_set
from livedenoise.inference.engines import make_engine
from livedenoise.inference.modelio import list_models
from livedenoise.training.baselines import available_baselines, run_baseline

__all__ = ["DEFAULT_BINS", "EvalConfig", "evaluate", "format_markdown", "make_bins", "tuning_set"]

log = logging.getLogger("livedenoise")

# label -> (low, high) peak photoelectrons; equal bounds = one photon level
DEFAULT_BINS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("1-10", (1.0, 10.0)),
    ("5", (5.0, 5.0)),
    ("10", (10.0, 10.0)),
    ("20", (20.0, 20.0)),
    ("50", (50.0, 50.0)),
    ("100", (100.0, 100.0)),
)
TARGET_BINS = ("5", "10", "20", "50", "100")  # the 5-100 e- range: the headline mean
TUNING_SEED = 777  # baselines are tuned on this seed only; evaluation seeds must differ
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "psnr": metrics.psnr,
    "ssim": metrics.ssim,
    "nrmse": metrics.nrmse,
    "kd": metrics.kolmogorov_distance,
}


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes
    ----------
    models : list of str or None
        Model ids or paths; None = every installed model of ``task``.
    baselines : list of str or None
        Names in :data:`livedenoise.training.baselines.BASELINES`; None = every one usable here for ``task``.
    n : int
        Frames per photon-level bin.
    size : int
        Frame side length in pixels.
    task : str
        ``denoise`` or ``deconvolve``.
    seed : int
        Evaluation seed (never :data:`TUNING_SEED`).
    engine : str
        Engine kind for the models (``cpu`` by default, the live path's engine).
    bins : tuple
        ``(label, (low, high))`` photon-level bins.
    """

    models: list[str] | None = None
    baselines: list[str] | None = None
    n: int = 4
    size: int = 256
    task: str = "denoise"
    seed: int = 0
    engine: str = "cpu"
    bins: tuple[tuple[str, tuple[float, float]], ...] = DEFAULT_BINS
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1 frames per bin, got {self.n}")
        if self.size < 32:
            raise ValueError(f"--size must be >= 32 pixels, got {self.size}")
        if self.task not in ("denoise", "deconvolve"):
            raise ValueError(f"--task must be denoise or deconvolve, got {self.task!r}")
        if self.seed == TUNING_SEED:
            raise ValueError(f"seed {TUNING_SEED} is the baselines' tuning seed; evaluate on another --seed")


def make_bins(cfg: EvalConfig) -> list[tuple[str, np.ndarray, np.ndarray, list[dict[str, Any]]]]:
    """The held-out frames of every bin: ``(label, inputs, targets, params)``."""

    out = []
    for i, (label, rng_e) in enumerate(cfg.bins):
        xs, ts, ps = make_eval_set(cfg.n, cfg.size, rng_e, cfg.task, seed=cfg.seed * 100 + i, held_out=True)
        out.append((label, xs, ts, ps))
    return out


def tuning_set(n: int = 12, size: int = 256, task: str = "denoise", peak_e_range=(5.0, 100.0)) -> list[tuple]:
    """Frames for tuning the baselines' parameters (seed :data:`TUNING_SEED`, not evaluated on)."""

    xs, ts, ps = make_eval_set(n, size, peak_e_range, task, seed=TUNING_SEED, held_out=True)
    return [(x, t, p["read_var_e2"], _psfs(p, task)) for x, t, p in zip(xs, ts, ps)]


def _psfs(p: dict[str, Any], task: str) -> dict[str, np.ndarray] | None:
    """The frame's true PSF and (deconvolve task) the narrower PSF of the target."""

    if task != "deconvolve":
        return None
    if p.get("psf") == "airy":
        psf = airy_psf(p["na"], p["wavelength_nm"], p["pixel_nm"])
    else:
        psf = gaussian_psf(p["sigma_px"])
    return {"psf": psf, "target_psf": deconvolve_target_psf(p["sigma_px"])}


def _score(est: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {k: fn(est, ref) for k, fn in METRICS.items()}


def _model_methods(cfg: EvalConfig) -> list[tuple[str, Any]]:
    """``[(label, engine)]`` for the models to evaluate."""

    ids = cfg.models
    if ids is None:
        ids = [c.id for c in list_models() if getattr(c, "task", "denoise") == cfg.task]
        if not ids:
            log.warning("no installed %s model: evaluating baselines only", cfg.task)
    out = []
    for mid in ids:
        eng = make_engine(cfg.engine, model=mid, **cfg.engine_options)
        eng.prepare((cfg.size, cfg.size))
        out.append((str(eng.model_id or mid), eng))
    return out


def _baseline_methods(cfg: EvalConfig) -> list[str]:

    avail = available_baselines(cfg.task)
    if cfg.baselines is None:
        chosen = [b for b, (ok, _) in avail.items() if ok]
        skipped = {b: why for b, (ok, why) in avail.items() if not ok and "not a" not in why}
        for b, why in skipped.items():
            log.warning("baseline %s skipped: %s", b, why)
        return chosen
    for b in cfg.baselines:
        if b not in avail:
            raise ValueError(f"unknown baseline {b!r}; choose from {', '.join(avail)}")
        ok, why = avail[b]
        if not ok:
            raise ValueError(f"baseline {b!r} cannot run: {why}")
    return list(cfg.baselines)


def evaluate(cfg: EvalConfig, progress: bool | None = None) -> dict[str, Any]:
    """Run the evaluation; return a JSON-able dict (see :func:`format_markdown`).

    Returns
    -------
    dict
        ``config``, ``machine``, ``methods`` (ordered), ``results[method][bin][metric]``
        (means over the bin's frames), ``ms_per_frame[method]`` (median), ``summary``
        (means over the 5-100 e- bins per method) and ``target`` (best model vs GAT+NLM and TV).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    baselines = _baseline_methods(cfg)
    models = _model_methods(cfg)
    try:
        bins = make_bins(cfg)
        methods = ["raw"] + [m for m, _ in models] + baselines
        scores: dict[str, dict[str, list[dict[str, float]]]] = {m: {b[0]: [] for b in bins} for m in methods}
        times: dict[str, list[float]] = {m: [] for m in methods}
        total = sum(len(b[1]) for b in bins)
        bar = tqdm(
            total=total, desc="evaluate", unit="frame", disable=None if progress is None else not progress
        )
        out = np.empty((cfg.size, cfg.size), np.float32)
        for label, xs, ts, ps in bins:
            for x, t, p in zip(xs, ts, ps):
                x = np.ascontiguousarray(x, np.float32)
                scores["raw"][label].append(_score(x, t))
                for name, eng in models:
                    t0 = time.perf_counter()
                    eng.restore(x, out)
                    times[name].append(time.perf_counter() - t0)
                    scores[name][label].append(_score(out, t))
                extra = _psfs(p, cfg.task) or {}
                for b in baselines:
                    t0 = time.perf_counter()
                    est = run_baseline(b, x, read_var_e2=p["read_var_e2"], **extra)
                    times[b].append(time.perf_counter() - t0)
                    scores[b][label].append(_score(est, t))
                bar.update(1)
        bar.close()
    finally:
        model_info = {
            name: {**eng.describe(), "sha256": getattr(getattr(eng, "card", None), "sha256", None)}
            for name, eng in models
        }
        for _, eng in models:
            eng.close()

    results = {
        m: {lab: {k: float(np.mean([s[k] for s in rows])) for k in METRICS} for lab, rows in per.items()}
        for m, per in scores.items()
    }
    in_range = [lab for lab, _ in cfg.bins if lab in TARGET_BINS]
    summary = {
        m: {k: float(np.mean([results[m][lab][k] for lab in in_range])) for k in METRICS} if in_range else {}
        for m in methods
    }
    report = {
        "config": asdict(cfg),
        "machine": _machine(),
        "methods": methods,
        "models": model_info,
        "results": results,
        "ms_per_frame": {m: (1e3 * float(np.median(v)) if v else 0.0) for m, v in times.items()},
        "ms_per_frame_min": {m: (1e3 * float(np.min(v)) if v else 0.0) for m, v in times.items()},
        "summary_bins": in_range,
        "summary": summary,
        "target": _target(summary, [m for m, _ in models]),
        "seconds": time.perf_counter() - t_start,
    }
    return report


def _target(summary: dict[str, dict[str, float]], models: Sequence[str]) -> dict[str, Any] | None:
    """The issue's target: best model >= 1.5 dB mean PSNR above GAT+NLM and TV over 5-100 e-."""
    refs = [r for r in ("gat-nlm", "tv") if summary.get(r)]
    if not models or not refs or not summary.get(models[0]):
        return None
    best = max(models, key=lambda m: summary[m]["psnr"])
    gains = {r: summary[best]["psnr"] - summary[r]["psnr"] for r in refs}
    return {
        "best_model": best,
        "gain_db": gains,
        "required_db": 1.5,
        "met": all(g >= 1.5 for g in gains.values()),
    }


def _machine() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def format_markdown(report: dict[str, Any]) -> str:
    """Markdown tables: PSNR per bin with the 5-100 e- means and timings, then SSIM per bin."""
    cfg = report["config"]
    labels = [b[0] for b in cfg["bins"]]
    res, summ, ms = report["results"], report["summary"], report["ms_per_frame"]
    size = cfg["size"]
    lines = [
        f"Held-out synthetic set, task `{cfg['task']}`, {cfg['n']} frames of {size}×{size} per photon level, "
        f"seed {cfg['seed']}. PSNR (dB) per peak photon level (e-); mean over {', '.join(report['summary_bins'])} e-; "
        "SSIM, NRMSE and Kolmogorov distance (KD) are means over the same bins.",
        "",
        "| method | " + " | ".join(f"{lab} e-" for lab in labels) + " | mean PSNR | SSIM | NRMSE | KD | "
        f"ms/frame ({size}², median / best) |",
        "|---" * (len(labels) + 6) + "|",
    ]
    for m in report["methods"]:
        cells = [f"{res[m][lab]['psnr']:.2f}" for lab in labels]
        s = summ.get(m) or {}
        tail = (
            [f"{s['psnr']:.2f}", f"{s['ssim']:.3f}", f"{s['nrmse']:.3f}", f"{s['kd']:.3f}"]
            if s
            else ["-"] * 4
        )
        best = report.get("ms_per_frame_min", ms)[m]
        t = "-" if m == "raw" else f"{ms[m]:.0f} / {best:.0f}"
        lines.append(f"| {m} | " + " | ".join(cells + tail + [t]) + " |")
    lines += [
        "",
        "SSIM per peak photon level:",
        "",
        "| method | " + " | ".join(f"{lab} e-" for lab in labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for m in report["methods"]:
        lines.append(f"| {m} | " + " | ".join(f"{res[m][lab]['ssim']:.3f}" for lab in labels) + " |")
    tgt = report.get("target")
    if tgt:
        gains = ", ".join(f"{g:+.2f} dB vs {r}" for r, g in tgt["gain_db"].items())
        verdict = "met" if tgt["met"] else "NOT met"
        lines += [
            "",
            f"Best model {tgt['best_model']}: {gains} (target >= {tgt['required_db']} dB: {verdict}).",
        ]
    return "\n".join(lines)
