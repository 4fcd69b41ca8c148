"""How well the trust score tracks restoration quality (README, "Trust score").

On the held-out synthetic evaluation set (24 frames of 128², 5-100 e- peak, seed 0), every shipped
model, the passthrough engine and deliberately blurred restorations are scored by PSNR against the
truth and by qc (every pixel, the median read variance of each frame); prints the correlation of
the PSNR loss (best method on the frame minus this one) with |log chi2| and with structure.

    OMP_NUM_THREADS=1 python tools/qc_correlation.py
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from livedenoise.imaging.metrics import psnr
from livedenoise.imaging.synthetic import make_eval_set
from livedenoise.inference.engines import make_engine
from livedenoise.live.qc import frame_qc

MODELS = ("rln-denoise-v2", "rln-denoise-v1", "resunet-denoise-v1")


def _ranks(a: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(a))


def main() -> None:
    xs, ts, params = make_eval_set(24, 128, (5.0, 100.0), "denoise", seed=0)
    engines = {m: make_engine("cpu", model=m, precision="fp32", threads=1) for m in MODELS}
    rows: list[tuple[str, float, float, float, bool]] = []
    for x, t, p in zip(xs, ts, params):
        read_var = np.full(x.shape, p["read_var_e2"], np.float32)
        outs: dict[str, np.ndarray] = {}
        for name, engine in engines.items():
            engine.prepare(x.shape)
            outs[name] = engine.restore(x, np.empty_like(x)).copy()
        outs["passthrough"] = np.maximum(x, 0)
        for sigma in (1.0, 2.0, 4.0):
            outs[f"rln-denoise-v2, blurred sigma {sigma:g}"] = gaussian_filter(outs["rln-denoise-v2"], sigma)
        scores = {k: psnr(v, t) for k, v in outs.items()}
        best = max(scores.values())
        for k, v in outs.items():
            q = frame_qc(x, v, read_var, stride=1)
            rows.append((k, best - scores[k], q["chi2"], q["structure"], q["ok"]))
    loss = np.array([r[1] for r in rows])
    dev = np.abs(np.log(np.array([r[2] for r in rows])))
    structure = np.array([r[3] for r in rows])
    print(f"{len(rows)} restorations")
    print(f"corr(PSNR loss, |log chi2|) = {np.corrcoef(loss, dev)[0, 1]:.3f}")
    print(f"corr(PSNR loss, structure) = {np.corrcoef(loss, structure)[0, 1]:.3f}")
    print(f"rank corr(PSNR loss, |log chi2|) = {np.corrcoef(_ranks(loss), _ranks(dev))[0, 1]:.3f}")
    print(f"rank corr(PSNR loss, structure) = {np.corrcoef(_ranks(loss), _ranks(structure))[0, 1]:.3f}")
    for k in sorted({r[0] for r in rows}):
        sel = [r for r in rows if r[0] == k]
        print(
            f"{k:36s} loss {np.mean([r[1] for r in sel]):5.2f} dB  chi2 {np.mean([r[2] for r in sel]):.3f} "
            f"structure {np.mean([r[3] for r in sel]):+.3f} ok {sum(r[4] for r in sel)}/{len(sel)}"
        )


if __name__ == "__main__":
    main()
