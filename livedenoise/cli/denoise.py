"""``livedenoise denoise``: restore a TIFF of raw camera frames offline."""

from __future__ import annotations

import argparse

from livedenoise.app.offline import denoise_file, match_calibration, read_raw_stack
from livedenoise.calibration.maps import Calibration, read_calibration
from livedenoise.cli._args import CLIError, add_force_argument, add_precision_argument, engine_options
from livedenoise.inference.engines import make_engine
from livedenoise.inference.ensemble import ENSEMBLE_SIZES, SelfEnsemble
from livedenoise.util.atomic import check_writable_dir

HELP = "restore a uint16 TIFF (2D or T×Y×X) to float32 photoelectrons with a model"
DESCRIPTION = """\
Restore raw camera frames saved as a TIFF (uint16 ADU, one frame or a (T, Y, X) stack).
The frames are converted to photoelectrons with the calibration maps, restored with the
same engine and model as the live pipeline (tiled with overlap for large frames), and
written as float32 photoelectrons of the same shape, with metadata naming the model,
calibration and engine. The output appears complete or not at all. --ensemble 8 restores
each frame under its flips and transposes and averages them (8x the time, a few tenths of a
dB better; see the README).

example:
  livedenoise denoise cells.tif -o cells_restored.tif --calibration CAL.tif
  livedenoise denoise roi.tif -o out.tif --calibration FULLSENSOR.tif --roi 768,768
  livedenoise denoise cells.tif -o out.tif --no-calibration --gain-adu-per-e 0.46 --offset-adu 100
  livedenoise denoise cells.tif -o best.tif --calibration CAL.tif --model resunet-denoise-v7 --ensemble 8
"""


def _roi(text: str) -> tuple[int, int]:
    try:
        x, y = (int(v) for v in text.split(","))
    except ValueError:
        msg = f"--roi wants X,Y (two integers, the frames' top-left corner), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if x < 0 or y < 0:
        raise argparse.ArgumentTypeError(f"--roi X,Y must be >= 0, got {text!r}")
    return x, y


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN.tif", help="uint16 TIFF: one frame (Y, X) or a stack (T, Y, X)")
    p.add_argument("-o", "--output", metavar="OUT.tif", required=True, help="restored float32 TIFF to write")
    cal = p.add_argument_group("calibration (ADU -> photoelectrons)")
    cal.add_argument("--calibration", metavar="CAL.tif", help="calibration file from `livedenoise calibrate`")
    cal.add_argument(
        "--roi",
        type=_roi,
        metavar="X,Y",
        help="top-left corner of the frames on the sensor, to crop full-sensor maps",
    )
    cal.add_argument("--binning", type=int, default=1, help="camera binning of the frames (default 1)")
    cal.add_argument(
        "--no-calibration",
        action="store_true",
        help="no maps: use one nominal gain and offset for every pixel (give both below)",
    )
    cal.add_argument("--gain-adu-per-e", type=float, help="nominal gain with --no-calibration (ADU per e-)")
    cal.add_argument("--offset-adu", type=float, help="nominal offset with --no-calibration (ADU)")
    cal.add_argument(
        "--read-noise-e", type=float, default=0.0, help="nominal read noise (e- rms), recorded only"
    )
    p.add_argument(
        "--model", help="model id (see `livedenoise models`) or model file; default: the live default"
    )
    p.add_argument("--engine", default="auto", help="auto, cpu, onnxruntime, cuda, tensorrt or passthrough")
    add_precision_argument(p)
    p.add_argument(
        "--ensemble",
        type=int,
        choices=ENSEMBLE_SIZES,
        default=1,
        help="restore each frame under 2, 4 or 8 flips/transposes of itself and average them "
        "(that many times the time; 8 on non-square frames uses the 4 flips; default 1: off)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=2048,
        help="tile side in pixels for frames larger than it (default 2048: a whole sCMOS frame in one piece; "
        "the RESUNETs see the whole tile through their channel attention, so tiles differ from one "
        "whole frame by a few %% of the peak)",
    )
    p.add_argument("--overlap", type=int, default=32, help="overlap between tiles in pixels (default 32)")
    p.add_argument(
        "--saturation-adu",
        type=int,
        default=65535,
        help="pixels at or above this ADU are counted as saturated, reported (default 65535)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_force_argument(p)


def _calibration(args: argparse.Namespace) -> tuple[Calibration | None, str]:

    if args.no_calibration:
        if args.calibration:
            raise CLIError("give either --calibration CAL.tif or --no-calibration, not both")
        if args.gain_adu_per_e is None or args.offset_adu is None:
            raise CLIError(
                "--no-calibration needs the camera's nominal --gain-adu-per-e G and --offset-adu O "
                "(see its data sheet), e.g. --gain-adu-per-e 0.46 --offset-adu 100"
            )
        if not args.gain_adu_per_e > 0:
            raise CLIError(f"--gain-adu-per-e must be > 0, got {args.gain_adu_per_e}")
        return None, "nominal"
    if not args.calibration:
        raise CLIError(
            "no calibration given: pass --calibration CAL.tif (make one with `livedenoise calibrate`), "
            "or --no-calibration --gain-adu-per-e G --offset-adu O to use the camera's nominal values"
        )
    return read_calibration(args.calibration), str(args.calibration)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.binning < 1:
        raise CLIError(f"--binning must be >= 1, got {args.binning}")
    # cheap checks first: nothing slow (model loading) before we know the job can be done
    out = Path(args.output)
    if out.is_dir():
        raise CLIError(f"-o {out} is a folder; give a file name")
    if out.exists() and not args.force:
        raise CLIError(f"{out} already exists; pass --force to overwrite it or choose another -o")
    check_writable_dir(out.parent if str(out.parent) else Path("."), "restored TIFF")
    cal, source = _calibration(args)
    raw = read_raw_stack(args.input)  # validates dtype, shape, emptiness
    if cal is None:
        cal = Calibration.uniform(
            raw.shape[-2:],
            offset_adu=args.offset_adu,
            gain_adu_per_e=args.gain_adu_per_e,
            read_var_e2=args.read_noise_e**2,
            source="nominal",
        )
    else:
        cal = match_calibration(cal, raw.shape[-2:], roi=args.roi, binning=args.binning)
    engine = make_engine(args.engine, model=args.model, **engine_options(args.precision))
    if args.ensemble > 1:
        engine = SelfEnsemble(engine, args.ensemble)
    try:
        report = denoise_file(
            args.input,
            out,
            raw=raw,
            calibration=cal,
            engine=engine,
            calibration_source=source,
            tile=args.tile,
            overlap=args.overlap,
            saturation_adu=args.saturation_adu,
            progress=False if args.no_progress else None,
        )
    finally:
        engine.close()
    fps = report.frames / report.seconds if report.seconds > 0 else float("inf")
    print(
        f"{out}: {'×'.join(map(str, report.shape))} float32 photoelectrons, {report.frames} frame(s), "
        f"{fps:.1f} frames/s, model {engine.model_id}, engine {engine.name}"
    )
    for w in report.warnings:
        print(f"warning: {w}")
    return 0
