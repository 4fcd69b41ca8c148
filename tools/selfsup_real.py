"""Does self-supervised adaptation hurt on real structure? (README, "Learn the sample").

The real-structure evaluation frames (``livedenoise evaluate --real``'s crops, PSFs, peaks and
backgrounds, at 128²) are imaged again with fresh noise, 40 frames cycling over the grid's
fields; the default live model is adapted on those noisy frames alone (``neighbor``: the fields
differ from frame to frame); both models then restore the evaluation frames themselves.

    OMP_NUM_THREADS=1 python tools/selfsup_real.py [--steps 300] [--frames 40]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from livedenoise.imaging.metrics import psnr
from livedenoise.imaging.synthetic import add_noise
from livedenoise.inference.engines.torch_cpu import TorchCPUEngine
from livedenoise.training.evaluate_real import RealEvalConfig, make_real_frames
from livedenoise.training.finetune import FinetuneConfig
from livedenoise.training.selfsup import SelfSupConfig, adapt


def mean_psnr(model: str, frames: list[dict]) -> dict[float, float]:
    eng = TorchCPUEngine(model, precision="fp32", threads=1)
    by_peak: dict[float, list[float]] = {}
    for f in frames:
        x = f["x"]
        eng.prepare(x.shape)
        out = eng.restore(x, np.empty_like(x)).copy()
        by_peak.setdefault(f["peak_e"], []).append(psnr(out, f["truth"]))
    eng.close()
    return {k: round(float(np.mean(v)), 2) for k, v in sorted(by_peak.items())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--out", default="/tmp/livedenoise-selfsup-real.pt")
    args = p.parse_args()
    cfg = RealEvalConfig(size=128, peaks=(2.0, 5.0, 20.0, 100.0, 500.0), backgrounds=(0.0, 3.0, 10.0, 30.0))
    frames = make_real_frames(cfg)
    rng = np.random.default_rng(123)
    train = np.stack([add_noise(rng, frames[i % len(frames)]["truth"])[0] for i in range(args.frames)])
    ft = FinetuneConfig(steps=args.steps, patience=6, threads=1)
    _, _card, history = adapt(
        train, "rln-denoise-v2", args.out, SelfSupConfig(method="neighbor", finetune=ft)
    )
    before, after = mean_psnr("rln-denoise-v2", frames), mean_psnr(args.out, frames)
    print(
        json.dumps(
            {
                "frames": args.frames,
                "steps": history["steps"],
                "improved": history["improved"],
                "psnr_by_peak_before": before,
                "psnr_by_peak_after": after,
                "mean_before": round(float(np.mean(list(before.values()))), 2),
                "mean_after": round(float(np.mean(list(after.values()))), 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
