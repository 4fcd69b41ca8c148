"""``livedenoise serve``: the daemon on a real Micro-Manager configuration."""

from __future__ import annotations

import argparse

from livedenoise.acquisition.core import CameraSettings, apply_camera_settings, load_core
from livedenoise.app.daemon import run_live, start_live_engine
from livedenoise.calibration.maps import Calibration, read_calibration
from livedenoise.cli._args import (
    CLIError,
    add_camera_arguments,
    add_confinement_arguments,
    add_precision_argument,
    add_threads_argument,
    engine_options,
)
from livedenoise.drivers.simcam import python_device
from livedenoise.inference.modelio import resolve_model
from livedenoise.live.config import PipelineConfig
from livedenoise.live.sources import CoreSource, check_pixel_type

HELP = "run the live daemon on a Micro-Manager configuration (.cfg)"
DESCRIPTION = """\
Loads a Micro-Manager configuration, runs continuous acquisition on its camera and
streams every frame through calibration, the ring buffer and the restoration engine to
ZeroMQ subscribers (topics raw and denoised, protocol livedenoise/1). The control socket
answers status, set_model, set (exposure, binning, ROI), collect_pairs, job and stop
requests (`livedenoise ctl` sends them from the shell).

Photoelectrons need the camera's per-pixel calibration: pass --calibration CAL.tif (made
by `livedenoise calibrate`). Without one the daemon refuses to guess, unless you choose
--no-calibration with the camera's nominal gain and offset from its data sheet.

Examples:
  livedenoise serve --config rig.cfg --calibration cal.tif
  livedenoise serve --config rig.cfg --no-calibration --nominal-gain-adu-per-e 2.2 --nominal-offset-adu 100
  livedenoise serve --config rig.cfg --calibration cal.tif --settings pipeline.toml
  livedenoise serve --config drivers/simcam.cfg --roi 768,768,512,512 --exposure-ms 30
  livedenoise serve --config rig.cfg --calibration cal.tif --data-dir D:/pairs --model-dir D:/models

Paths in control requests stay inside the folders named here: collect_pairs writes only
inside --data-dir, set_model loads only shipped models, $LIVEDENOISE_MODELS and --model-dir.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="RIG.cfg", help="Micro-Manager configuration file")
    p.add_argument("--calibration", metavar="CAL.tif", default=None, help="calibration TIFF of this camera")
    p.add_argument(
        "--no-calibration",
        action="store_true",
        help="no calibration file: use the nominal gain and offset given below",
    )
    p.add_argument(
        "--nominal-gain-adu-per-e", type=float, default=None, help="camera gain, ADU per photoelectron"
    )
    p.add_argument("--nominal-offset-adu", type=float, default=None, help="camera offset, ADU")
    p.add_argument(
        "--settings",
        metavar="PIPELINE.toml",
        default=None,
        help="pipeline settings (TOML; options given here override it)",
    )
    p.add_argument("--engine", default=None, help="restoration backend (default: from settings, else auto)")
    p.add_argument("--model", default=None, help="model id or path")
    add_precision_argument(p)
    add_threads_argument(p)
    p.add_argument("--pub", default=None, help="PUB endpoint (default tcp://127.0.0.1:5555)")
    p.add_argument("--control", default=None, help="control endpoint (default tcp://127.0.0.1:5556)")
    p.add_argument("--ring-slots", type=int, default=None, help="ring buffer slots (default 8)")
    p.add_argument(
        "--ring-policy",
        choices=("drop-oldest", "block"),
        default=None,
        help="when the ring is full (default drop-oldest)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow non-loopback endpoints (sockets are then protected with CURVE keys)",
    )
    p.add_argument(
        "--keys", metavar="DIR", default=None, help="folder of the CURVE keys (with --allow-remote)"
    )
    add_camera_arguments(p)
    p.add_argument(
        "--seconds", type=float, default=None, help="stop after N seconds (default: until stopped)"
    )
    add_confinement_arguments(p)


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """The PipelineConfig from --settings and the options given (options win)."""

    base = PipelineConfig.from_toml(args.settings) if args.settings else None
    changes = {
        "engine": args.engine,
        "model": args.model,
        "pub_endpoint": args.pub,
        "control_endpoint": args.control,
        "ring_slots": args.ring_slots,
        "ring_policy": args.ring_policy,
        "calibration_path": args.calibration,
        "nominal_gain_adu_per_e": args.nominal_gain_adu_per_e,
        "nominal_offset_adu": args.nominal_offset_adu,
        "security_dir": args.keys,
        "data_dir": args.data_dir,
        "model_dirs": tuple(args.model_dir) or None,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.no_calibration:
        changes["no_calibration"] = True
    if args.allow_remote:
        changes["allow_remote"] = True
    if base is None:
        return PipelineConfig(**changes)
    return base.replace(**changes)


def run(args: argparse.Namespace) -> int:

    config = build_config(args)
    core = load_core(args.config)
    check_pixel_type(core)
    settings = CameraSettings(args.exposure_ms, args.binning, args.roi)
    if settings != CameraSettings():
        apply_camera_settings(core, settings)
    engine = start_live_engine(
        config.engine,
        configured_model(config),
        core,
        fallback=False,
        options=engine_options(args.precision, args.threads),
    )
    camera_label = core.getCameraDevice()
    sim = None
    if getattr(core, "isPyDevice", lambda label: False)(camera_label):
        sim = python_device(core, camera_label)
    truth = None
    if config.calibration_path:
        calibration = read_calibration(config.calibration_path)
    elif config.no_calibration:
        x, y, w, h = core.getROI()
        calibration = Calibration.uniform(
            (y + h, x + w),
            offset_adu=float(config.nominal_offset_adu or 0.0),  # PipelineConfig requires both with
            gain_adu_per_e=float(config.nominal_gain_adu_per_e or 1.0),  # no_calibration
            camera=camera_label,
        )
    elif sim is not None and hasattr(sim, "true_calibration"):
        calibration = sim.true_calibration()
        truth = getattr(sim, "truth", None)
        print(f"livedenoise: {camera_label} is the simulated camera: using its true calibration maps")
    else:
        raise CLIError(
            f"no calibration for camera {camera_label!r}: livedenoise will not guess photoelectrons. "
            "Pass --calibration CAL.tif (make one with `livedenoise calibrate`), or choose "
            "--no-calibration --nominal-gain-adu-per-e G --nominal-offset-adu O with the values "
            "from the camera's data sheet"
        )
    source = CoreSource(core, truth=truth, poll_interval_ms=config.poll_interval_ms)
    return run_live(source, engine, calibration, config, seconds=args.seconds)


def configured_model(config: object) -> str | None:
    """The model to start with: an id is also looked up in the ``--model-dir`` folders."""
    model, dirs = getattr(config, "model", None), getattr(config, "model_dirs", ())
    if model is None or not dirs:
        return model
    try:
        return str(resolve_model(model, extra_dirs=dirs))
    except FileNotFoundError:
        return model  # the engine says what is missing
