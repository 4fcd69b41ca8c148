"""``livedenoise collect-pairs``: short/long exposure pairs of the sample, for fine-tuning."""

from __future__ import annotations

import argparse

from livedenoise.acquisition.collect import collect_pairs, parse_positions, validate_request
from livedenoise.acquisition.core import load_core
from livedenoise.acquisition.pairs import PairsError
from livedenoise.calibration.maps import read_calibration
from livedenoise.cli import CLIError
from livedenoise.cli._args import roi
from livedenoise.drivers.simcam import load_sim_core

HELP = "acquire short/long exposure pairs of the sample at hand (a dataset for fine-tuning)"

DESCRIPTION = """\
Acquire matched short and long exposures of the same field through the pymmcore-plus MDA
machinery: per pair, K short exposures (the network's input) and one long exposure under
the same light (the target, r = long/short times more photons). Pairs are written one by
one (a crash loses at most the pair in flight); an existing dataset folder is appended to.
Each pair is checked for motion, saturation and bleaching; failing pairs are flagged and
left out of training. The camera's exposure, stage position and shutter are restored.

On the simulated camera (the default), at low light, on a 256x256 ROI:

  livedenoise collect-pairs --short-ms 10 --long-ms 100 --pairs 20 -o pairs/ \\
      --light-level 0.3 --roi 128,128,256,256

On a microscope (a calibration from `livedenoise calibrate` is required):

  livedenoise collect-pairs --config rig.cfg --calibration cal.tif --short-ms 10 \\
      --long-ms 100 --pairs 40 --positions grid 4x2 100 -o pairs/

Then fine-tune: `livedenoise train --pairs pairs/ --init rln-denoise-v1 -o rln-mysample`.
From a running daemon, send {"cmd": "collect_pairs", ...} to its control socket instead.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--short-ms", type=float, required=True, help="short exposure in ms (the network's input)")
    p.add_argument(
        "--long-ms", type=float, required=True, help="long exposure in ms (the target; longer than short)"
    )
    p.add_argument("--pairs", type=int, required=True, metavar="N", help="number of pairs to acquire")
    p.add_argument(
        "-o", "--output", required=True, metavar="DATASET", help="dataset folder (created, or appended to)"
    )
    p.add_argument(
        "--shorts-per-pair", type=int, default=1, metavar="K", help="short exposures per pair (default 1)"
    )
    p.add_argument(
        "--positions",
        nargs="+",
        default=["current"],
        metavar="SPEC",
        help="'current' (default), 'list FILE' (x y [z] per line, µm) or 'grid NxM STEP_UM' "
        "(centred on the current position); pairs are spread over the positions",
    )
    g = p.add_argument_group("camera")
    g.add_argument(
        "--config", metavar="RIG.cfg", help="Micro-Manager configuration (default: the simulated camera)"
    )
    g.add_argument(
        "--calibration", metavar="CAL.tif", help="calibration of the camera (required with --config)"
    )
    g.add_argument("--roi", type=roi, metavar="X,Y,W,H", help="camera ROI to collect on")
    g = p.add_argument_group("simulated camera (without --config)")
    g.add_argument("--scene", default="cells", help="simulated scene: cells (default), beads")
    g.add_argument("--light-level", type=float, default=None, help="simulated light level (default 1.0)")
    g.add_argument(
        "--motion", type=float, default=0.0, help="simulated sample motion (default 0: a fixed sample)"
    )
    g.add_argument(
        "--sensor", type=int, default=512, metavar="PX", help="simulated sensor size (default 512)"
    )
    g.add_argument("--seed", type=int, default=0, help="simulator seed")


def run(args: argparse.Namespace) -> int:

    try:
        return _run(args)
    except PairsError as exc:  # bad arguments, busy camera, saturation...: the message is the story
        raise CLIError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    import sys

    # arguments first: nothing is loaded or written for a bad request
    req = validate_request(args.short_ms, args.long_ms, args.pairs, args.output, args.shorts_per_pair)
    if args.config and not args.calibration:
        raise CLIError(
            "--config needs --calibration CAL.tif (the camera's maps); make one with "
            "`livedenoise calibrate --live --config RIG.cfg -o CAL.tif`"
        )
    calibration_file = None
    if args.config:
        calibration = read_calibration(args.calibration)
        calibration_file = args.calibration
        core = load_core(args.config)
    else:
        if args.calibration:
            raise CLIError("--calibration is for --config; the simulated camera records its true calibration")
        core, camera = load_sim_core(sensor_shape=(args.sensor, args.sensor), seed=args.seed)
        calibration = camera.true_calibration()
        cam = core.getCameraDevice()
        core.setProperty(cam, "Scene", args.scene)
        core.setProperty(cam, "Motion", args.motion)
        if args.light_level is not None:
            core.setProperty(cam, "LightLevel", args.light_level)
    if args.roi:
        core.setROI(*args.roi)
    positions = parse_positions(args.positions, core)

    from tqdm import tqdm

    bar = tqdm(total=req.pairs, desc="pairs", unit="pair", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        result = collect_pairs(
            core,
            req.output,
            short_ms=req.short_ms,
            long_ms=req.long_ms,
            pairs=req.pairs,
            shorts_per_pair=req.shorts_per_pair,
            positions=positions,
            calibration=calibration,
            calibration_file=calibration_file,
            progress=progress,
        )
    finally:
        bar.close()
    print(
        f"{result['pairs_written']} pairs written to {result['output']} ({result['pairs_in_dataset']} in the "
        f"dataset, {result['flagged']} flagged, {result['incomplete']} incomplete) in {result['seconds']:.1f} s"
    )
    return 0
