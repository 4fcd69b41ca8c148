"""Train, measure and write the models shipped in ``models/`` (the exact reproducible commands).

Usage (from the repository root)::

    python tools/train_shipped.py train rln-denoise-v1       # train with the exact command below
    python tools/train_shipped.py measure rln-denoise-v1     # held-out quality + CPU speed into the card
    python tools/train_shipped.py speed                      # only re-measure the speed (quiet machine)
    python tools/train_shipped.py all                        # train + measure every shipped model

``train`` runs ``livedenoise train`` with the arguments in ``SHIPPED`` (the same string
ends up in the card's ``training.command``). ``measure`` adds to the card:

- ``quality.held_out``: PSNR against the noise-free expected image on a held-out
  synthetic set (another seed range and structure mix than training), per peak level,
  for the raw frame and the model;
- ``speed``: milliseconds per 512x512 frame with the CPU engine, fp32 and bf16 (bf16 only
  where it passed validation against fp32), with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHIPPED: dict[str, list[str]] = {
    # the fast live model: ~5k parameters, RL structure
    "rln-denoise-v1": [
        "--arch",
        "rln",
        "--task",
        "denoise",
        "--loss",
        "poisson",
        "--steps",
        "1000",
        "--epoch-steps",
        "100",
        "--batch",
        "16",
        "--patch",
        "64",
        "--lr",
        "0.005",
        "--lr-schedule",
        "cosine",
        "--peak-range",
        "1",
        "500",
        "--seed",
        "1",
        "--val-size",
        "24",
        "--threads",
        "1",
        "--id",
        "rln-denoise-v1",
    ],
    # v1's recipe with ReLU hidden layers (softplus only on the RL ratio's denominators and the output layer):
    # ~35% faster on a CPU, the live default
    "rln-denoise-v2": [
        "--arch",
        "rln",
        "--arch-param",
        'activation="relu"',
        "--task",
        "denoise",
        "--loss",
        "poisson",
        "--steps",
        "1000",
        "--epoch-steps",
        "100",
        "--batch",
        "16",
        "--patch",
        "64",
        "--lr",
        "0.005",
        "--lr-schedule",
        "cosine",
        "--peak-range",
        "1",
        "500",
        "--seed",
        "1",
        "--val-size",
        "24",
        "--threads",
        "1",
        "--id",
        "rln-denoise-v2",
    ],
    # the quality model: ~1.2M parameters, U-Net of residual channel-attention blocks
    "resunet-denoise-v1": [
        "--arch",
        "resunet",
        "--task",
        "denoise",
        "--loss",
        "poisson",
        "--steps",
        "800",
        "--epoch-steps",
        "100",
        "--batch",
        "8",
        "--patch",
        "64",
        "--lr",
        "0.0015",
        "--lr-schedule",
        "cosine",
        "--peak-range",
        "1",
        "500",
        "--seed",
        "2",
        "--val-size",
        "24",
        "--threads",
        "1",
        "--id",
        "resunet-denoise-v1",
    ],
}

EVAL_PEAKS_E = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0)
EVAL_FRAMES_PER_PEAK = 8
EVAL_SIZE = 128
EVAL_SEED = 2024


def train(model_id: str) -> None:
    from livedenoise.cli import main

    args = [
        "train",
        *SHIPPED[model_id],
        "--checkpoint-dir",
        f"runs/{model_id}",
        "-o",
        f"models/{model_id}.pt",
    ]
    rc = main(args)
    if rc:
        raise SystemExit(rc)


def measure_quality(module) -> dict:
    import numpy as np

    from livedenoise.imaging.synthetic import make_eval_set
    from livedenoise.training.train import evaluate_psnr

    per_peak = {}
    for i, peak in enumerate(EVAL_PEAKS_E):
        x, t, _ = make_eval_set(EVAL_FRAMES_PER_PEAK, EVAL_SIZE, (peak, peak), "denoise", seed=EVAL_SEED + i)
        ev = evaluate_psnr(module, x, t)
        per_peak[f"{peak:g}"] = {
            "raw_psnr_db": round(ev["raw_psnr_db"], 2),
            "psnr_db": round(ev["psnr_db"], 2),
        }
    band = [v for k, v in per_peak.items() if 5 <= float(k) <= 100]
    return {
        "set": (
            f"held-out synthetic (livedenoise.imaging.synthetic.make_eval_set, held_out mix, seed {EVAL_SEED}+i), "
            f"{EVAL_FRAMES_PER_PEAK} frames of {EVAL_SIZE}x{EVAL_SIZE} per peak level; "
            "PSNR vs the noise-free expected image, data range = max - min"
        ),
        "per_peak_e": per_peak,
        "mean_5_100_e": {
            "raw_psnr_db": round(float(np.mean([v["raw_psnr_db"] for v in band])), 2),
            "psnr_db": round(float(np.mean([v["psnr_db"] for v in band])), 2),
        },
    }


def measure_speed(model_path: str, size: int = 512, repeats: int = 20) -> dict:
    """Median and fastest time per frame of the CPU engine, fp32 and bf16, 2 and 1 threads.

    Timed by :func:`livedenoise.app.bench.bench_engine`, the harness behind ``livedenoise bench``.
    """
    from livedenoise.app.bench import bench_engine
    from livedenoise.inference.engines.torch_cpu import TorchCPUEngine

    out: dict = {"frame": f"{size}x{size}"}
    for threads in (2, 1):
        for precision in ("fp32", "bf16"):
            eng = TorchCPUEngine(model_path, precision=precision, threads=threads)
            try:
                r = bench_engine(eng, (size, size), repeats, warmup=3)
            finally:
                eng.close()
            desc = r["engine"]
            if precision == "bf16" and desc["precision"] != "bf16":
                out["bf16"] = f"not used: {desc['precision_reason']}"
                continue
            key = f"{precision}_{threads}t"
            out[f"{key}_ms_median"] = round(r["latency_ms_p50"], 1)
            out[f"{key}_ms_min"] = round(r["latency_ms_min"], 1)
            if precision == "bf16":
                out["bf16_validation"] = desc["precision_reason"]
    load = os.getloadavg()
    out["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other "
        f"jobs (load average {load[0]:.1f}) at {time.strftime('%Y-%m-%d %H:%M')}"
    )
    return out


def measure(model_id: str, quality: bool = True) -> None:
    from livedenoise.inference.modelio import load_model, save_model

    module, card = load_model(ROOT / "models" / f"{model_id}.pt")
    if quality:
        card.quality["held_out"] = measure_quality(module)
    card.speed = measure_speed(str(ROOT / "models" / f"{model_id}.pt"))
    save_model(module, card, ROOT / "models" / f"{model_id}.pt")
    q = card.quality["held_out"]["mean_5_100_e"]
    print(
        f"{model_id}: held-out 5-100 e- mean PSNR {q['psnr_db']} dB (raw {q['raw_psnr_db']} dB); speed {card.speed}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "action",
        choices=("train", "measure", "speed", "all"),
        help="speed: re-measure only the speed (e.g. on a quiet machine)",
    )
    p.add_argument("models", nargs="*", help=f"model ids (default: all of {', '.join(SHIPPED)})")
    a = p.parse_args(argv)
    os.chdir(ROOT)
    ids = a.models or list(SHIPPED)
    unknown = [m for m in ids if m not in SHIPPED]
    if unknown:
        p.error(f"unknown model ids {unknown}; shipped: {', '.join(SHIPPED)}")
    for m in ids:
        if a.action in ("train", "all"):
            train(m)
        if a.action in ("measure", "all"):
            measure(m)
        elif a.action == "speed":
            measure(m, quality=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
