"""``livedenoise demo``: the simulated sCMOS camera streamed through the whole pipeline."""

from __future__ import annotations

import argparse

from livedenoise.acquisition.core import CameraSettings, apply_camera_settings
from livedenoise.app.daemon import run_live, start_live_engine
from livedenoise.calibration.maps import read_calibration
from livedenoise.cli._args import (
    CLIError,
    add_camera_arguments,
    add_confinement_arguments,
    add_precision_argument,
    add_threads_argument,
    engine_options,
)
from livedenoise.cli.serve import configured_model
from livedenoise.drivers.simcam import load_sim_core
from livedenoise.live.config import PipelineConfig
from livedenoise.live.sources import CoreSource

HELP = "simulated sCMOS camera -> photoelectrons -> restoration -> ZeroMQ, with live statistics"
DESCRIPTION = """\
Runs the whole live pipeline on the simulated sCMOS camera (drivers/simcam.cfg): every frame
is converted to photoelectrons with the simulator's own per-pixel maps, restored by the
engine and published on --pub as topics raw, denoised and truth (the noise-free image).
Once a second it prints frames/s, latency p50/p99 per stage (ms), drops, and the PSNR of
the raw and restored frames against the truth. Ctrl-C stops cleanly with a summary.

Example:
  livedenoise demo --seconds 10
  livedenoise demo --roi 0,0,512,256 --binning 2 --exposure-ms 30
  livedenoise subscribe            # in another terminal: watch the stream
"""

DEFAULT_SIZE = 256
DEFAULT_EXPOSURE_MS = 50.0
SENSOR_MIN = 512


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=None, help="stop after N seconds (default: until Ctrl-C)")
    p.add_argument(
        "--engine",
        default=None,
        help="restoration backend: passthrough, cpu, onnxruntime, cuda, tensorrt or auto "
        "(default: cpu with the default model, or passthrough if no model is installed)",
    )
    p.add_argument(
        "--model", default=None, help="model id or path (default: the engine's default live model)"
    )
    add_precision_argument(p)
    add_threads_argument(p)
    p.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help=f"square ROI in the centre of the simulated sensor ({SENSOR_MIN}² or --size², "
        f"whichever is larger), pixels (default {DEFAULT_SIZE})",
    )
    add_camera_arguments(p, exposure_default=DEFAULT_EXPOSURE_MS)
    p.add_argument(
        "--pub", default="tcp://127.0.0.1:5555", help="PUB endpoint of the frames (default %(default)s)"
    )
    p.add_argument("--control", default="tcp://127.0.0.1:5556", help="control endpoint (default %(default)s)")
    p.add_argument(
        "--calibration", default=None, help="calibration TIFF (default: the simulator's true maps)"
    )
    p.add_argument("--ring-slots", type=int, default=8, help="ring buffer slots (default %(default)s)")
    p.add_argument(
        "--ring-policy",
        choices=("drop-oldest", "block"),
        default="drop-oldest",
        help="when the ring is full (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="simulator seed (default %(default)s)")
    add_confinement_arguments(p)


def run(args: argparse.Namespace) -> int:
    config = PipelineConfig(
        ring_slots=args.ring_slots,
        ring_policy=args.ring_policy,
        pub_endpoint=args.pub,
        control_endpoint=args.control,
        engine=args.engine or "cpu",
        model=args.model,
        calibration_path=args.calibration,
        publish_truth=True,
        data_dir=args.data_dir,
        model_dirs=tuple(args.model_dir),
    )
    if args.size < 8:
        raise CLIError(f"--size {args.size} is too small: use at least 8 pixels")
    if not 0.1 <= args.exposure_ms <= 10000:
        raise CLIError(f"--exposure-ms {args.exposure_ms:g} is out of range: use 0.1 to 10000 ms")
    if args.size > 4096:
        raise CLIError(f"--size {args.size} is larger than the simulated sensor can be (4096)")
    binning = args.binning or 1
    # a sensor just large enough for the ROI starts in seconds (a 2048² one takes ~8 s to build)
    if args.roi is not None:
        x, y, w, h = args.roi
        sensor = max(SENSOR_MIN, (max(x + w, y + h)) * binning)
        roi = args.roi
    else:
        sensor = max(SENSOR_MIN, args.size * binning)
        side = sensor // binning
        roi = ((side - args.size) // 2, (side - args.size) // 2, args.size, args.size)
    if sensor > 4096:
        raise CLIError(
            f"ROI {roi} at binning {binning} needs a {sensor}² sensor; the simulator goes up to 4096²"
        )
    core, camera = load_sim_core(sensor_shape=(sensor, sensor), seed=args.seed)
    apply_camera_settings(core, CameraSettings(args.exposure_ms, args.binning, roi))

    if args.calibration:
        calibration = read_calibration(args.calibration)
    else:
        calibration = camera.true_calibration()
    engine = start_live_engine(
        args.engine,
        configured_model(config),
        core,
        fallback=args.engine is None and args.model is None,
        options=engine_options(args.precision, args.threads),
    )

    source = CoreSource(core, truth=camera.truth, poll_interval_ms=config.poll_interval_ms)
    return run_live(source, engine, calibration, config, seconds=args.seconds, quality=True)
