"""``livedenoise evaluate``: shipped models against classical baselines, measured."""

from __future__ import annotations

import argparse

from livedenoise.training.baselines import tune
from livedenoise.training.evaluate import EvalConfig, evaluate, format_markdown, tuning_set
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

examples:
  livedenoise evaluate                               # all models, all baselines (~2-3 min on 2 cores)
  livedenoise evaluate --models rln-denoise-v1 --baselines gat-nlm,tv --n 2 --json eval.json
  livedenoise evaluate --tune-baselines              # re-tune baseline parameters (tuning seed only)
"""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


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
    p.add_argument("--n", type=int, default=4, help="frames per photon level (default 4)")
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    p.add_argument("--task", choices=("denoise", "deconvolve"), default="denoise")
    p.add_argument(
        "--seed", type=int, default=0, help="evaluation seed (default 0; 777 is reserved for tuning)"
    )
    p.add_argument("--engine", default="cpu", help="engine for the models (default cpu, as the live path)")
    p.add_argument("--precision", help="engine precision (e.g. fp32, bf16; default: the engine's)")
    p.add_argument("--json", metavar="OUT.json", help="write the full results as JSON")
    p.add_argument(
        "--tune-baselines",
        action="store_true",
        help="grid-search the baselines' parameters on the tuning set (seed 777), print them",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    if args.json:
        out = Path(args.json)
        check_writable_dir(out.parent if str(out.parent) else Path("."), "JSON results")
    if args.tune_baselines:
        return _tune(args)

    models = None if args.models is None else ([] if args.models == ["none"] else args.models)
    baselines = None if args.baselines is None else ([] if args.baselines == ["none"] else args.baselines)
    opts = {"precision": args.precision} if args.precision else {}
    cfg = EvalConfig(
        models=models,
        baselines=baselines,
        n=args.n,
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
    samples = tuning_set(n=max(args.n, 8), size=args.size, task=args.task)
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
