"""Deconvolution on real structures: a deconvolution model against Richardson-Lucy at its best.

A deconvolution model is made for one microscope: its card names the PSF it was trained on
(``training.psf``, a :data:`~livedenoise.imaging.psf.NAMED_PSFS` name). Each evaluation frame is
one real crop (:func:`livedenoise.training.evaluate_real.load_real_crops`) blurred by that PSF,
scaled so that its 99.9th percentile sits at a peak photon level, plus a flat background, through
the synthetic camera model (Poisson shot noise, per-pixel sCMOS maps, ADU quantisation). The truth
is what the ``deconvolve`` task restores to: the same crop seen through a Gaussian of half the
PSF's width (:func:`~livedenoise.imaging.psf.deconvolve_target_psf`), on the same scale and
background.

Richardson-Lucy (scikit-image, the known PSF, the result seen through the same target PSF) runs
at every iteration count of ``iterations`` on every frame; the report gives it the count that is
best at each peak level (an oracle choice no user has, so the comparison favours RL), and the
single count that is best over the whole set. PSNR is against the truth, as everywhere in the
evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from livedenoise.imaging import metrics
from livedenoise.imaging.psf import convolve_fft, deconvolve_target_psf, named_psf
from livedenoise.inference.engines import make_engine
from livedenoise.inference.modelio import read_card, resolve_model
from livedenoise.training.baselines import available_baselines, run_baseline
from livedenoise.training.evaluate import _machine
from livedenoise.training.evaluate_real import (
    DEFAULT_BACKGROUNDS,
    DEFAULT_PEAKS,
    grid_design,
    load_real_crops,
    noisy_frame,
)

__all__ = ["RL_ITERATIONS", "RealDeconvConfig", "evaluate_real_deconv", "format_deconv_markdown", "model_psf"]

RL_ITERATIONS: tuple[int, ...] = (1, 2, 3, 5, 8, 12, 20, 30, 50)


@dataclass
class RealDeconvConfig:
    """What to evaluate (see the module docstring).

    Attributes
    ----------
    model : str
        A deconvolution model (id or path) whose card names its PSF.
    crops, size, peaks, backgrounds, reps, seed : as in
        :class:`~livedenoise.training.evaluate_real.RealEvalConfig` (crops rotate over the grid).
    iterations : tuple of int
        Richardson-Lucy iteration counts tried on every frame.
    """

    model: str
    crops: list[str] | None = None
    size: int = 256
    peaks: tuple[float, ...] = DEFAULT_PEAKS
    backgrounds: tuple[float, ...] = DEFAULT_BACKGROUNDS
    reps: int = 1
    seed: int = 0
    iterations: tuple[int, ...] = RL_ITERATIONS
    engine: str = "cpu"
    engine_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reps < 1:
            raise ValueError(f"reps must be >= 1, got {self.reps}")
        if not self.peaks or min(self.peaks) <= 0:
            raise ValueError(f"peaks must be > 0 photoelectrons, got {self.peaks}")
        if not self.backgrounds or min(self.backgrounds) < 0:
            raise ValueError(f"backgrounds must be >= 0 photoelectrons, got {self.backgrounds}")
        if not self.iterations or min(self.iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


def model_psf(model: str) -> str:
    """The PSF name a deconvolution model's card records; a clear error for any other model."""
    card = read_card(resolve_model(model))
    if card.task != "deconvolve":
        raise ValueError(
            f"model {card.id!r} is a {card.task} model; the deconvolution evaluation needs a model of "
            "task 'deconvolve' (see `livedenoise models`)"
        )
    psf = card.training.get("psf") if isinstance(card.training, dict) else None
    name = psf.get("name") if isinstance(psf, dict) else None
    if not isinstance(name, str):
        raise ValueError(
            f"model {card.id!r} names no PSF in its card (training.psf): it was trained on PSFs drawn per "
            "frame, so no fixed PSF can be handed to Richardson-Lucy beside it; train one with "
            "`livedenoise train --task deconvolve --psf NAME`"
        )
    named_psf(name)  # an unknown name raises here, not half-way through
    return name


