"""``livedenoise adapt``: learn the live sample from its noisy frames and switch the daemon to it."""

from __future__ import annotations

import argparse

from livedenoise.app.adapt import adapt_from_stream
from livedenoise.calibration.maps import read_calibration
from livedenoise.cli._args import CLIError
from livedenoise.cli._selfsup import corner
from livedenoise.training.finetune import FinetuneConfig
from livedenoise.training.selfsup import METHODS, SelfSupConfig

HELP = "learn the live sample from its noisy frames (self-supervised) and switch the daemon to it"
DESCRIPTION = """\
Subscribes to the raw stream of a running daemon, records the next --frames frames, adapts the
model by self-supervision with the camera's calibration (consecutive frames of a still field,
or sub-sampled views of each frame), writes the new model, and, if its held-out measure is
better and --control is given, sends set_model so the daemon switches to it. Training runs in
this process, never in the daemon. The model must be written where the daemon may load models
from (a --model-dir folder of `livedenoise serve`).

Example:
  livedenoise adapt --from tcp://127.0.0.1:5555 --calibration cal.tif --frames 40 \\
      -o models-lab/rln-mysample.pt --control tcp://127.0.0.1:5556
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="endpoint", default="tcp://127.0.0.1:5555", help="the daemon's stream")
    p.add_argument("--calibration", required=True, metavar="CAL.tif", help="the camera's calibration")
    p.add_argument("-o", "--output", required=True, help="where to write the adapted model (.pt)")
    p.add_argument("--frames", type=int, default=40, help="raw frames to record (default %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="training steps at most (default %(default)s)")
    p.add_argument("--method", choices=METHODS, default="auto", help="default %(default)s")
    p.add_argument("--init", default=None, help="model to start from (default: the stream's model)")
    p.add_argument(
        "--control", default=None, help="the daemon's control endpoint: switch to the model if better"
    )
    p.add_argument("--frames-corner", type=corner, default=None, metavar="X,Y", help="as for train")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.frames < 4 and args.method == "temporal":
        raise CLIError(f"--frames {args.frames}: temporal adaptation needs at least 4 frames")
    if args.frames < 2:
        raise CLIError(f"--frames must be >= 2, got {args.frames}")
    cfg = SelfSupConfig(
        method=args.method, finetune=FinetuneConfig(steps=args.steps, patience=4, threads=args.threads)
    )
    res = adapt_from_stream(
        args.endpoint,
        read_calibration(args.calibration),
        args.output,
        frames=args.frames,
        init=args.init,
        config=cfg,
        control=args.control,
        frames_corner=args.frames_corner,
        progress=not args.no_progress,
        timeout_s=args.timeout,
    )
    dev0, dev1 = res.before["poisson_deviance"], res.after["poisson_deviance"]
    print(
        f"adapted on {res.frames} frames ({res.method}): held-out deviance {dev0:.5f} -> {dev1:.5f} "
        f"({'better' if res.improved else 'NOT better'}); model {res.model_path}"
    )
    if args.control is not None:
        if res.switched:
            print(f"the daemon now runs {res.reply.get('engine', {}).get('model') if res.reply else '?'}")
        elif res.improved:
            print(f"the daemon did not switch: {res.reply.get('error') if res.reply else 'no reply'}")
        else:
            print("the daemon keeps its model (the adapted one is not better)")
    return 0 if res.improved else 1
