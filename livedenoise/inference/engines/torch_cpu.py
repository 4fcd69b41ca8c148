"""PyTorch CPU engine: a model from ``livedenoise.models`` restoring one frame at a time.

Tuned for small CPUs: batch norm folded into the convolutions, channels-last memory
format (3-5x faster convolutions than NCHW here), inference mode, a fixed thread count,
an input buffer preallocated per frame shape, and bfloat16 only where it was validated
against float32 for this model (:meth:`TorchCPUEngine.prepare` compares both on
synthetic frames and keeps bf16 only if the PSNR and the mean agree within tolerance
and, for ``auto``, it is faster on a fixed reference frame; :meth:`describe` records the
decision and the numbers).

The decision does not depend on the frame, so it is made once per model, machine and
library versions and cached (:mod:`livedenoise.inference.engines._probes`, under
``~/.cache/livedenoise/probes``): later starts read it back instead of measuring again,
and the same input with the same options gives the same output at every start.

Non-finite input pixels (NaN, +-Inf) are replaced (NaN and -Inf by 0, +Inf by the
largest finite value of the frame) and counted (``nonfinite_frames``,
``nonfinite_pixels``); a non-finite output raises ``FloatingPointError`` so that the
pipeline counts the frame as dropped. A NaN frame is never returned.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from livedenoise.imaging.metrics import psnr
from livedenoise.imaging.synthetic import make_eval_set
from livedenoise.inference.engines import _probes
from livedenoise.inference.engines.validation import frame_times
from livedenoise.inference.modelio import (
    ModelError,
    check_finite_output,
    file_sha256,
    load_model,
    read_card,
    resolve_model,
)
from livedenoise.inference.nets import fuse_for_inference
from livedenoise.util.threads import usable_cores

__all__ = [
    "BF16_MAX_MEAN_REL_ERR",
    "BF16_MAX_PSNR_DIFF_DB",
    "PRECISIONS",
    "SPEED_FRAMES",
    "TIMING_SHAPE",
    "TorchCPUEngine",
    "cpu_frame_ms",
]

log = logging.getLogger("livedenoise")

BF16_MAX_PSNR_DIFF_DB = 0.1
"""bf16 is kept only if its PSNR against the truth is within this of fp32's..."""
BF16_MAX_MEAN_REL_ERR = 0.005
"""...and the mean of its output within this relative error of fp32's."""
TIMING_SHAPE = (256, 256)
"""``auto`` times fp32 against bf16 on a frame of this shape (not the user's: the answer is cached)."""
PRECISIONS = ("auto", "fp32", "bf16")
SPEED_FRAMES = 7
""":func:`cpu_frame_ms` times this many frames (after one warm-up) and keeps the fastest."""


def _bf16_supported() -> tuple[bool, str]:
    import torch

    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        cap = "unknown"
    if cap in ("AVX512", "AMX") or "512" in str(cap) or "AMX" in str(cap):
        return True, f"CPU capability {cap}"
    return False, f"CPU capability {cap}: no native bf16, fp32 is faster"


