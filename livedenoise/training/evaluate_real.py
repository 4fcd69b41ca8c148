"""Measured quality on real fluorescence structures: models and classical baselines, per photon level.

The structures are the crops in ``livedenoise/training/data/real/`` (real fluorescence images
that ship inside packages on PyPI, see the README there; evaluation only, never training).
Each evaluation frame is one crop blurred by one PSF (a σ = 0.8 px Gaussian, and in-focus
widefield Born-Wolf PSFs at NA 1.4 and NA 0.75), scaled so that its 99.9th percentile sits at a
peak photon level, plus a flat background, then passed through the camera model of the
synthetic data (:func:`livedenoise.imaging.synthetic.add_noise`: Poisson shot noise, per-pixel
offset, gain and read-noise maps, ADU quantisation, back to photoelectrons). The noise-free
expected photoelectrons are the truth.

The design is a full grid of peaks × backgrounds (× ``reps``); crops and PSFs rotate over the
grid so that every peak and every background sees several structures and PSFs. Every method
restores the same frames. Per method and per peak / background: PSNR against the truth, the
**flux bias** (mean of restored − truth, relative to the truth's mean, and in e⁻ per pixel) over
the whole frame and in the background regions alone (where the blurred structure is below 2 %
of the peak), the fraction of frames whose counts are kept (|bias| ≤ 0.5 % of the truth's mean
or ≤ 0.05 e⁻ per pixel, frame and background both) and the time per frame.

Slow baselines (GAT+BM3D: seconds a frame) may run on every ``slow_every``-th frame only; the
summary then also gives every method's mean PSNR on those frames, for a like-for-like comparison.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.imaging import metrics
from livedenoise.imaging.psf import NAMED_PSFS, convolve_fft, named_psf
from livedenoise.imaging.synthetic import EVAL_SEED_OFFSET, add_noise
from livedenoise.inference.engines import make_engine
from livedenoise.inference.ensemble import SelfEnsemble, views
from livedenoise.inference.modelio import list_models
from livedenoise.training.baselines import available_baselines, run_baseline
from livedenoise.training.evaluate import _machine

__all__ = [
    "DEFAULT_BACKGROUNDS",
    "DEFAULT_PEAKS",
    "PSFS",
    "REAL_DIR",
    "RealEvalConfig",
    "evaluate_real",
    "format_real_markdown",
    "grid_design",
    "load_real_crops",
    "make_real_frames",
    "noisy_frame",
]

log = logging.getLogger("livedenoise")

REAL_DIR = Path(__file__).resolve().parent / "data" / "real"
DEFAULT_PEAKS: tuple[float, ...] = (2.0, 5.0, 20.0, 100.0, 500.0)
DEFAULT_BACKGROUNDS: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0)
PSFS = NAMED_PSFS  # the PSFs of the evaluation, by name
SLOW_BASELINES = ("gat-bm3d",)
BG_MASK_LEVEL = 0.02  # background region: blurred structure below this fraction of the peak
KEEP_REL = 0.005  # photon counts kept: |bias| <= 0.5 % of the truth's mean ...
KEEP_ABS_E = 0.05  # ... or <= 0.05 e- per pixel where the image is that dark
MIN_BG_PIXELS = 64


def load_real_crops(names: Sequence[str] | None = None, size: int | None = None) -> dict[str, np.ndarray]:
    """The real-structure crops (relative intensity, float32), in ``SOURCES.json`` order.

    ``size`` < 256 takes the centre ``size`` × ``size`` of each crop.
    """
    import tifffile

    index = json.loads((REAL_DIR / "SOURCES.json").read_text(encoding="utf-8"))
    known = [e["name"] for e in index["images"]]
    wanted = known if names is None else list(names)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown real crop(s) {unknown}; choose from {', '.join(known)}")
    out = {}
    for entry in index["images"]:
        if entry["name"] not in wanted:
            continue
        img = tifffile.imread(REAL_DIR / entry["file"]).astype(np.float32)
        if size is not None:
            if not 16 <= size <= min(img.shape):
                raise ValueError(f"--size must be 16 to {min(img.shape)} for the real crops, got {size}")
            y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
            img = np.ascontiguousarray(img[y : y + size, x : x + size])
        out[entry["name"]] = img
    return out


def grid_design(
    peaks: Sequence[float], backgrounds: Sequence[float], reps: int, n_crops: int, n_psfs: int = 1
) -> list[tuple[int, float, float, int, int]]:
    """The frames of the peak × background grid: ``(index, peak, background, crop, psf)`` numbers.

    Crops and PSFs rotate over the grid so that every peak and background sees several of each.
    """
    out: list[tuple[int, float, float, int, int]] = []
    for r in range(reps):
        for ib, bg in enumerate(backgrounds):
            for ip, peak in enumerate(peaks):
                crop = (ip + ib * len(peaks) + r) % n_crops
                psf = (ip + ib + r) % n_psfs
                out.append((len(out), float(peak), float(bg), crop, psf))
    return out


def noisy_frame(seed: int, index: int, expected: np.ndarray) -> tuple[np.ndarray, float | np.ndarray]:
    """Frame ``index`` of an evaluation seed through the camera model: noisy e- and the read variance."""
    rng = np.random.default_rng(seed + EVAL_SEED_OFFSET + 7919 * index)
    x, cam = add_noise(rng, expected)
    return np.ascontiguousarray(x, np.float32), cam["read_var_e2"]


@dataclass
class RealEvalConfig:
    """What to evaluate on the real structures (see the module docstring).

    Attributes
    ----------
    models, baselines : list of str or None
        As in :class:`livedenoise.training.evaluate.EvalConfig` (None: every one usable).
    crops : list of str or None
        Names of real crops (None: all).
    size : int
        Side of the centre crop used, pixels (<= 256).
    peaks, backgrounds : tuple of float
        Peak photon levels (e-) and flat backgrounds (e- per pixel): a full grid.
    psfs : tuple of str
        Names in :data:`PSFS`, rotated over the grid.
    reps : int
        Repetitions of the grid (new crop/PSF rotation and noise each time).
    seed : int
        Noise seed (drawn from ``seed + EVAL_SEED_OFFSET``, never a training seed).
    slow_every : int
        Run the slow baselines (GAT+BM3D) on every ``slow_every``-th frame only.
    examples : int
        Frames kept for the figure (raw | restored | truth).
    ensemble : int
        Self-ensemble size for the models (1: off; 2, 4, 8: see
        :mod:`livedenoise.inference.ensemble`); the models are then named ``<id> (ensemble N)``.
    """

    models: list[str] | None = None
    baselines: list[str] | None = None
    crops: list[str] | None = None
    size: int = 256
    peaks: tuple[float, ...] = DEFAULT_PEAKS
    backgrounds: tuple[float, ...] = DEFAULT_BACKGROUNDS
    psfs: tuple[str, ...] = tuple(PSFS)
    reps: int = 1
    seed: int = 0
    engine: str = "cpu"
    engine_options: dict[str, Any] = field(default_factory=dict)
    slow_every: int = 1
    examples: int = 3
    ensemble: int = 1

    def __post_init__(self) -> None:
        views(self.ensemble, (self.size, self.size))  # raises on a size it does not know
        if self.reps < 1:
            raise ValueError(f"reps must be >= 1, got {self.reps}")
        if self.slow_every < 1:
            raise ValueError(f"slow_every must be >= 1, got {self.slow_every}")
        if not self.peaks or min(self.peaks) <= 0:
            raise ValueError(f"peaks must be > 0 photoelectrons, got {self.peaks}")
        if not self.backgrounds or min(self.backgrounds) < 0:
            raise ValueError(f"backgrounds must be >= 0 photoelectrons, got {self.backgrounds}")
        for name in self.psfs:
            named_psf(name)  # raises on an unknown name


def make_real_frames(cfg: RealEvalConfig) -> list[dict[str, Any]]:
    """The evaluation frames: dicts with ``x`` (noisy e-), ``truth``, ``bg_mask`` and the design."""
    crops = load_real_crops(cfg.crops, cfg.size)
    names = list(crops)
    psfs = {p: named_psf(p)[0] for p in cfg.psfs}
    blurred = {}
    frames = []
    for i, peak, bg, ic, ipsf in grid_design(cfg.peaks, cfg.backgrounds, cfg.reps, len(names), len(cfg.psfs)):
        crop, psf = names[ic], cfg.psfs[ipsf]
        if (crop, psf) not in blurred:
            b = convolve_fft(crops[crop], psfs[psf])
            blurred[crop, psf] = b / max(float(np.percentile(b, 99.9)), 1e-12)
        rel = blurred[crop, psf]
        truth = (rel * peak + bg).astype(np.float32)
        x, read_var = noisy_frame(cfg.seed, i, truth)
        frames.append(
            {
                "index": i,
                "x": x,
                "truth": truth,
                "bg_mask": rel < BG_MASK_LEVEL,
                "peak_e": peak,
                "background_e": bg,
                "crop": crop,
                "psf": psf,
                "read_var_e2": read_var,
            }
        )
    return frames


def _frame_stats(est: np.ndarray, fr: dict[str, Any]) -> dict[str, Any]:
    t = fr["truth"]
    d = est.astype(np.float64) - t
    mean_t = float(t.mean())
    bias_e = float(d.mean())
    mask = fr["bg_mask"]
    bg_e = float(d[mask].mean()) if int(mask.sum()) >= MIN_BG_PIXELS else None
    bg_t = float(t[mask].mean()) if bg_e is not None else None

    def kept(b: float | None, ref: float | None) -> bool:
        return b is None or abs(b) <= max(KEEP_REL * (ref or 0.0), KEEP_ABS_E)

    return {
        "psnr": metrics.psnr(est, t),
        "bias_e": bias_e,
        "bias_rel": bias_e / mean_t if mean_t > 0 else 0.0,
        "bg_bias_e": bg_e,
        "bg_bias_rel": (bg_e / bg_t) if (bg_e is not None and bg_t and bg_t > 0) else None,
        "kept": kept(bias_e, mean_t) and kept(bg_e, bg_t),
        "truth_mean_e": mean_t,
        "bg_truth_e": bg_t,
    }


def _level_check(rows: list[dict[str, Any]]) -> tuple[bool | None, list[str]]:
    """Counts kept at one level: the mean bias over its frames within 0.5 % of the truth's mean or
    0.05 e- per pixel, over whole frames and over the background regions alike.

    Returns ``(kept, misses)``: ``kept`` is None for a level without frames; ``misses`` says, for
    each part that missed, its mean bias and the tolerance, e.g. ``background regions +0.071 e-/px
    (allowed ±0.050)``.
    """
    if not rows:
        return None, []
    parts = [("whole frames", rows, "bias_e", "truth_mean_e")]
    bg = [r for r in rows if r["bg_bias_e"] is not None]
    if bg:
        parts.append(("background regions", bg, "bg_bias_e", "bg_truth_e"))
    misses = []
    for name, part, bias_key, truth_key in parts:
        bias = float(np.mean([r[bias_key] for r in part]))
        allowed = max(KEEP_REL * float(np.mean([r[truth_key] for r in part])), KEEP_ABS_E)
        if not abs(bias) <= allowed:  # a NaN bias misses too
            misses.append(f"{name} {bias:+.3f} e-/px (allowed ±{allowed:.3f})")
    return not misses, misses


def _methods(cfg: RealEvalConfig) -> tuple[list[tuple[str, Any]], list[str]]:
    avail = available_baselines("denoise")
    if cfg.baselines is None:
        baselines = [b for b, (ok, _) in avail.items() if ok]
        for b, (ok, why) in avail.items():
            if not ok and "not a" not in why:
                log.warning("baseline %s skipped: %s", b, why)
    else:
        for b in cfg.baselines:
            if b not in avail or not avail[b][0]:
                raise ValueError(f"baseline {b!r} cannot run here: {avail.get(b, (False, 'unknown'))[1]}")
        baselines = list(cfg.baselines)
    ids = cfg.models
    if ids is None:
        ids = [c.id for c in list_models() if getattr(c, "task", "denoise") == "denoise"]
    if len(set(ids)) < len(ids):
        raise ValueError(f"a model is listed twice: {list(ids)}")
    made = []
    for mid in ids:
        eng = make_engine(cfg.engine, model=mid, **cfg.engine_options)
        eng.prepare((cfg.size, cfg.size))
        made.append((str(eng.model_id or mid), str(mid), eng))
    # models whose cards share an id (a fine-tuned copy beside its original) go by what was asked
    shared = {n for n, _, _ in made if sum(m == n for m, _, _ in made) > 1}
    engines = [(asked if name in shared else name, eng) for name, asked, eng in made]
    if cfg.ensemble > 1:
        engines = [
            (f"{name} (ensemble {cfg.ensemble})", SelfEnsemble(eng, cfg.ensemble)) for name, eng in engines
        ]
    return engines, baselines


def _example_indices(frames: list[dict[str, Any]], k: int) -> list[int]:
    """``k`` frames spread from the darkest (low peak, high background) to the brightest."""
    order = sorted(range(len(frames)), key=lambda i: (frames[i]["peak_e"], -frames[i]["background_e"]))
    if k <= 0 or not order:
        return []
    picks = np.linspace(0, len(order) - 1, min(k, len(order))).round().astype(int)
    return sorted({order[int(j)] for j in picks})


def _mean(vals: list[float | None]) -> float | None:
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def evaluate_real(cfg: RealEvalConfig, progress: bool | None = None) -> dict[str, Any]:
    """Run the real-structure evaluation; returns a JSON-able report (and ``examples`` arrays).

    Returns
    -------
    dict
        ``config``, ``methods``, ``frames`` (design of each frame), ``per_frame[method]`` (list of
        stats or None where a slow baseline skipped the frame), ``by_peak`` / ``by_background``
        ``[method][level]`` means, ``summary[method]``, ``ms_per_frame``, ``examples`` (for the
        figure; numpy arrays, drop before JSON), ``seconds``.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    frames = make_real_frames(cfg)
    engines, baselines = _methods(cfg)
    methods = ["raw"] + [m for m, _ in engines] + baselines
    per: dict[str, list[dict[str, Any] | None]] = {m: [] for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    ex_idx = _example_indices(frames, cfg.examples)
    examples: list[dict[str, Any]] = []
    out = np.empty((cfg.size, cfg.size), np.float32)
    try:
        for fr in tqdm(
            frames, desc="evaluate --real", unit="frame", disable=None if progress is None else not progress
        ):
            x = fr["x"]
            keep = fr["index"] in ex_idx
            ex = {
                "design": {k: fr[k] for k in ("peak_e", "background_e", "crop", "psf")},
                "raw": x,
                "truth": fr["truth"],
                "restored": {},
            }
            per["raw"].append(_frame_stats(x, fr))
            for name, eng in engines:
                t0 = time.perf_counter()
                eng.restore(x, out)
                times[name].append(time.perf_counter() - t0)
                per[name].append(_frame_stats(out, fr))
                if keep:
                    ex["restored"][name] = out.copy()
            for b in baselines:
                if b in SLOW_BASELINES and fr["index"] % cfg.slow_every:
                    per[b].append(None)
                    continue
                t0 = time.perf_counter()
                est = run_baseline(b, x, read_var_e2=fr["read_var_e2"])
                times[b].append(time.perf_counter() - t0)
                per[b].append(_frame_stats(est, fr))
                if keep:
                    ex["restored"][b] = est
            if keep:
                examples.append(ex)
    finally:
        model_info = {name: eng.describe() for name, eng in engines}
        for _, eng in engines:
            eng.close()

    def agg(method: str, key: str, level: float) -> dict[str, Any]:
        rows = [s for s, fr in zip(per[method], frames) if s is not None and fr[key] == level]
        kept, misses = _level_check(rows)
        return {
            "n": len(rows),
            "psnr": _mean([r["psnr"] for r in rows]),
            "bias_rel": _mean([r["bias_rel"] for r in rows]),
            "bias_e": _mean([r["bias_e"] for r in rows]),
            "bg_bias_e": _mean([r["bg_bias_e"] for r in rows]),
            "kept": _mean([float(r["kept"]) for r in rows]),
            "level_kept": kept,
            "level_misses": misses,
        }

    by_level = {
        name: {m: {str(v): agg(m, key, float(v)) for v in levels} for m in methods}
        for name, key, levels in (
            ("by_peak", "peak_e", cfg.peaks),
            ("by_background", "background_e", cfg.backgrounds),
        )
    }

    slow_frames = [fr["index"] for fr in frames if fr["index"] % cfg.slow_every == 0]
    summary = {}
    for m in methods:
        rows = [s for s in per[m] if s is not None]
        summary[m] = {
            "n": len(rows),
            "psnr": _mean([r["psnr"] for r in rows]),
            "psnr_slow_frames": _mean([per[m][i]["psnr"] for i in slow_frames if per[m][i] is not None]),
            "bias_rel": _mean([r["bias_rel"] for r in rows]),
            "max_abs_bias_rel": max((abs(r["bias_rel"]) for r in rows), default=None),
            "bg_bias_e": _mean([r["bg_bias_e"] for r in rows]),
            "kept": _mean([float(r["kept"]) for r in rows]),
        }
        misses = {
            f"{'peak' if name == 'by_peak' else 'background'} {float(v):g} e-": level["level_misses"]
            for name in ("by_peak", "by_background")
            for v, level in by_level[name][m].items()
        }
        summary[m]["levels_not_kept"] = [lvl for lvl, why in misses.items() if why]
        summary[m]["levels_not_kept_why"] = {lvl: why for lvl, why in misses.items() if why}
    return {
        "config": asdict(cfg),
        "machine": _machine(),
        "methods": methods,
        "models": model_info,
        "frames": [{k: fr[k] for k in ("index", "peak_e", "background_e", "crop", "psf")} for fr in frames],
        "per_frame": per,
        **by_level,
        "summary": summary,
        "slow_frames": len(slow_frames),
        "ms_per_frame": {m: (1e3 * float(np.median(v)) if v else None) for m, v in times.items()},
        "examples": examples,
        "seconds": time.perf_counter() - t_start,
    }


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_real_markdown(report: dict[str, Any]) -> str:
    """Markdown: PSNR per peak and per background, flux bias per peak and per background, summary."""
    cfg = report["config"]
    methods, s, ms = report["methods"], report["summary"], report["ms_per_frame"]
    peaks = [str(float(p)) for p in cfg["peaks"]]
    bgs = [str(float(b)) for b in cfg["backgrounds"]]
    size = cfg["size"]
    n = len(report["frames"])
    slow = ", ".join(b for b in methods if b in SLOW_BASELINES)
    lines = [
        f"Real structures ({', '.join(sorted({f['crop'] for f in report['frames']}))}), {n} frames of "
        f"{size}×{size}: peaks {', '.join(f'{float(p):g}' for p in cfg['peaks'])} e⁻ × backgrounds "
        f"{', '.join(f'{float(b):g}' for b in cfg['backgrounds'])} e⁻, PSFs {', '.join(cfg['psfs'])}, "
        f"sCMOS camera model, seed {cfg['seed']}."
        + (
            f" {slow} ran on every {cfg['slow_every']}-th frame ({report['slow_frames']} frames)."
            if slow and cfg["slow_every"] > 1
            else ""
        ),
        "",
        "PSNR (dB) per peak (e⁻), mean over all frames, mean on the slow baselines' frames, time per frame:",
        "",
        "| method | "
        + " | ".join(f"{float(p):g} e⁻" for p in cfg["peaks"])
        + f" | mean | mean (slow frames) | ms/frame ({size}²) |",
        "|---" * (len(peaks) + 4) + "|",
    ]
    for m in methods:
        cells = [_f(report["by_peak"][m][p]["psnr"], ".2f") for p in peaks]
        t = "-" if m == "raw" else _f(ms[m], ".0f")
        lines.append(
            f"| {m} | "
            + " | ".join([*cells, _f(s[m]["psnr"], ".2f"), _f(s[m]["psnr_slow_frames"], ".2f"), t])
            + " |"
        )
    lines += [
        "",
        "PSNR (dB) per background (e⁻ per pixel):",
        "",
        "| method | " + " | ".join(f"{float(b):g} e⁻" for b in cfg["backgrounds"]) + " |",
        "|---" * (len(bgs) + 1) + "|",
    ]
    for m in methods:
        lines.append(
            f"| {m} | " + " | ".join(_f(report["by_background"][m][b]["psnr"], ".2f") for b in bgs) + " |"
        )
    lines += [
        "",
        "Flux bias: mean(restored − truth) / mean(truth), %, per peak; then the mean bias in e⁻ per pixel in "
        f"the background regions (structure < {BG_MASK_LEVEL:.0%} of the peak) per background; "
        f"'kept': frames within {KEEP_REL:.1%} or {KEEP_ABS_E} e⁻/px, frame and background both:",
        "",
        "| method | "
        + " | ".join(f"{float(p):g} e⁻" for p in cfg["peaks"])
        + " | "
        + " | ".join(f"bg {float(b):g}" for b in cfg["backgrounds"])
        + " | kept |",
        "|---" * (len(peaks) + len(bgs) + 2) + "|",
    ]
    for m in methods:
        cells = [
            _f(
                None
                if report["by_peak"][m][p]["bias_rel"] is None
                else 100 * report["by_peak"][m][p]["bias_rel"],
                "+.2f",
            )
            for p in peaks
        ]
        cells += [_f(report["by_background"][m][b]["bg_bias_e"], "+.3f") for b in bgs]
        lines.append(
            f"| {m} | "
            + " | ".join([*cells, _f(None if s[m]["kept"] is None else 100 * s[m]["kept"], ".0f") + " %"])
            + " |"
        )
    lines += [
        "",
        f"Photon counts kept at every peak and every background (the level's mean bias within {KEEP_REL:.1%} "
        f"or {KEEP_ABS_E} e⁻/px, whole frames and background regions):",
        "",
    ]
    for m in methods:
        bad = s[m].get("levels_not_kept", [])
        why = s[m].get("levels_not_kept_why", {})  # absent from reports written before it was added
        missed = [lvl + (f": {', '.join(why[lvl])}" if why.get(lvl) else "") for lvl in bad]
        lines.append(f"- {m}: " + ("yes" if not bad else "no: " + "; ".join(missed)))
    gat = s.get("gat-bm3d")
    models = [m for m in report.get("models", {})]
    if gat and gat["psnr_slow_frames"] is not None and models:
        lines.append("")
        for m in models:
            gain = s[m]["psnr_slow_frames"] - gat["psnr_slow_frames"]
            lines.append(
                f"{m}: {gain:+.2f} dB vs gat-bm3d on the same frames (live target >= 0 dB within 40 ms at 512²; quality target >= +2 dB)."
            )
    return "\n".join(lines)
