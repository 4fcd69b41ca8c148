"""Ablation: the same network trained with the Poisson loss and with MSE, at <= 10 e- peak.

Both runs share everything but the loss: architecture and its parameters, steps, batch,
patch, learning-rate schedule, seed (so the same initial weights and the same training
stream of 1-10 e- peak synthetic patches). Both are then scored on the held-out set
(``make_eval_set(..., held_out=True)``: another seed range and structure mix) at 1-10 e-
and at fixed 2, 5 and 10 e- peak, with the raw frame and GAT+NLM as references.

Usage (a few minutes per run on a 2-core CPU)::

    python tools/ablation_poisson_mse.py --steps 1500 --json ablation.json

Prints a Markdown table (PSNR, SSIM, NRMSE, Kolmogorov distance; mean over frames).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

BINS = (("1-10", (1.0, 10.0)), ("2", (2.0, 2.0)), ("5", (5.0, 5.0)), ("10", (10.0, 10.0)))
EVAL_SEED = 31  # held-out frames; never the baselines' tuning seed (777)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="rln", choices=("rln", "resunet"))
    p.add_argument("--arch-params", default="{}", help="JSON constructor arguments (e.g. '{\"base\": 16}')")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=8, help="held-out frames per bin")
    p.add_argument("--size", type=int, default=128, help="held-out frame side")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="write results here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _restore(module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(x[None, None], np.float32)))[0, 0].numpy()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from livedenoise.imaging.metrics import kolmogorov_distance, nrmse, psnr, ssim
    from livedenoise.imaging.synthetic import make_eval_set
    from livedenoise.training.baselines import gat_nlm
    from livedenoise.training.train import TrainConfig, train

    command = "python tools/ablation_poisson_mse.py " + " ".join(sys.argv[1:] if argv is None else argv)
    modules, runs = {}, {}
    for loss in ("poisson", "mse"):
        cfg = TrainConfig(
            architecture=args.arch,
            arch_params=json.loads(args.arch_params),
            loss=loss,
            steps=args.steps,
            epoch_steps=max(args.steps // 5, 1),
            batch=args.batch,
            patch=args.patch,
            lr=args.lr,
            peak_e_range=(1.0, 10.0),
            seed=args.seed,
            device="cpu",
            threads=args.threads,
            model_id=f"ablation-{args.arch}-{loss}",
            command=command,
        )
        t0 = time.perf_counter()
        module, card, history = train(cfg, progress=not args.no_progress)
        modules[loss] = module.eval()
        runs[loss] = {
            "train_seconds": time.perf_counter() - t0,
            "history": history,
            "parameters": card.parameters,
        }
        print(f"{loss}: trained {args.steps} steps in {runs[loss]['train_seconds']:.0f} s", flush=True)

    metrics = {"psnr": psnr, "ssim": ssim, "nrmse": nrmse, "kd": kolmogorov_distance}
    methods = ["raw", "gat-nlm", f"{args.arch} + MSE", f"{args.arch} + Poisson"]
    results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    for i, (label, rng_e) in enumerate(BINS):
        xs, ts, ps = make_eval_set(
            args.n, args.size, rng_e, "denoise", seed=EVAL_SEED * 100 + i, held_out=True
        )
        rows: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for x, t, p in zip(xs, ts, ps):
            ests = {
                "raw": x,
                "gat-nlm": gat_nlm(x, read_var_e2=p["read_var_e2"]),
                f"{args.arch} + MSE": _restore(modules["mse"], x),
                f"{args.arch} + Poisson": _restore(modules["poisson"], x),
            }
            for m, e in ests.items():
                rows[m].append({k: fn(e, t) for k, fn in metrics.items()})
        for m in methods:
            results[m][label] = {k: float(np.mean([r[k] for r in rows[m]])) for k in metrics}

    labels = [b[0] for b in BINS]
    print(
        f"\nPoisson vs MSE loss, {args.arch}, {args.steps} steps each, trained at 1-10 e- peak; held-out "
        f"{args.n} frames of {args.size}² per bin. PSNR (dB) / SSIM per peak photon level:\n"
    )
    print("| method | " + " | ".join(f"{lab} e- PSNR | {lab} e- SSIM" for lab in labels) + " |")
    print("|---" * (2 * len(labels) + 1) + "|")
    for m in methods:
        cells = [f"{results[m][lab]['psnr']:.2f} | {results[m][lab]['ssim']:.3f}" for lab in labels]
        print(f"| {m} | " + " | ".join(cells) + " |")
    gain = {lab: results[methods[3]][lab]["psnr"] - results[methods[2]][lab]["psnr"] for lab in labels}
    print("\nPoisson - MSE (dB): " + ", ".join(f"{lab} e-: {g:+.2f}" for lab, g in gain.items()))
    print(f"command: {command}")
    if args.json:
        from livedenoise.util.atomic import atomic_path

        with atomic_path(args.json, "ablation results") as tmp:
            tmp.write_text(
                json.dumps(
                    {
                        "command": command,
                        "args": vars(args),
                        "results": results,
                        "poisson_minus_mse_db": gain,
                        "runs": runs,
                    },
                    indent=1,
                    default=str,
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