def _frames(cfg: RealDeconvConfig, psf_name: str) -> list[dict[str, Any]]:
    crops = load_real_crops(cfg.crops, cfg.size)
    names = list(crops)
    psf, info = named_psf(psf_name)
    target_psf = deconvolve_target_psf(float(info["sigma_px"]))
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    frames = []
    for i, peak, bg, ic, _ in grid_design(cfg.peaks, cfg.backgrounds, cfg.reps, len(names)):
        crop = names[ic]
        if crop not in seen:
            blurred = convolve_fft(crops[crop], psf)
            scale = max(float(np.percentile(blurred, 99.9)), 1e-12)
            seen[crop] = (blurred / scale, convolve_fft(crops[crop], target_psf) / scale)
        rel, rel_truth = seen[crop]
        x, read_var = noisy_frame(cfg.seed, i, (rel * peak + bg).astype(np.float32))
        frames.append(
            {
                "index": i,
                "x": x,
                "truth": (rel_truth * peak + bg).astype(np.float32),
                "peak_e": peak,
                "background_e": bg,
                "crop": crop,
                "read_var_e2": read_var,
            }
        )
    return frames


def evaluate_real_deconv(cfg: RealDeconvConfig, progress: bool | None = None) -> dict[str, Any]:
    """Run the evaluation; returns a JSON-able report.

    Returns
    -------
    dict
        ``config``, ``psf`` (the card's PSF), ``frames`` (the design), ``psnr`` (per method: one value
        per frame; RL as ``rl-<n>`` per iteration count), ``by_peak`` ``{method: {peak: mean}}`` for
        ``raw``, the model, ``rl-best`` (best count per peak) and ``rl-<n>`` (the best single count),
        ``rl_best_iterations`` ``{peak: n}``, ``rl_best_single``, ``summary`` (means), ``gain_db``
        (model − RL at its best per peak), ``ms_per_frame``, ``seconds``.
    """
    from tqdm import tqdm

    ok, why = available_baselines("deconvolve")["rl"]
    if not ok:
        raise RuntimeError(f"Richardson-Lucy cannot run here: {why}")
    t_start = time.perf_counter()
    psf_name = model_psf(cfg.model)
    psf, info = named_psf(psf_name)
    target_psf = deconvolve_target_psf(float(info["sigma_px"]))
    frames = _frames(cfg, psf_name)
    engine = make_engine(cfg.engine, model=cfg.model, **cfg.engine_options)
    model = str(engine.model_id or cfg.model)
    psnr: dict[str, list[float]] = {"raw": [], model: [], **{f"rl-{n}": [] for n in cfg.iterations}}
    times: dict[str, list[float]] = {model: [], "rl": []}
    out = np.empty((cfg.size, cfg.size), np.float32)
    try:
        engine.prepare((cfg.size, cfg.size))
        for fr in tqdm(frames, desc="evaluate --real deconvolve", unit="frame", disable=progress is False):
            x, truth = fr["x"], fr["truth"]
            psnr["raw"].append(metrics.psnr(x, truth))
            t0 = time.perf_counter()
            engine.restore(x, out)
            times[model].append(time.perf_counter() - t0)
            psnr[model].append(metrics.psnr(out, truth))
            for n in cfg.iterations:
                t0 = time.perf_counter()
                est = run_baseline("rl", x, psf=psf, target_psf=target_psf, iterations=n)
                times["rl"].append((time.perf_counter() - t0) / n)
                psnr[f"rl-{n}"].append(metrics.psnr(est, truth))
        describe = engine.describe()
    finally:
        engine.close()
    return _report(cfg, psf_name, info, frames, model, psnr, times, describe, time.perf_counter() - t_start)


