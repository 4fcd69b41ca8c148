"""Proof of self-supervised adaptation on the simulator (README, "Learn the sample").

A field of the simulator's ``cells`` scene (unlike the synthetic training phantoms), held
still, at low light with a haze of background (peaks ~5-20 e-, background ~5-10 e-), is imaged
N times with the camera model (Poisson shot noise, per-pixel offset, gain and read noise). The
default live model is adapted on those noisy frames alone; both models then restore NEW noisy
frames of that field and of a field never seen, scored by PSNR against the simulator's truth.

    python tools/selfsup_demo.py [--frames 30] [--steps 300] [--method temporal] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from livedenoise.drivers.simcam import load_sim_core
from livedenoise.imaging.metrics import psnr
from livedenoise.inference.engines.torch_cpu import TorchCPUEngine
from livedenoise.training.finetune import FinetuneConfig
from livedenoise.training.selfsup import SelfSupConfig, adapt, frames_to_e


def field(seed: int, size: int, peak_e: float, background_e: float):
    """The expected photoelectrons of one still field, and the camera's calibration."""
    core, cam = load_sim_core(sensor_shape=(size, size), seed=seed)
    c = core.getCameraDevice()
    core.setProperty(c, "Scene", "cells")
    core.setProperty(c, "Motion", 0.0)
    core.setExposure(20.0)
    core.startSequenceAcquisition(1, 0, True)
    while core.isSequenceRunning() or core.getRemainingImageCount():
        if core.getRemainingImageCount():
            _, md = core.popNextImageAndMD()
            truth = np.asarray(cam.truth(int(md["SimFrame"])), np.float64)
        else:
            time.sleep(0.005)
    truth = truth / truth.max() * (peak_e - background_e) + background_e
    return truth.astype(np.float32), cam.true_calibration()


def image(truth, cal, rng, n):
    """``n`` uint16 frames of ``truth`` through the camera model."""
    e = rng.poisson(truth, (n, *truth.shape)) + rng.normal(0, np.sqrt(cal.read_var_e2), (n, *truth.shape))
    adu = np.rint(cal.offset_adu + cal.gain_adu_per_e * e)
    return np.clip(adu, 0, 65535).astype(np.uint16)


def score(model, frames_e, truth) -> float:
    eng = TorchCPUEngine(model, precision="fp32")
    out = np.empty_like(frames_e[0])
    vals = []
    for f in frames_e:
        eng.prepare(f.shape)
        vals.append(psnr(eng.restore(f, out).copy(), truth))
    eng.close()
    return float(np.mean(vals))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--method", default="temporal", choices=("temporal", "neighbor"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--peak", type=float, default=15.0)
    p.add_argument("--background", type=float, default=7.0)
    p.add_argument("--out", default="/tmp/livedenoise-selfsup.pt")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    truth_a, cal_a = field(11, args.size, args.peak, args.background)
    truth_b, cal_b = field(12, args.size, args.peak, args.background)
    train = frames_to_e(image(truth_a, cal_a, rng, args.frames), cal_a)
    new_a = frames_to_e(image(truth_a, cal_a, rng, 8), cal_a)
    new_b = frames_to_e(image(truth_b, cal_b, rng, 8), cal_b)
    t0 = time.perf_counter()
    cfg = SelfSupConfig(
        method=args.method, finetune=FinetuneConfig(steps=args.steps, patience=6, threads=args.threads)
    )
    _, card, history = adapt(train, "rln-denoise-v2", args.out, cfg, source="simulator cells field A")
    dt = time.perf_counter() - t0
    res = {
        "method": history["method"],
        "frames": args.frames,
        "steps": history["steps"],
        "seconds": round(dt, 1),
        "mean_e": round(float(train.mean()), 2),
        "raw_psnr_a": round(float(np.mean([psnr(f, truth_a) for f in new_a])), 2),
        "before_a": round(score("rln-denoise-v2", new_a, truth_a), 2),
        "after_a": round(score(args.out, new_a, truth_a), 2),
        "raw_psnr_b": round(float(np.mean([psnr(f, truth_b) for f in new_b])), 2),
        "before_b": round(score("rln-denoise-v2", new_b, truth_b), 2),
        "after_b": round(score(args.out, new_b, truth_b), 2),
        "heldout": card.quality["heldout_frames"],
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
