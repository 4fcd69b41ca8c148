"""``livedenoise evaluate``: shipped models against classical baselines, measured."""

from __future__ import annotations

import argparse
from pathlib import Path

from livedenoise.cli._args import CLIError
from livedenoise.inference.ensemble import ENSEMBLE_SIZES
from livedenoise.inference.modelio import list_models
from livedenoise.training.baselines import tune
from livedenoise.training.evaluate import EvalConfig, evaluate, format_markdown, tuning_set
from livedenoise.training.evaluate_deconv import (
    RealDeconvConfig,
    evaluate_real_deconv,
    format_deconv_markdown,
)
from livedenoise.training.evaluate_real import (
    DEFAULT_BACKGROUNDS,
    DEFAULT_PEAKS,
    PSFS,
    RealEvalConfig,
    evaluate_real,
    format_real_markdown,
)
from livedenoise.training.real_figure import write_real_figure
from livedenoise.util.atomic import atomic_path, check_writable_dir

HELP = "measure PSNR/SSIM/NRMSE of the models and classical baselines on held-out synthetic frames"
DESCRIPTION = """\
Restore a held-out synthetic set (its own seed, structure mix and photon levels, never
seen in training) with every installed model (through the same engine as the live
path) and with classical baselines run on the same photoelectron frames: non-local
means, generalized Anscombe transform + NLM, total variation (on photoelectrons and
after the GAT), BM3D after the GAT (if the `bm3d` package is installed) and
Richardson-Lucy (deconvolve task). Prints Markdown tables of PSNR, SSIM, NRMSE and
Kolmogorov distance per photon level (1-10, 5, 10, 20, 50, 100 e- peak) and the time
per frame; --json writes everything.

With --real: real fluorescence structures (nuclei, textured chromatin, puncta, dendrites,
tubules, shells: crops of sample images shipped in PyPI packages, see
livedenoise/training/data/real/README.md; evaluation only, never training) blurred by
Gaussian and widefield Born-Wolf PSFs, at peaks 2-500 e- and backgrounds 0-30 e-, through
the sCMOS camera model. Prints PSNR per peak and per background, the flux bias (restored
mean vs truth, whole frame and background regions), the time per frame, and writes a PNG
figure (raw | restored | truth, PSNR vs peak). With --real --task deconvolve: each
deconvolution model against Richardson-Lucy with the model's PSF (from its card) at its
best iteration count per peak, on the same structures blurred by that PSF.

examples:
  livedenoise evaluate                               # all models, all baselines (~2-3 min on 2 cores)
  livedenoise evaluate --real --figure real.png      # real structures (GAT+BM3D if `bm3d` is installed)
  livedenoise evaluate --real --bm3d-every 3 --size 128 --json real.json
  livedenoise evaluate --real --task deconvolve      # the deconvolution RLNs against Richardson-Lucy
  livedenoise evaluate --models rln-denoise-v1 --baselines gat-nlm,tv --n 2 --json eval.json
  livedenoise evaluate --tune-baselines              # re-tune baseline parameters (tuning seed only)
"""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models",
        type=_csv,
        help="comma-separated model ids or files (default: every installed model "
        "of the task); 'none' for baselines only",
    )
    p.add_argument(
        "--baselines",
        type=_csv,
        help="comma-separated: nlm, gat-nlm, tv, gat-tv, gat-bm3d, rl, gat-nlm-rl "
        "(default: every one usable for the task); 'none' for models only",
    )
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="frames per photon level (default 4); with --real: repetitions of the peak × background grid (default 1)",
    )
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    p.add_argument("--task", choices=("denoise", "deconvolve"), default="denoise")
    p.add_argument(
        "--seed", type=int, default=0, help="evaluation seed (default 0; 777 is reserved for tuning)"
    )
    p.add_argument("--engine", default="cpu", help="engine for the models (default cpu, as the live path)")
    p.add_argument("--precision", help="engine precision (e.g. fp32, bf16; default: the engine's)")
    p.add_argument(
        "--ensemble",
        type=int,
        choices=ENSEMBLE_SIZES,
        default=1,
        help="with --real (denoise): run every model as a self-ensemble of 2, 4 or 8 flips/transposes, "
        "as `denoise --ensemble` does (default 1: off)",
    )
    p.add_argument("--json", metavar="OUT.json", help="write the full results as JSON")
    p.add_argument(
        "--tune-baselines",
        action="store_true",
        help="grid-search the baselines' parameters on the tuning set (seed 777), print them",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    real = p.add_argument_group("real structures (--real)")
    real.add_argument("--real", action="store_true", help="evaluate on the real fluorescence structures")
    real.add_argument("--crops", type=_csv, help="comma-separated crop names (default: all)")
    real.add_argument(
        "--peaks", type=_floats, default=None, help="comma-separated peak levels, e- (default 2,5,20,100,500)"
    )
    real.add_argument(
        "--backgrounds",
        type=_floats,
        default=None,
        help="comma-separated backgrounds, e- (default 0,1,3,10,30)",
    )
    real.add_argument("--psfs", type=_csv, help=f"comma-separated PSFs (default all: {', '.join(PSFS)})")
    real.add_argument(
        "--bm3d-every", type=int, default=1, help="run GAT+BM3D on every K-th frame only (default 1: all)"
    )
    real.add_argument(
        "--figure",
        metavar="OUT.png",
        default="evaluate-real.png",
        help="figure to write with --real (default %(default)s; 'none' for no figure; "
        "--real --task deconvolve writes no figure)",
    )
    real.add_argument("--force", action="store_true", help="overwrite an existing --figure / --json")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.json:
        out = Path(args.json)
        check_writable_dir(out.parent if str(out.parent) else Path("."), "JSON results")
    if args.ensemble > 1 and (not args.real or args.task != "denoise" or args.tune_baselines):
        raise CLIError(
            "--ensemble applies to --real evaluations of the denoise task only: add --real "
            "(without --task deconvolve or --tune-baselines), or drop --ensemble"
        )
    if args.tune_baselines:
        return _tune(args)
    if args.real:
        return _real(args)

    models = None if args.models is None else ([] if args.models == ["none"] else args.models)
    baselines = None if args.baselines is None else ([] if args.baselines == ["none"] else args.baselines)
    opts = {"precision": args.precision} if args.precision else {}
    cfg = EvalConfig(
        models=models,
        baselines=baselines,
        n=4 if args.n is None else args.n,
        size=args.size,
        task=args.task,
        seed=args.seed,
        engine=args.engine,
        engine_options=opts,
    )
    report = evaluate(cfg, progress=False if args.no_progress else None)
    print(format_markdown(report))
    print(
        f"\n{report['seconds']:.0f} s on {report['machine']['processor']} ({report['machine']['cpus']} CPUs)"
    )
    if args.json:
        with atomic_path(args.json, "JSON results") as tmp:
            tmp.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    import json

    default = ["rl", "gat-nlm-rl"] if args.task == "deconvolve" else ["nlm", "gat-nlm", "tv", "gat-tv"]
    methods = args.baselines or default
    samples = tuning_set(n=max(4 if args.n is None else args.n, 8), size=args.size, task=args.task)
    res = tune(samples, methods)
    for m, r in res.items():
        scores = ", ".join(f"{v}: {s:.2f}" for v, s in r["scores"].items())
        print(f"{m}: best {r['param']} = {r['best']}   (mean PSNR dB: {scores})")
    if args.json:
        with atomic_path(args.json, "JSON results") as tmp:
            tmp.write_text(
                json.dumps(
                    {m: {**r, "scores": {str(k): v for k, v in r["scores"].items()}} for m, r in res.items()},
                    indent=1,
                )
            )
    return 0


def _check_outputs(args: argparse.Namespace, *paths: Path | None) -> None:
    """Refuse an existing output without --force, and an output folder that cannot be written, before any work."""
    for path in paths:
        if path is None:
            continue
        if path.exists() and not args.force:
            raise CLIError(f"{path} exists; choose another name or pass --force to overwrite it")
        check_writable_dir(path.parent if str(path.parent) else Path("."), str(path))


def _deconvolve_models(args: argparse.Namespace) -> list[str]:
    if args.models is not None:
        if args.models == ["none"]:
            raise CLIError(
                "--real --task deconvolve compares models with Richardson-Lucy: name at least one model"
            )
        return list(args.models)
    ids = [c.id for c in list_models() if c.task == "deconvolve" and isinstance(c.training.get("psf"), dict)]
    if not ids:
        raise CLIError(
            "no installed deconvolution model names its PSF; train one with "
            "`livedenoise train --task deconvolve --psf NAME` or pass --models"
        )
    return ids


def _real_deconv(args: argparse.Namespace) -> int:
    import json

    _check_outputs(args, Path(args.json) if args.json else None)
    opts = {"precision": args.precision} if args.precision else {}
    reports = []
    for model in _deconvolve_models(args):
        try:
            cfg = RealDeconvConfig(
                model=model,
                crops=args.crops,
                size=min(args.size, 256),
                reps=1 if args.n is None else args.n,
                seed=args.seed,
                engine=args.engine,
                engine_options=opts,
                peaks=args.peaks or DEFAULT_PEAKS,
                backgrounds=args.backgrounds or DEFAULT_BACKGROUNDS,
            )
            report = evaluate_real_deconv(cfg, progress=False if args.no_progress else None)
        except (ValueError, FileNotFoundError) as exc:
            raise CLIError(str(exc)) from None
        print(format_deconv_markdown(report))
        print(
            f"\n{report['seconds']:.0f} s on {report['machine']['processor']} "
            f"({report['machine']['cpus']} CPUs)\n"
        )
        reports.append(report)
    if args.json:
        with atomic_path(args.json, "JSON results") as tmp:
            tmp.write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=1))
        print(f"wrote {args.json}")
    return 0


