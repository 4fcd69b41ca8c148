"""`livedenoise train`: train a restoration network on synthetic phantoms."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from livedenoise.cli._args import CLIError, add_force_argument, existing_outputs
from livedenoise.cli._selfsup import add_selfsup_arguments, run_selfsup
from livedenoise.imaging.psf import NAMED_PSFS
from livedenoise.inference.modelio import save_model
from livedenoise.training.finetune import FinetuneConfig, finetune
from livedenoise.training.train import KEEP_CHOICES, TRAIN_PRECISIONS, TrainConfig, train
from livedenoise.util.atomic import check_writable_dir

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

Train on further from a shipped model, twice as fast on a CPU with AMX (Intel Xeon
Sapphire Rapids and later): bfloat16 passes, the next batches made on a second core:

  livedenoise train --arch resunet --init resunet-live-v8 --data sample --patch 256 --batch 2 \
      --steps 4000 --lr 3e-4 --precision bf16 --prefetch 2 --checkpoint-dir runs/live -o my-live.pt

Fine-tune on pairs of your own sample (from `livedenoise collect-pairs`):

  livedenoise train --pairs pairs/ --init rln-denoise-v1 -o rln-mysample.pt

Learn your sample from its noisy frames alone (no pairs, no clean images):

  livedenoise train --self-supervised frames.tif --calibration cal.tif --init rln-denoise-v2 -o rln-mysample.pt
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
        choices=("poisson", "mse", "psnr", "mse_ssim"),
        default="poisson",
        help="poisson: Poisson likelihood / KL in photoelectrons (default); psnr: minus each patch's PSNR "
        "against its target's range, averaged in dB (the evaluation's figure of merit: a last stage on a "
        "network trained with poisson); mse: range-scaled MSE; mse_ssim: RLN's MSE + SSIM",
    )
    p.add_argument(
        "--bg-bias-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="add W times each patch's squared mean error (e-^2) over its background region (target "
        "within 2%% of its range above its minimum; patches spanning under 20 e- count 0) to the loss: "
        "keeps the dark background next to bright structure at its counts (the v6 RESUNETs: 30); "
        "default 0: off",
    )
    p.add_argument(
        "--dark-bias-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="add W times the square of the batch's mean error (e-) over the background regions of its "
        "dark-background patches (region under 1 e-, patches spanning 20 e- or more) to the loss: the "
        "bias a dark background keeps next to bright structure, without each patch's noise "
        "(resunet-live-v7, -v8: 1000); default 0: off",
    )
    p.add_argument(
        "--keep",
        choices=KEEP_CHOICES,
        default="best",
        help="the weights the output holds: best, the epoch with the lowest validation loss (default), or "
        "last, the final step's (for losses that trade synthetic validation for real-structure "
        "figures, such as the bias terms)",
    )
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps in total (default 2000)")
    p.add_argument("--epoch-steps", type=int, default=200, help="steps per epoch: validation + checkpoint")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="STEP",
        help="stop at this step, keeping the learning-rate schedule of --steps (a run in stages: "
        "--resume the next one)",
    )
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
    p.add_argument(
        "--data",
        choices=("legacy", "sample"),
        default="legacy",
        help="synthetic data: legacy (the original phantoms, flat backgrounds) or sample (networks, "
        "textured nuclei, puncta, tubules, backgrounds 0-30 e- with drifts and haze, PSFs from "
        "sigma 0.8 px to wide widefield); default %(default)s",
    )
    p.add_argument(
        "--psf",
        choices=tuple(NAMED_PSFS),
        help="blur every synthetic frame by this one PSF, recorded in the card (a deconvolution model "
        "for one microscope: gauss-0.8, airy-na1.4 = 1.4 NA at 520 nm on 65 nm pixels, airy-na0.75 "
        "= 0.75 NA at 600 nm on 100 nm pixels); default: a PSF drawn per frame",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=24, help="validation frames (96x96)")
    p.add_argument("--checkpoint-dir", help="write last.pt here every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir/last.pt")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument(
        "--precision",
        choices=TRAIN_PRECISIONS,
        default="fp32",
        help="bf16: forward and backward passes under bfloat16 autocast, weights and loss in float32 "
        "(2-3x faster steps on CPUs with AMX, e.g. Intel Xeon Sapphire Rapids; slow elsewhere); "
        "default %(default)s",
    )
    p.add_argument(
        "--prefetch",
        type=int,
        default=0,
        metavar="N",
        help="make up to N synthetic batches ahead on a background thread while the network trains "
        "(the same data; uses a second core; default 0: none)",
    )
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

    add_finetune_arguments(p)
    add_selfsup_arguments(p)


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
        *(["--bg-bias-weight", f"{args.bg_bias_weight:.12g}"] if args.bg_bias_weight else []),
        *(["--dark-bias-weight", f"{args.dark_bias_weight:.12g}"] if args.dark_bias_weight else []),
        *(["--keep", args.keep] if args.keep != "best" else []),
        "--steps",
        str(args.steps),
        "--epoch-steps",
        str(args.epoch_steps),
        *(["--stop-after", str(args.stop_after)] if args.stop_after else []),
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
        *(["--data", args.data] if args.data != "legacy" else []),
        *(["--psf", args.psf] if args.psf else []),
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
    if args.precision != "fp32":
        parts += ["--precision", args.precision]
    if args.prefetch:
        parts += ["--prefetch", str(args.prefetch)]
    if args.id:
        parts += ["--id", args.id]
    parts += ["-o", args.output]
    return shlex.join(parts)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` that ``livedenoise train`` runs for these parsed arguments (synthetic data)."""
    return TrainConfig(
        architecture=args.arch,
        arch_params=dict(args.arch_param),
        task=args.task,
        loss=args.loss,
        bg_bias_weight=args.bg_bias_weight,
        dark_bias_weight=args.dark_bias_weight,
        keep=args.keep,
        patch=args.patch,
        batch=args.batch,
        steps=args.steps,
        stop_after=args.stop_after,
        epoch_steps=args.epoch_steps,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        peak_e_range=tuple(args.peak_range),
        data=args.data,
        psf=args.psf,
        seed=args.seed,
        val_size=args.val_size,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        device=args.device,
        threads=args.threads,
        init=args.init,
        model_id=args.id or _output(args).stem,
        precision=args.precision,
        prefetch=args.prefetch,
        command=canonical_command(args),
    )


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
    out = _output(args)
    exists = existing_outputs(out, out.with_suffix(".json"))
    if exists and not args.force:
        raise CLIError(
            f"{' and '.join(exists)} already exist(s); pass --force to overwrite or choose another -o"
        )
    check_writable_dir(out.parent if str(out.parent) else Path("."), "model")
    # training on the sample's own frames: the options of synthetic training do not apply
    mode = "--pairs" if args.pairs else "--self-supervised" if args.self_supervised else None
    if mode and (args.precision != "fp32" or args.prefetch):
        raise CLIError(
            f"--precision and --prefetch apply to training on synthetic data; {mode} trains in fp32 "
            "on its own frames: leave them out"
        )
    if mode and args.loss != "poisson":
        raise CLIError(
            f"--loss {args.loss} applies to training on synthetic data; {mode} trains with the Poisson "
            "loss on its own counts: leave --loss out"
        )
    for flag, weight in (
        ("--bg-bias-weight", args.bg_bias_weight),
        ("--dark-bias-weight", args.dark_bias_weight),
    ):
        if mode and weight:
            raise CLIError(
                f"{flag} needs noise-free targets (synthetic data); {mode} trains on noisy counts, "
                "whose darkest pixels are dark by their noise: leave it out"
            )
        if not (math.isfinite(weight) and weight >= 0):
            raise CLIError(f"{flag} must be a finite number >= 0 (0: off), got {weight}")
    if mode and args.keep != "best":
        raise CLIError(
            f"--keep applies to training on synthetic data; {mode} stops early and keeps the weights "
            "with the best held-out deviance: leave it out"
        )
    if args.pairs:  # fine-tuning on a paired dataset (livedenoise.training.finetune, issue 5)
        return _run_pairs(
            args,
            save=lambda module, card, path: save_checked(
                module, card, Path(path), accept_worse=args.accept_worse
            ),
        )
    if args.self_supervised:  # learn the sample from its noisy frames (livedenoise.training.selfsup)
        return run_selfsup(args)

    config = train_config(args)
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


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--pairs DATASET`` and the fine-tuning options to the ``train`` parser.

    Call it after the parser's own ``--steps/--batch/--patch/--lr``: their defaults are
    remembered, so that ``--pairs`` uses fine-tuning defaults unless the user changed them.
    """
    p.set_defaults(_train_defaults={n: p.get_default(n) for n in ("steps", "batch", "patch", "lr")})
    g = p.add_argument_group(
        "fine-tuning on a paired dataset",
        "livedenoise train --pairs DATASET --init rln-denoise-v1 -o rln-mysample: the short exposures are "
        "inputs, the long ones targets (Poisson loss with the exposure ratio); whole pairs are held out "
        "for validation, training stops early when they stop improving (fine-tuning defaults: "
        "400 steps, batch 8, patch 64, lr 3e-4, unless given)",
    )
    g.add_argument("--pairs", metavar="DATASET", help="paired dataset from `livedenoise collect-pairs`")
    g.add_argument(
        "--include-flagged",
        action="store_true",
        help="also train on pairs flagged by the quality checks (motion, saturation, bleaching)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=FinetuneConfig.val_fraction,
        help=f"fraction of pairs held out (default {FinetuneConfig.val_fraction})",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=FinetuneConfig.patience,
        help=f"held-out evaluations without improvement before stopping (default {FinetuneConfig.patience})",
    )


def _run_pairs(args: argparse.Namespace, save: Any = None) -> int:
    """Run ``livedenoise train --pairs DATASET --init MODEL -o NEW_MODEL`` (returns the exit status).

    Reads ``args.pairs``, ``args.init``, ``args.output`` and, when the parser has them,
    ``steps``, ``batch``, ``patch``, ``lr``, ``seed``, ``id``, ``threads``,
    ``include_flagged``, ``val_fraction``, ``patience``. ``save(module, card, output)``, if
    given, saves the model and returns ``(card, exit status)`` (a worse model does not replace
    an existing one); by default the model is saved as it is.
    """
    defaults = FinetuneConfig()
    output = getattr(args, "output", None)
    if not output:
        raise CLIError("--pairs needs -o NEW_MODEL (where to write the fine-tuned model)")

    def pick(name: str, default: Any) -> Any:
        v = getattr(args, name, None)
        return default if v is None else v

    # the synthetic-training defaults of `train` (thousands of steps, lr 2e-3) are not
    # fine-tuning ones: use ours unless the user changed them on the command line
    train_defaults = getattr(args, "_train_defaults", None) or {}

    def tuned(name: str) -> Any:
        v = getattr(args, name, None)
        return getattr(defaults, name) if v is None or v == train_defaults.get(name) else v

    cfg = FinetuneConfig(
        steps=int(tuned("steps")),
        batch=int(tuned("batch")),
        patch=int(tuned("patch")),
        lr=float(tuned("lr")),
        val_fraction=float(pick("val_fraction", defaults.val_fraction)),
        patience=int(pick("patience", defaults.patience)),
        include_flagged=bool(getattr(args, "include_flagged", False)),
        seed=int(pick("seed", defaults.seed)),
        threads=getattr(args, "threads", None),
    )
    progress = not getattr(args, "no_progress", False)
    module, card, history = finetune(
        args.pairs,
        getattr(args, "init", None),
        None if save is not None else output,
        cfg,
        model_id=getattr(args, "id", None) or Path(output).stem,
        progress=progress,
    )
    status = 0
    if save is not None:
        card, status = save(module, card, output)
    h = card.quality["heldout_pairs"]
    print(
        f"fine-tuned {card.training['init_model']['id']} on {len(card.training['dataset']['train_pairs'])} pairs "
        f"({h['before']['pairs']} held out) in {history['steps']} steps: held-out Poisson deviance "
        f"{h['before']['poisson_deviance']:.4f} -> {h['after']['poisson_deviance']:.4f}, PSNR vs long/r "
        f"{h['before']['psnr_db']:.2f} -> {h['after']['psnr_db']:.2f} dB; saved {card.path}"
    )
    return status
