"""onnxruntime against PyTorch on the CPU for shipped models: time per 512² frame and where ORT spends it.

    OMP_NUM_THREADS=2 python tools/onnx_vs_torch.py rln-denoise-v2 resunet-live-v3

Prints, per model: PyTorch fp32 in NCHW and in channels-last layout, onnxruntime (CPU provider,
all graph optimisations, 2 intra-op threads), and the share of onnxruntime's time per operator
type (from its profiler). Run it on a quiet machine.
"""

from __future__ import annotations

import collections
import copy
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from livedenoise.inference.modelio import load_model
from livedenoise.inference.nets import fuse_for_inference

THREADS = 2


def median_ms(f: Callable[[], object], n: int = 8) -> float:
    for _ in range(2):
        f()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def session(data: bytes, profile: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = profile
    return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])


def compare(model_id: str, x: torch.Tensor) -> str:
    module = fuse_for_inference(load_model(model_id)[0])
    nhwc = copy.deepcopy(module).to(memory_format=torch.channels_last)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t_nchw = median_ms(lambda: module(x))
        t_nhwc = median_ms(lambda: nhwc(x_nhwc))
    buf = io.BytesIO()
    torch.onnx.export(
        module, (x,), buf, opset_version=17, input_names=["x"], output_names=["y"], dynamo=False
    )
    feed = {"x": x.numpy()}
    sess = session(buf.getvalue())
    t_ort = median_ms(lambda: sess.run(None, feed))
    prof = session(buf.getvalue(), profile=True)
    for _ in range(4):
        prof.run(None, feed)
    trace = Path(prof.end_profiling())
    by_op: collections.Counter[str] = collections.Counter()
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node":
            by_op[event["args"].get("op_name", "?")] += event["dur"]
    trace.unlink(missing_ok=True)
    total = sum(by_op.values()) or 1
    shares = ", ".join(f"{op} {100 * t / total:.0f}%" for op, t in by_op.most_common(6))
    return (
        f"{model_id}: torch NCHW {t_nchw:.1f} ms, torch channels-last {t_nhwc:.1f} ms, "
        f"onnxruntime {t_ort:.1f} ms; onnxruntime's time by operator: {shares}"
    )


def main(argv: list[str]) -> int:
    torch.set_num_threads(THREADS)
    x = torch.from_numpy(np.random.default_rng(0).poisson(20, (1, 1, 512, 512)).astype(np.float32))
    for model_id in argv or ["rln-denoise-v2", "resunet-live-v3"]:
        print(compare(model_id, x), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