def _real(args: argparse.Namespace) -> int:
    import json

    if args.task == "deconvolve":
        return _real_deconv(args)

    figure = None if args.figure in (None, "", "none") else Path(args.figure)
    _check_outputs(args, figure, Path(args.json) if args.json else None)
    models = None if args.models is None else ([] if args.models == ["none"] else args.models)
    baselines = None if args.baselines is None else ([] if args.baselines == ["none"] else args.baselines)
    opts = {"precision": args.precision} if args.precision else {}
    cfg = RealEvalConfig(
        models=models,
        baselines=baselines,
        crops=args.crops,
        size=min(args.size, 256),
        reps=1 if args.n is None else args.n,
        seed=args.seed,
        engine=args.engine,
        engine_options=opts,
        slow_every=args.bm3d_every,
        peaks=args.peaks or DEFAULT_PEAKS,
        backgrounds=args.backgrounds or DEFAULT_BACKGROUNDS,
        psfs=tuple(args.psfs) if args.psfs else tuple(PSFS),
        ensemble=args.ensemble,
    )
    report = evaluate_real(cfg, progress=False if args.no_progress else None)
    print(format_real_markdown(report))
    print(
        f"\n{report['seconds']:.0f} s on {report['machine']['processor']} ({report['machine']['cpus']} CPUs)"
    )
    if figure is not None:
        write_real_figure(report, figure)
        print(f"wrote {figure}")
    if args.json:
        report = {k: v for k, v in report.items() if k != "examples"}
        with atomic_path(args.json, "JSON results") as tmp:
            tmp.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0
