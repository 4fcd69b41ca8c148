"""``livedenoise train --self-supervised FRAMES --calibration CAL.tif``: the options and the run."""

from __future__ import annotations

import argparse
from typing import Any

from livedenoise.app.offline import match_calibration
from livedenoise.calibration.maps import read_calibration
from livedenoise.cli._args import CLIError
from livedenoise.training.finetune import FinetuneConfig
from livedenoise.training.selfsup import METHODS, SelfSupConfig, adapt, frames_to_e, read_frames

__all__ = ["add_selfsup_arguments", "corner", "run_selfsup"]


def corner(text: str) -> tuple[int, int]:
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected X,Y (the frames' corner on the sensor), got {text!r}"
        ) from None
    if x < 0 or y < 0:
        raise argparse.ArgumentTypeError(f"X,Y must be >= 0, got {text!r}")
    return x, y


def add_selfsup_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "self-supervised adaptation (no clean targets, no pairs)",
        "livedenoise train --self-supervised FRAMES.tif --calibration CAL.tif --init rln-denoise-v2 "
        "-o rln-mysample.pt: learns the sample from its noisy uint16 frames alone, with the calibrated "
        "noise model (Noise2Noise with the Poisson loss): consecutive frames of a still field "
        "(temporal) or two sub-sampled views of each frame (neighbor). The last frames are held out; "
        "training stops when they stop improving (defaults: 300 steps, batch 8, patch 64, lr 3e-4)",
    )
    g.add_argument(
        "--self-supervised",
        nargs="+",
        metavar="FRAMES",
        help="uint16 frames of the sample: a (T, Y, X) TIFF, 2D TIFFs, or a folder of TIFFs",
    )
    g.add_argument("--calibration", metavar="CAL.tif", help="the camera's calibration (needed)")
    g.add_argument(
        "--method", choices=METHODS, default="auto", help="temporal, neighbor or auto (default %(default)s)"
    )
    g.add_argument(
        "--frames-corner",
        type=corner,
        default=None,
        metavar="X,Y",
        help="where the frames' top-left pixel sits on the sensor, when they are smaller than the "
        "full-sensor calibration",
    )


def run_selfsup(args: argparse.Namespace) -> int:
    if not args.output:
        raise CLIError("--self-supervised needs -o NEW_MODEL (where to write the adapted model)")
    if not args.calibration:
        raise CLIError(
            "--self-supervised needs --calibration CAL.tif: the noise model is what it learns from "
            "(make one with `livedenoise calibrate`)"
        )
    frames = read_frames(args.self_supervised)
    cal = match_calibration(read_calibration(args.calibration), frames.shape[1:], roi=args.frames_corner)
    frames_e = frames_to_e(frames, cal)
    defaults = FinetuneConfig(steps=300)
    train_defaults = getattr(args, "_train_defaults", None) or {}

    def tuned(name: str) -> Any:  # the synthetic-training defaults are not adaptation ones
        v = getattr(args, name, None)
        return getattr(defaults, name) if v is None or v == train_defaults.get(name) else v

    ft = FinetuneConfig(
        steps=int(tuned("steps")),
        batch=int(tuned("batch")),
        patch=int(tuned("patch")),
        lr=float(tuned("lr")),
        val_fraction=float(getattr(args, "val_fraction", None) or defaults.val_fraction),
        patience=int(getattr(args, "patience", None) or defaults.patience),
        seed=int(getattr(args, "seed", None) or 0),
        threads=getattr(args, "threads", None),
    )
    _, card, history = adapt(
        frames_e,
        args.init,
        args.output,
        SelfSupConfig(method=args.method, finetune=ft),
        model_id=getattr(args, "id", None),
        source=", ".join(args.self_supervised),
        progress=not getattr(args, "no_progress", False),
    )
    h = card.quality["heldout_frames"]
    verdict = "better" if h["improved"] else "NOT better: keep using the model you started from"
    print(
        f"adapted {card.training['init_model']['id']} by {history['method']} self-supervision on "
        f"{card.training['frames']['count']} frames in {history['steps']} steps: held-out deviance "
        f"{h['before']['poisson_deviance']:.5f} -> {h['after']['poisson_deviance']:.5f} ({verdict}); "
        f"saved {card.path}"
    )
    return 0 if h["improved"] else 1