def _report(
    cfg: RealDeconvConfig,
    psf_name: str,
    info: dict[str, Any],
    frames: list[dict[str, Any]],
    model: str,
    psnr: dict[str, list[float]],
    times: dict[str, list[float]],
    describe: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    peaks = [float(p) for p in cfg.peaks]

    def mean_over(values: list[float], key: str, level: float) -> float:
        return float(np.mean([v for v, fr in zip(values, frames) if fr[key] == level]))

    rl_names = [f"rl-{n}" for n in cfg.iterations]

    def best_at(peak: float) -> int:
        return max(cfg.iterations, key=lambda n: mean_over(psnr[f"rl-{n}"], "peak_e", peak))

    best_per_peak = {str(p): best_at(p) for p in peaks}
    best_single = max(cfg.iterations, key=lambda n: float(np.mean(psnr[f"rl-{n}"])))
    rl_best = [
        psnr[f"rl-{best_per_peak[str(fr['peak_e'])]}"][i] for i, fr in enumerate(frames)
    ]  # per frame, RL at its peak's best count
    psnr_all = {**psnr, "rl-best": rl_best}
    shown = ["raw", model, "rl-best", f"rl-{best_single}"]
    by_peak = {m: {str(p): mean_over(psnr_all[m], "peak_e", p) for p in peaks} for m in shown}
    by_bg = {
        m: {str(float(b)): mean_over(psnr_all[m], "background_e", float(b)) for b in cfg.backgrounds}
        for m in shown
    }
    summary = {m: float(np.mean(psnr_all[m])) for m in shown}
    return {
        "config": asdict(cfg),
        "machine": _machine(),
        "model": model,
        "engine": describe,
        "psf": {**info, "target_sigma_px": max(0.35, float(info["sigma_px"]) / 2)},
        "frames": [{k: fr[k] for k in ("index", "peak_e", "background_e", "crop")} for fr in frames],
        "psnr": {m: [float(v) for v in psnr_all[m]] for m in [*psnr_all]},
        "methods": shown,
        "rl_methods": rl_names,
        "by_peak": by_peak,
        "by_background": by_bg,
        "rl_best_iterations": best_per_peak,
        "rl_best_single": best_single,
        "summary": summary,
        "gain_db": summary[model] - summary["rl-best"],
        "ms_per_frame": {
            model: 1e3 * float(np.median(times[model])),
            "rl (per iteration)": 1e3 * float(np.median(times["rl"])),
        },
        "seconds": seconds,
    }


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def format_deconv_markdown(report: dict[str, Any]) -> str:
    """Markdown: PSNR per peak and per background, RL's best counts, the model's gain."""
    cfg, model = report["config"], report["model"]
    peaks = [str(float(p)) for p in cfg["peaks"]]
    bgs = [str(float(b)) for b in cfg["backgrounds"]]
    psf = report["psf"]
    crops = ", ".join(sorted({f["crop"] for f in report["frames"]}))
    best = report["rl_best_iterations"]
    labels = {
        "raw": "raw (blurred, noisy)",
        model: model,
        "rl-best": "Richardson-Lucy, best count per peak",
        f"rl-{report['rl_best_single']}": f"Richardson-Lucy, {_count(report['rl_best_single'])} (best single count)",
    }
    lines = [
        f"Deconvolution on real structures ({crops}), {len(report['frames'])} frames of {cfg['size']}×{cfg['size']}, "
        f"blurred by {psf['name']} (σ ≈ {psf['sigma_px']:.2f} px), truth = the structure seen through a "
        f"Gaussian of σ {psf['target_sigma_px']:.2f} px; sCMOS camera model, seed {cfg['seed']}.",
        "",
        "PSNR (dB) per peak (e⁻):",
        "",
        "| method | " + " | ".join(f"{float(p):g} e⁻" for p in cfg["peaks"]) + " | mean |",
        "|---" * (len(peaks) + 2) + "|",
    ]
    for m in report["methods"]:
        cells = [_f(report["by_peak"][m][p]) for p in peaks]
        lines.append(f"| {labels[m]} | " + " | ".join([*cells, _f(report["summary"][m])]) + " |")
    lines.append(
        "| RL's best count | " + " | ".join(str(best[p]) for p in peaks) + f" | {report['rl_best_single']} |"
    )
    lines += [
        "",
        "PSNR (dB) per background (e⁻ per pixel):",
        "",
        "| method | " + " | ".join(f"{float(b):g} e⁻" for b in cfg["backgrounds"]) + " |",
        "|---" * (len(bgs) + 1) + "|",
    ]
    for m in report["methods"]:
        lines.append(f"| {labels[m]} | " + " | ".join(_f(report["by_background"][m][b]) for b in bgs) + " |")
    ms = report["ms_per_frame"]
    lines += [
        "",
        f"{model}: {report['gain_db']:+.2f} dB over Richardson-Lucy at its best count per peak; "
        f"{ms[model]:.0f} ms a frame, RL {ms['rl (per iteration)']:.0f} ms an iteration.",
    ]
    return "\n".join(lines)


def parse_iterations(text: str | Sequence[str]) -> tuple[int, ...]:
    """``"1,2,5"`` -> ``(1, 2, 5)``, with a clear error."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        vals = tuple(int(p) for p in parts if str(p).strip())
    except ValueError:
        raise ValueError(
            f"iteration counts must be whole numbers separated by commas, got {text!r}"
        ) from None
    if not vals or min(vals) < 1:
        raise ValueError(f"iteration counts must be >= 1, got {text!r}")
    return vals


def _count(n: int) -> str:
    return f"{n} iteration" + ("" if n == 1 else "s")