class TorchCPUEngine:
    """The Engine protocol (see :mod:`livedenoise.inference.engines`) over a model on the CPU.

    Parameters
    ----------
    model : str, optional
        Model id or path (``None``: the default live model).
    precision : str
        ``"auto"`` (bf16 if validated and faster, else fp32), ``"fp32"`` or ``"bf16"``
        (bf16 if validated, else fp32 with a warning).
    threads : int, optional
        torch CPU threads (``None``: leave torch's setting).
    """

    name = "cpu"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import torch
        except ImportError as exc:
            return False, f"PyTorch is not installed ({exc})"
        return True, f"PyTorch {torch.__version__} on {torch.get_num_threads()} CPU threads"

    def __init__(
        self, model: str | None = None, precision: str = "auto", threads: int | None = None, **_: Any
    ):
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        module, self.card = load_model(model)
        self.model_id = self.card.id
        self.requested_precision = precision
        self._fp32 = fuse_for_inference(module).to(memory_format=torch.channels_last)
        check_finite_output(self._fp32, self.model_id)  # folding batch norm must not break it either
        self._bf16 = None
        self._module = self._fp32
        self.precision = "fp32"
        self.precision_reason = "fp32 requested" if precision == "fp32" else "not validated yet (prepare)"
        self.validation: dict[str, Any] = {}
        self.precision_source = "requested" if precision == "fp32" else "pending"
        self._decided = precision == "fp32"
        self._shape: tuple[int, int] | None = None
        self._in_np: np.ndarray | None = None
        self._in_t: Any = None
        self.nonfinite_frames = 0
        self.nonfinite_pixels = 0
        self.frames = 0

    # ------------------------------------------------------------------ precision

    def _run(self, module, x_np: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(x_np[:, None], np.float32))
            return module(x.contiguous(memory_format=torch.channels_last))[:, 0].float().numpy()

    def _probe_key(self) -> dict[str, Any] | None:
        sha = getattr(self.card, "sha256", "")
        if not sha:
            return None
        return _probes.probe_key(
            "cpu-precision",
            sha,
            requested=self.requested_precision,
            max_psnr_diff_db=BF16_MAX_PSNR_DIFF_DB,
            max_mean_rel_err=BF16_MAX_MEAN_REL_ERR,
            timing_shape=list(TIMING_SHAPE),
        )

    def _decide_precision(self, shape: tuple[int, int]) -> None:
        """Read the precision decision from the probe cache, or measure it once and cache it."""
        import copy

        import torch

        key = self._probe_key()
        hit = _probes.lookup(key) if key is not None else None
        if hit is not None and hit.get("precision") in ("fp32", "bf16"):
            self._decided = True
            self.precision_source = "cached probe"
            self.validation = dict(hit.get("validation") or {})
            self.precision_reason = f"{hit.get('reason', '')} (cached probe)"
            if hit["precision"] == "bf16":
                self._bf16 = copy.deepcopy(self._fp32).to(torch.bfloat16)
                self._module = self._bf16
                self.precision = "bf16"
            return
        self._measure_precision(shape)
        self.precision_source = "measured"
        if key is not None:
            result = {
                "precision": self.precision,
                "reason": self.precision_reason,
                "validation": self.validation,
            }
            _probes.store(key, result)

    def _measure_precision(self, shape: tuple[int, int]) -> None:
        import copy

        import torch

        self._decided = True
        ok, why = _bf16_supported()
        if not ok:
            self.precision_reason = why
            return
        bf16 = copy.deepcopy(self._fp32).to(torch.bfloat16)
        xs, ts = [], []
        for i, peak in enumerate((5.0, 30.0, 300.0)):
            x, t, _ = make_eval_set(1, 128, (peak, peak), self.card.task, seed=900 + i)
            xs.append(x[0])
            ts.append(t[0])
        x, t = np.stack(xs), np.stack(ts)
        y32 = self._run(self._fp32, x)
        if not np.isfinite(y32).all():  # the reference itself is broken: no precision can be validated
            raise ModelError(
                f"model {self.model_id!r} gives NaN or Inf in fp32 on synthetic frames; it is refused"
            )
        y16 = self._run(bf16, x)
        if not np.isfinite(y16).all():
            self.validation = {"finite": False, "frames": "3 synthetic 128x128 at 5, 30, 300 e- peak"}
            self.precision_reason = "the model's bf16 output is not finite on the validation frames; fp32"
            log.warning("model %s: %s", self.model_id, self.precision_reason)
            return
        dpsnr = float(np.max([abs(psnr(a, r) - psnr(b, r)) for a, b, r in zip(y32, y16, t)]))
        mean_err = float(
            np.max([abs(float(b.mean()) / max(float(a.mean()), 1e-9) - 1) for a, b in zip(y32, y16)])
        )
        self.validation = {
            "max_psnr_diff_db": round(dpsnr, 4),
            "max_mean_rel_err": round(mean_err, 5),
            "frames": "3 synthetic 128x128 at 5, 30, 300 e- peak",
        }
        if not (
            np.isfinite(y16).all()
            and np.isfinite(dpsnr)
            and np.isfinite(mean_err)
            and dpsnr <= BF16_MAX_PSNR_DIFF_DB
            and mean_err <= BF16_MAX_MEAN_REL_ERR
        ):
            self.precision_reason = (
                f"bf16 failed validation (PSNR diff {dpsnr:.3f} dB > {BF16_MAX_PSNR_DIFF_DB} "
                f"or mean error {mean_err:.4f} > {BF16_MAX_MEAN_REL_ERR}); fp32"
            )
            if self.requested_precision == "bf16":
                log.warning("model %s: %s", self.model_id, self.precision_reason)
            return
        if self.requested_precision == "auto":
            frame = np.abs(np.random.default_rng(0).normal(20, 5, (1, *TIMING_SHAPE))).astype(np.float32)
            t32, t16 = self._time_pair(self._fp32, bf16, frame)
            self.validation.update({"fp32_ms": round(t32 * 1e3, 1), "bf16_ms": round(t16 * 1e3, 1)})
            if t16 >= t32:
                self.precision_reason = (
                    f"bf16 validated but not faster ({t16 * 1e3:.1f} vs {t32 * 1e3:.1f} ms); fp32"
                )
                return
        self._bf16 = bf16
        self._module = bf16
        self.precision = "bf16"
        self.precision_reason = (
            f"bf16 validated against fp32 (PSNR diff {dpsnr:.3f} dB, mean error {mean_err:.4f})"
        )

    def _time_pair(self, a, b, frame: np.ndarray, n: int = 5) -> tuple[float, float]:
        """Best-of-n time of two modules, interleaved so that a load change hits both alike."""
        self._run(a, frame)
        self._run(b, frame)
        best = [float("inf"), float("inf")]
        for _ in range(n):
            for i, m in enumerate((a, b)):
                t = time.perf_counter()
                self._run(m, frame)
                best[i] = min(best[i], time.perf_counter() - t)
        return best[0], best[1]

    # ------------------------------------------------------------------ Engine protocol

    def prepare(self, shape: tuple[int, int]) -> None:
        """Allocate the input buffer for frames of ``shape``, decide the precision, warm up."""
        import torch

        if len(shape) != 2 or min(int(s) for s in shape) < 1:
            raise ValueError(f"frame shape must be (H, W) with H, W >= 1, got {shape}")
        shape = (int(shape[0]), int(shape[1]))
        if not self._decided:
            self._decide_precision(shape)
        self._in_np = np.zeros((1, 1, *shape), np.float32)
        self._in_t = torch.from_numpy(self._in_np)  # shares memory; C=1 is also channels-last
        self._shape = shape
        with torch.inference_mode():
            self._module(self._in_t)  # warm-up (oneDNN primitive creation for this shape)
        log.info("cpu engine: %s at %s, %s (%s)", self.model_id, shape, self.precision, self.precision_reason)

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Restore one float32 photoelectron frame into ``out`` (same shape) and return ``out``."""
        import torch

        if self._shape is None or frame_e.shape != self._shape:
            self.prepare(frame_e.shape)
        if out.shape != frame_e.shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {frame_e.shape}, got {out.dtype} {out.shape}")
        assert self._in_np is not None  # prepare() made it
        buf = self._in_np[0, 0]
        np.copyto(buf, frame_e, casting="same_kind")
        finite = np.isfinite(buf)
        if not finite.all():
            bad = int(buf.size - np.count_nonzero(finite))
            self.nonfinite_frames += 1
            self.nonfinite_pixels += bad
            top = float(buf[finite].max()) if finite.any() else 0.0
            np.nan_to_num(buf, copy=False, nan=0.0, posinf=top, neginf=0.0)
            if self.nonfinite_frames == 1 or self.nonfinite_frames % 1000 == 0:
                log.warning(
                    "cpu engine: %d non-finite input pixels replaced (%d frames so far)",
                    bad,
                    self.nonfinite_frames,
                )
        with torch.inference_mode():
            y = self._module(self._in_t)
        res = torch.from_numpy(out)
        res.copy_(y[0, 0])
        if not np.isfinite(out).all():
            raise FloatingPointError(f"model {self.model_id} produced non-finite values; frame not restored")
        self.frames += 1
        return out

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.name,
            "device": "cpu",
            "model": self.model_id,
            "architecture": self.card.architecture,
            "precision": self.precision,
            "precision_requested": self.requested_precision,
            "precision_reason": self.precision_reason,
            "precision_source": self.precision_source,
            "bf16_validation": self.validation,
            "threads": torch.get_num_threads(),
            "memory_format": "channels_last",
            "batchnorm_folded": True,
            "shape": list(self._shape) if self._shape else None,
            "frames": self.frames,
            "nonfinite_frames": self.nonfinite_frames,
            "nonfinite_pixels": self.nonfinite_pixels,
        }

    def close(self) -> None:
        self._in_np = None
        self._in_t = None
        self._shape = None


def cpu_frame_ms(
    model: str | None,
    *,
    threads: int | None = None,
    precision: str = "auto",
    shape: tuple[int, int] = TIMING_SHAPE,
) -> dict[str, Any]:
    """This machine's time for one ``shape`` frame of ``model`` on the CPU engine, measured once and cached.

    The engine is built with ``threads`` and ``precision`` (``auto`` decides bf16 or fp32 as
    :class:`TorchCPUEngine` does) and times :data:`SPEED_FRAMES` frames after a warm-up; the fastest
    (what the machine can do, less what other work took from it just then; what the pipeline takes
    is the caller's to add) is cached per model (the weights' own digest), machine, library versions,
    threads, precision and shape (:mod:`~livedenoise.inference.engines._probes`), so later calls cost
    no model load and answer alike. A measurement made while the machine had more runnable work than
    cores (1-minute load average) is taken again at the next call. Returns ``{"ms", "precision",
    "threads", "shape", "load", "source"}`` (``source``: ``"measured"`` or ``"cached probe"``).

    Raises :class:`ModelError` when the weights are not those their card names (as loading does).
    """
    import os

    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))  # the key records torch's thread count: set it first
    weights = resolve_model(model)
    card = read_card(weights)
    digest = file_sha256(weights)
    if card.sha256 and digest != card.sha256:
        raise ModelError(
            f"model {card.id!r}: the weights {weights.name} are not the ones its card names "
            f"(sha256 {digest[:12]}... vs {card.sha256[:12]}...); restore the original file"
        )
    shape = (int(shape[0]), int(shape[1]))
    key = _probes.probe_key("cpu-speed", digest, requested=precision, shape=list(shape), frames=SPEED_FRAMES)
    hit = _probes.lookup(key)
    fields_ok = hit is not None and (
        isinstance(hit.get("ms"), (int, float))
        and hit["ms"] > 0
        and hit.get("precision") in ("fp32", "bf16")
        and isinstance(hit.get("threads"), int)
        and hit.get("shape") == list(shape)
        and isinstance(hit.get("load"), (int, float))
    )
    if hit is not None and fields_ok and hit["load"] <= usable_cores():
        return {**hit, "source": "cached probe"}
    log.info(
        "timing %s on this CPU (%dx%d, %s, %s threads; once per machine, then cached) ...",
        card.id,
        shape[1],
        shape[0],
        precision,
        threads if threads is not None else torch.get_num_threads(),
    )
    engine = TorchCPUEngine(model, precision=precision, threads=threads)
    try:
        times = frame_times(engine, shape, SPEED_FRAMES)
        result = {
            "ms": round(1e3 * float(np.min(times)), 2),
            "precision": engine.precision,
            "threads": int(torch.get_num_threads()),
            "shape": list(shape),
            "load": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0,
        }
    finally:
        engine.close()
    _probes.store(key, result)
    return {**result, "source": "measured"}
