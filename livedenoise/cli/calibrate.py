"""``livedenoise calibrate``: per-pixel offset, gain and read-noise maps of an sCMOS camera."""

from __future__ import annotations

import argparse

from livedenoise.calibration.files import calibrate_files
from livedenoise.calibration.live import LiveOptions, calibrate_live_config
from livedenoise.cli._args import CLIError, add_force_argument, existing_outputs, roi

HELP = "measure the camera's per-pixel offset, gain and read noise (photon transfer)"

DESCRIPTION = """\
Measure the per-pixel sCMOS maps that turn ADU into photoelectrons.

From files: a stack of dark frames (shutter closed) and one stack per light level of a
uniform, lit field (a fluorescent slide, out of focus), all uint16 (frames, H, W):

  livedenoise calibrate --dark dark.tif --flat f1.tif --flat f2.tif --flat f3.tif \\
      --flat f4.tif -o cal.tif --report cal.png

Live, driving the camera of a Micro-Manager configuration (darks with the shutter
closed, then flats by an exposure sweep or a light property; the camera's settings
are restored afterwards):

  livedenoise calibrate --live --config drivers/simcam.cfg --property Camera,Scene,flat \\
      -o cal.tif --report cal.png

Acquire >= 100 darks and >= 4 levels of >= 100 frames (400 each for ~3 % per-pixel gain),
from ~10 e- to about half of full well. The file is written completely or not at all.
"""


def _device_prop(text: str, n: int, what: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",", n - 1))
    if len(parts) != n or not all(parts[: n - 1]):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return parts


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="CAL.tif", help="calibration file to write")
    p.add_argument(
        "--report", metavar="CAL.png", help="also write a PNG report (photon-transfer curve, maps)"
    )
    p.add_argument("--camera", help="camera name recorded in the file (live: the camera's label and name)")
    add_force_argument(p)
    g = p.add_argument_group("from files")
    g.add_argument("--dark", metavar="DARK.tif", help="uint16 stack of dark frames (shutter closed)")
    g.add_argument(
        "--flat",
        action="append",
        default=[],
        metavar="FLAT.tif",
        help="uint16 stack of one light level; repeat once per level (>= 2, 4-6 recommended)",
    )
    g.add_argument(
        "--saturation-adu",
        type=float,
        default=None,
        help="pixel value that means saturated (default 65535; 4095 for a 12-bit camera)",
    )
    g = p.add_argument_group("live (drives the camera)")
    g.add_argument("--live", action="store_true", help="acquire darks and flats with the camera now")
    g.add_argument("--config", metavar="RIG.cfg", help="Micro-Manager configuration to load (live)")
    g.add_argument("--darks", type=int, default=400, help="dark frames to acquire (default 400)")
    g.add_argument("--frames", type=int, default=400, help="frames per flat level (default 400)")
    g.add_argument("--levels", type=int, default=6, help="flat levels (default 6)")
    g.add_argument(
        "--signal-e",
        type=_floats,
        default=None,
        metavar="LO,HI",
        help="mean signal of the dimmest and brightest level in e- (default 15,1500)",
    )
    g.add_argument(
        "--light-property",
        type=lambda t: _device_prop(t, 2, "DEVICE,PROPERTY"),
        metavar="DEVICE,PROP",
        help="set the light level with this property instead of sweeping the exposure",
    )
    g.add_argument(
        "--light-values", type=_floats, metavar="V1,V2,...", help="values of --light-property, one per level"
    )
    g.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="DEVICE,PROP,VALUE",
        type=lambda t: _device_prop(t, 3, "DEVICE,PROPERTY,VALUE"),
        help="set a property first (repeatable), e.g. Camera,Scene,flat; restored afterwards",
    )
    g.add_argument(
        "--exposure-ms", type=float, default=None, help="exposure for darks and light-property levels"
    )
    g.add_argument(
        "--roi",
        type=roi,
        metavar="X,Y,W,H",
        help="calibrate only this sensor region (recorded in the file); default: full sensor",
    )
    g.add_argument("--seed", type=int, default=0, help="simulator seed when --config is the simulator")


def run(args: argparse.Namespace) -> int:

    # a bar on a terminal, log lines without one (see livedenoise.util.progress)
    progress = not getattr(args, "quiet", False)
    exists = existing_outputs(args.output, args.report)
    if exists and not args.force:
        raise CLIError(
            f"{' and '.join(exists)} already exist(s); pass --force to overwrite or choose another -o/--report"
        )
    if args.live:
        if args.dark or args.flat:
            raise CLIError(
                "--live acquires its own frames: drop --dark/--flat (or drop --live to use the files)"
            )

        signal = args.signal_e or [15.0, 1500.0]
        if len(signal) != 2 or not 0 < signal[0] < signal[1]:
            raise CLIError(f"--signal-e wants LO,HI with 0 < LO < HI, got {signal}")
        if args.light_values and not args.light_property:
            raise CLIError("--light-values needs --light-property DEVICE,PROP")
        opts = LiveOptions(
            darks=args.darks,
            frames=args.frames,
            levels=args.levels,
            signal_e=(signal[0], signal[1]),
            light_property=tuple(args.light_property) if args.light_property else None,
            light_values=tuple(args.light_values) if args.light_values else None,
            properties=tuple(tuple(p) for p in args.property),
            exposure_ms=args.exposure_ms,
            roi=args.roi,
            saturation_adu=args.saturation_adu,
        )
        fit = calibrate_live_config(
            args.config,
            args.output,
            options=opts,
            report=args.report,
            camera=args.camera,
            progress=progress,
            seed=args.seed,
        )
    else:
        if not args.dark or not args.flat:
            raise CLIError(
                "give --dark DARK.tif and one --flat per light level (or --live --config RIG.cfg to "
                "acquire them); see `livedenoise calibrate --help`"
            )
        if args.roi or args.property or args.light_property:
            raise CLIError("--roi, --property and --light-property are for --live")

        fit = calibrate_files(
            args.dark,
            args.flat,
            args.output,
            camera=args.camera,
            report=args.report,
            saturation_adu=args.saturation_adu or 65535,
            progress=progress,
        )
    s = fit.summary
    print(
        f"wrote {args.output} ({fit.calibration.id}): gain {s['gain_adu_per_e_median']:.4g} ADU/e- (median), "
        f"read noise {s['read_noise_e_median']:.3g} e- (median), offset {s['offset_adu_median']:.5g} ADU, "
        f"{s['defects']['any']} defective pixels; levels "
        + ", ".join(f"{m:.3g}" for m in s["mean_e_per_level"])
        + " e-"
    )
    if args.report:
        print(f"report: {args.report}")
    return 0
