"""`livedenoise train`: train a restoration network on synthetic phantoms."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from livedenoise.cli._args import add_force_argument, existing_outputs

HELP = "train a restoration network (RLN or RESUNET) on synthetic phantoms"
DESCRIPTION = """\
Train a network on synthetic photon-limited frames (phantoms of dots, rings, filaments,
blobs and cells, blurred by a random microscope PSF, Poisson + sCMOS noise), with the
Poisson likelihood loss in photoelectrons, and save it as a model (weights + card).
Validation PSNR is printed every epoch; checkpoints go to --checkpoint-dir and
--resume continues from the last one.

Example (a quick RLN, a few minutes on a laptop CPU):

  livedenoise train --arch rln --task denoise --steps 500 -o my-rln.pt
  livedenoise denoise IN.tif -o OUT.tif --calibration CAL.tif --model my-rln.pt

Fine-tune on pairs of your own sample (from `livedenoise collect-pairs`):

  livedenoise train --pairs pairs/ --init rln-denoise-v1 -o rln-mysample.pt
"""


def _kv(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (value as JSON), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--output", required=True, help="model file to write (.pt; the card goes beside as .json)"
    )
    p.add_argument(
        "--arch", choices=("rln", "resunet"), default="rln", help="network architecture (default rln)"
    )
    p.add_argument(
        "--arch-param",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="network constructor argument, e.g. channels=[32,64,128] (RESUNET) or "
        "activation=relu (RLN: the fast ReLU variant of rln-denoise-v2) (repeatable)",
    )
    p.add_argument("--task", choices=("denoise", "deconvolve"), default="denoise")
    p.add_argument(
        "--loss",
        choices=("poisson", "mse", "mse_ssim"),
        default="poisson",
        help="poisson: Poisson likelihood / KL in photoelectrons (default)",
    )
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps in total (default 2000)")
    p.add_argument("--epoch-steps", type=int, default=200, help="steps per epoch: validation + checkpoint")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64, help="training patch side in pixels")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-schedule", choices=("cosine", "exp", "constant"), default="cosine")
    p.add_argument(
        "--peak-range",
        type=float,
        nargs=2,
        default=(1.0, 500.0),
        metavar=("LOW", "HIGH"),
        help="peak photon levels of the synthetic frames, e- (log-uniform; default 1 500)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=24, help="validation frames (96x96)")
    p.add_argument("--checkpoint-dir", help="write last.pt here every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/last.pt")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--init", help="start from this model's weights (id or path)")
    p.add_argument("--id", help="model id in the card (default: the output file's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_force_argument(p)
    p.add_argument(
        "--accept-worse",
        action="store_true",
        help="replace an existing -o model even when the new one validates worse than its start or raw",
    )
    # fine-tuning on a paired dataset (--pairs DATASET; livedenoise.training.finetune, issue 5)
    from livedenoise.cli.collect_pairs import add_finetune_arguments

    add_finetune_arguments(p)


def canonical_command(args: argparse.Namespace) -> str:
    """The full command that reproduces this run (every option spelled out)."""
    parts = [
        "livedenoise",
        "train",
        "--arch",
        args.arch,
        "--task",
        args.task,
        "--loss",
        args.loss,
        "--steps",
        str(args.steps),
        "--epoch-steps",
        str(args.epoch_steps),
        "--batch",
        str(args.batch),
        "--patch",
        str(args.patch),
        "--lr",
        repr(args.lr),
        "--lr-schedule",
        args.lr_schedule,
        "--peak-range",
        f"{args.peak_range[0]:g}",
        f"{args.peak_range[1]:g}",
        "--seed",
        str(args.seed),
        "--val-size",
        str(args.val_size),
    ]
    for k, v in args.arch_param:
        parts += ["--arch-param", f"{k}={json.dumps(v, separators=(',', ':'))}"]
    if args.init:
        parts += ["--init", args.init]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    if args.id:
        parts += ["--id", args.id]
    parts += ["-o", args.output]
    return shlex.join(parts)


def _output(args: argparse.Namespace) -> Path:
    out = Path(args.output)
    return out if out.suffix == ".pt" else out.with_suffix(".pt")


def worse_than(quality: dict[str, Any]) -> list[str]:
    """What a new model validates worse than: its starting model, raw frames (from its card's quality)."""
    worse = []
    v = quality.get("validation") or {}
    psnr, raw, start = v.get("psnr_db"), v.get("raw_psnr_db"), (v.get("start") or {}).get("psnr_db")
    if psnr is not None and start is not None and psnr < start:
        worse.append(
            f"validation PSNR {psnr:.2f} dB is below its starting model {v['start']['model']} ({start:.2f} dB)"
        )
    if psnr is not None and raw is not None and psnr < raw:
        worse.append(f"validation PSNR {psnr:.2f} dB is below the raw frames' {raw:.2f} dB")
    held = quality.get("heldout_pairs") or {}
    before, after = held.get("before") or {}, held.get("after") or {}
    if (
        after.get("psnr_db") is not None
        and after.get("psnr_raw_db") is not None
        and after["psnr_db"] < after["psnr_raw_db"]
    ):
        worse.append(
            f"held-out PSNR {after['psnr_db']:.2f} dB is below the raw short frames' {after['psnr_raw_db']:.2f} dB"
        )
    dev_after, dev_before = after.get("poisson_deviance"), before.get("poisson_deviance")
    if dev_after is not None and dev_before is not None and dev_after > dev_before:
        worse.append(
            f"held-out Poisson deviance {after['poisson_deviance']:.4f} is above its starting model's "
            f"{before['poisson_deviance']:.4f}"
        )
    return worse


def save_checked(module: Any, card: Any, out: Path, *, accept_worse: bool) -> tuple[Any, int]:
    """Save the model to ``out`` unless it is worse and would replace a model there; ``(card, exit status)``.

    A worse model is always announced on stderr and recorded in its card
    (``quality.worse_than``). It replaces an existing ``out`` only with ``accept_worse``;
    otherwise it is saved beside it as ``<name>.worse.pt`` and the status is 1.
    """
    from livedenoise.inference.modelio import save_model

    worse = worse_than(card.quality)
    if not worse:
        return save_model(module, card, out), 0
    card.quality["worse_than"] = worse
    for w in worse:
        print(f"livedenoise train: warning: the new model is worse: {w}", file=sys.stderr)
    if existing_outputs(out, out.with_suffix(".json")) and not accept_worse:
        aside = out.with_name(f"{out.stem}.worse.pt")
        n = 2
        while existing_outputs(aside, aside.with_suffix(".json")):
            aside, n = out.with_name(f"{out.stem}.worse-{n}.pt"), n + 1
        card = save_model(module, card, aside)
        print(
            f"livedenoise train: {out} was NOT replaced by a worse model; the new one is saved as {aside}. "
            "Pass --accept-worse to replace it anyway.",
            file=sys.stderr,
        )
        return card, 1
    return save_model(module, card, out), 0


def run(args: argparse.Namespace) -> int:
    from livedenoise._atomic import check_writable_dir
    from livedenoise.cli import CLIError

    out = _output(args)
    exists = existing_outputs(out, out.with_suffix(".json"))
    if exists and not args.force:
        raise CLIError(
            f"{' and '.join(exists)} already exist(s); pass --force to overwrite or choose another -o"
        )
    check_writable_dir(out.parent if str(out.parent) else Path("."), "model")
    if args.pairs:  # fine-tuning on a paired dataset (livedenoise.training.finetune, issue 5)
        from livedenoise.training.finetune import run_pairs

        return run_pairs(
            args,
            save=lambda module, card, path: save_checked(
                module, card, Path(path), accept_worse=args.accept_worse
            ),
        )
    from livedenoise.training.train import TrainConfig, train

    config = TrainConfig(
        architecture=args.arch,
        arch_params=dict(args.arch_param),
        task=args.task,
        loss=args.loss,
        patch=args.patch,
        batch=args.batch,
        steps=args.steps,
        epoch_steps=args.epoch_steps,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        peak_e_range=tuple(args.peak_range),
        seed=args.seed,
        val_size=args.val_size,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        device=args.device,
        threads=args.threads,
        init=args.init,
        model_id=args.id or out.stem,
        command=canonical_command(args),
    )
    module, card, _history = train(config, progress=not args.no_progress)
    card, status = save_checked(module, card, out, accept_worse=args.accept_worse)
    v = card.quality.get("validation", {})
    start = v.get("start")
    print(
        f"saved {card.path} ({card.parameters} parameters, {card.training['time_s']:.0f} s): validation PSNR "
        f"{v.get('psnr_db')} dB, raw {v.get('raw_psnr_db')} dB"
        + (f", start ({start['model']}) {start['psnr_db']} dB" if start else "")
    )
    return status
