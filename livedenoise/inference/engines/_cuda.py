"""The CUDA runtime shared by the GPU backends (``cuda`` and ``tensorrt``).

:class:`CudaEngine` runs a PyTorch module on an NVIDIA GPU with reduced precision, CUDA graphs,
pinned staging and overlapped copies; :mod:`.torch_cuda` uses it as it is (eager PyTorch) and
:mod:`.tensorrt` swaps in a TensorRT-compiled module. Neither backend imports the other.

PyTorch CUDA engine: reduced precision, CUDA graphs, pinned staging, overlapped copies.

Per frame: the frame is staged into pinned host memory (skipped when it already is pinned:
see :meth:`CudaEngine.pinned_empty`), copied host->device on its own stream, restored
by replaying a CUDA graph captured for the frame shape on the compute stream, and copied
device->host on a third stream. :meth:`~CudaEngine.restore` does one frame (batch of
one, lowest latency); :meth:`~CudaEngine.restore_many` takes several frames (the
pipeline calls it only when it is behind), cuts them into micro-batches of at most
``max_batch`` and double-buffers them so that the copies of one micro-batch overlap the
compute of the next.

Precision: ``"auto"`` tries fp16, then bf16, then fp32, and keeps the first one whose output
on a synthetic frame (0 to ~30 000 photoelectrons) stays within the tolerance of the fp32
output (see :func:`relative_error`); an explicit precision that fails this check raises.
fp16 is validated only up to that frame's brightest pixel: a live frame brighter than that
(or any frame whose reduced-precision output is not finite, e.g. an fp16 overflow) is
restored again in fp32 rather than published wrong or dropped (``describe()["fp32_frames"]``
counts them); a frame that is not finite even in fp32 raises ``FloatingPointError``.
On Ampere and newer GPUs PyTorch may run fp32 convolutions in TF32
(``torch.backends.cudnn.allow_tf32``, on by default); "fp32" here means PyTorch's fp32 setting.

The same code runs on ``device="cpu"`` (no graphs, streams or pinned memory; autocast to
bf16/fp16 on the CPU) so that the scheduling and validation logic is tested without a GPU.

``livedenoise bench --engine-only --engine cuda`` prints frames/s and latency.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np

__all__ = ["AUTO_PRECISIONS", "NO_CUDA", "CudaEngine"]

from livedenoise.inference.engines import EngineUnavailable
from livedenoise.inference.engines.validation import TOLERANCE, relative_error, synthetic_frame
from livedenoise.inference.modelio import load_model

log = logging.getLogger("livedenoise")

AUTO_PRECISIONS = ("fp16", "bf16", "fp32")
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"


class _NullEvent:
    """Stands in for a CUDA event on the CPU (everything is synchronous there)."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _NullStream:
    def wait_event(self, event: Any) -> None:
        pass


class CudaEngine:
    """The Engine protocol over PyTorch on a CUDA GPU.

    Parameters
    ----------
    model : str, path, torch.nn.Module or None
        A model id or file (``load_model``), or a module (then pass ``card=`` for its id).
    precision : {"auto", "fp16", "bf16", "fp32"}
        Compute precision (autocast); validated against fp32 at every ``prepare``.
    device : str, optional
        ``"cuda"`` (default), ``"cuda:1"``...; ``"cpu"`` runs the same logic without
        graphs, streams or pinned memory (for tests).
    cuda_graphs : bool
        Capture a CUDA graph per (shape, batch size) and replay it (default True).
    max_batch : int
        Largest micro-batch :meth:`restore_many` forms (default 4).
    card : ModelCard or dict, optional
        The card of a module passed as ``model``.
    """

    name = "cuda"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, "torch is not installed"
        if not torch.cuda.is_available():
            why = NO_CUDA
            if torch.version.cuda is None:
                why += f"; torch {torch.__version__} is a CPU-only build: install a CUDA build of torch"
            return False, why
        cap = torch.cuda.get_device_capability(0)
        return True, (
            f"{torch.cuda.get_device_name(0)} (compute capability {cap[0]}.{cap[1]}), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}"
        )

    def __init__(
        self,
        model: Any = None,
        *,
        precision: str = "auto",
        device: str | None = None,
        cuda_graphs: bool = True,
        max_batch: int = 4,
        card: Any = None,
        **options: Any,
    ) -> None:
        import torch

        if options:
            raise TypeError(
                f"unknown cuda engine option(s): {', '.join(sorted(options))}; "
                "expected precision=, device=, cuda_graphs=, max_batch="
            )
        if precision not in ("auto", *AUTO_PRECISIONS):
            raise ValueError(f"precision must be auto, fp16, bf16 or fp32, not {precision!r}")
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch.device(device or "cuda")
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            ok, why = self.available()
            if not ok:
                raise EngineUnavailable(why)
        elif self.device.type != "cpu":
            raise ValueError(f"device must be cuda[:N] or cpu, not {device!r}")
        if isinstance(model, torch.nn.Module):
            module = model
            self.model_id: str | None = (
                (card or {}).get("id") if isinstance(card, dict) else getattr(card, "id", None)
            )
        else:
            module, card = load_model(model, map_location="cpu")
            self.model_id = card.id
        self.card = card
        # torch's stubs lack Module.to(memory_format=...), which torch accepts
        self._module = module.eval().float().to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.requested_precision = precision
        self.precision: str | None = None
        self.cuda_graphs = bool(cuda_graphs) and self._cuda
        self.max_batch = int(max_batch)
        self.validation_error: dict[str, float] = {}
        self.fp32_frames = 0  # frames restored again in fp32 (out of the validated range / not finite)
        self._input_limit_e = float("inf")  # brightest input the chosen precision was validated for
        self._validated_peak_e = float("inf")
        self._shape: tuple[int, int] | None = None
        self._graphs: dict[int, tuple[Any, Any, Any, Any]] = {}
        self._h2d: Any
        self._compute: Any
        self._d2h: Any
        if self._cuda:
            self._h2d = torch.cuda.Stream(self.device)
            self._compute = torch.cuda.Stream(self.device)
            self._d2h = torch.cuda.Stream(self.device)
        else:
            self._h2d = self._compute = self._d2h = _NullStream()

    # -- helpers -----------------------------------------------------------------------

    def _amp_dtype(self, precision: str) -> Any:
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]

    def _forward(self, x: Any, precision: str) -> tuple[Any, Any]:
        """Network output (float32, clamped at 0) and a per-frame 'redo in fp32' flag."""
        import torch

        dt = self._amp_dtype(precision)
        with torch.autocast(
            self.device.type, dtype=dt or torch.float32, enabled=dt is not None, cache_enabled=False
        ):
            y = self._module(x)
        return self._finish(x, y.float())

    def _finish(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Clamp ``y`` at 0 in place; flag frames whose output is not finite or whose input is
        brighter than the precision was validated for (device-side only: no host sync)."""
        import torch

        bad = ~torch.isfinite(y).flatten(1).all(dim=1)
        if self._input_limit_e != float("inf"):
            bad |= x.flatten(1).amax(dim=1) > self._input_limit_e
        return y.clamp_(min=0.0), bad

    def _stream(self, stream: Any) -> Any:
        import torch

        return torch.cuda.stream(stream) if self._cuda else contextlib.nullcontext()

    def _event(self) -> Any:
        import torch

        return torch.cuda.Event() if self._cuda else _NullEvent()

    def _empty(self, shape: tuple[int, ...], *, host: bool) -> Any:
        import torch

        if host:
            return torch.empty(shape, dtype=torch.float32, pin_memory=self._cuda)
        return torch.empty(shape, dtype=torch.float32, device=self.device)

    def pinned_empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 numpy array in pinned (page-locked) host memory.

        Ring-buffer slots allocated with this go to the GPU without the staging copy.
        On the CPU this is an ordinary array.
        """
        return self._empty(tuple(shape), host=True).numpy()

    # -- Engine protocol ---------------------------------------------------------------

    def prepare(self, shape: tuple[int, int]) -> None:
        """Allocate buffers for ``shape``, choose and validate the precision, capture graphs."""
        import torch

        h, w = (int(s) for s in shape)
        if h < 1 or w < 1:
            raise ValueError(f"frame shape must be positive, got {h}x{w}")
        self._graphs.clear()
        self._shape = (h, w)
        self._input_limit_e = float("inf")  # no range flag while validating
        self._warned_fp32 = False
        b = self.max_batch
        self._host_in = [self._empty((b, h, w), host=True) for _ in range(2)]
        self._host_out = [self._empty((b, h, w), host=True) for _ in range(2)]
        self._host_bad = [torch.zeros(b, dtype=torch.bool, pin_memory=self._cuda) for _ in range(2)]
        self._dev_in = [self._empty((b, 1, h, w), host=False) for _ in range(2)]
        self._dev_out = [self._empty((b, 1, h, w), host=False) for _ in range(2)]
        self._dev_bad = [torch.zeros(b, dtype=torch.bool, device=self.device) for _ in range(2)]
        self._ev = {k: [self._event() for _ in range(2)] for k in ("h2d", "compute", "d2h")}
        self._direct_out: list[list[bool]] = [[], []]
        if self._cuda:
            # the zero fills above ran on the current stream; the copy and compute streams
            # do not wait for it, so finish it before they touch these buffers
            torch.cuda.current_stream(self.device).synchronize()
        self.precision = self._choose_precision((h, w))
        # fp16 overflows above 65504: frames brighter than the validated one are redone in fp32
        self._input_limit_e = self._validated_peak_e if self.precision == "fp16" else float("inf")
        if self.cuda_graphs:
            self._graph(1)
        warm = np.zeros((h, w), np.float32)
        self.restore(warm, np.empty_like(warm))
        log.info(
            "cuda engine ready: %s on %s, %dx%d, %s%s",
            self.model_id,
            self.device,
            h,
            w,
            self.precision,
            ", CUDA graphs" if self.cuda_graphs else "",
        )

    def _choose_precision(self, shape: tuple[int, int]) -> str:
        import torch

        frame = synthetic_frame(shape)
        self._validated_peak_e = float(frame.max())
        x = torch.from_numpy(frame).to(self.device).reshape(1, 1, *shape)
        with torch.inference_mode():
            ref = self._forward(x, "fp32")[0].cpu().numpy()[0, 0]
            if not np.isfinite(ref).all():
                raise FloatingPointError(
                    f"model {self.model_id} gives non-finite values in fp32 on a synthetic "
                    f"{shape[0]}x{shape[1]} frame (0 to {self._validated_peak_e:.0f} e-); "
                    "the model file is damaged or unsuitable"
                )
            candidates = (
                AUTO_PRECISIONS if self.requested_precision == "auto" else (self.requested_precision,)
            )
            for p in candidates:
                if p == "bf16" and self._cuda and torch.cuda.get_device_capability(self.device)[0] < 8:
                    # bf16 runs natively from compute capability 8.0 (Ampere); before that
                    # torch.cuda.is_bf16_supported() may say True for a slow emulation
                    self.validation_error[p] = float("nan")
                    continue
                try:
                    y, bad = self._forward(x, p)
                    err = float("inf") if bool(bad.any()) else relative_error(y.cpu().numpy()[0, 0], ref)
                except RuntimeError as exc:  # e.g. no kernel for this dtype on this device
                    log.info("cuda engine: %s does not run here (%s)", p, exc)
                    err = float("nan")
                self.validation_error[p] = err
                if err <= TOLERANCE[p]:
                    log.info("cuda engine: %s validated against fp32 (max error %.2e of the range)", p, err)
                    return p
                log.info(
                    "cuda engine: %s rejected (max error %.2e of the range > %.0e)", p, err, TOLERANCE[p]
                )
        raise ValueError(
            f"precision {self.requested_precision} differs from fp32 by {self.validation_error} "
            f"(relative to the output range; tolerances {TOLERANCE}) on a synthetic frame; "
            "choose precision='auto' or 'fp32'"
        )

    def _graph(self, b: int) -> tuple[Any, Any, Any, Any]:
        """(graph, static input, static output, static not-finite flags) for batch size ``b``."""
        import torch

        if b in self._graphs:
            return self._graphs[b]
        h, w = self._shape  # type: ignore[misc]
        static_in = torch.zeros((b, 1, h, w), device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside capture (cuDNN/cuBLAS handles, autotuning, allocator)
                self._forward(static_in, self.precision)  # type: ignore[arg-type]
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # capture on the warm-up stream: handles and workspaces created there are reused, so
        # nothing capture-unsafe is lazily created during capture
        with torch.inference_mode(), torch.cuda.graph(graph, stream=side):
            static_out, static_bad = self._forward(static_in, self.precision)  # type: ignore[arg-type]
        torch.cuda.synchronize(self.device)
        self._graphs[b] = (graph, static_in, static_out, static_bad)
        log.debug("cuda engine: captured a CUDA graph for batch %d at %dx%d", b, h, w)
        return self._graphs[b]

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Restore one frame into ``out`` (batch of one)."""
        self.restore_many([frame_e], [out])
        return out

    def restore_many(self, frames: list[np.ndarray], outs: list[np.ndarray]) -> list[np.ndarray]:
        """Restore several frames (micro-batches of at most ``max_batch``, copies overlapped).

        A frame whose reduced-precision output is not finite, or that is brighter than the
        precision was validated for, is restored again in fp32. Raises ``FloatingPointError``
        naming the frames whose output is not finite even then (the other frames are
        restored); their ``out`` content is undefined.
        """
        if self._shape is None:
            raise RuntimeError("call prepare(shape) before restore()")
        if len(frames) != len(outs):
            raise ValueError(f"{len(frames)} frames but {len(outs)} output arrays")
        for f, o in zip(frames, outs):
            if f.shape != self._shape or o.shape != self._shape:
                raise ValueError(
                    f"frame {f.shape} / out {o.shape} do not match the prepared shape {self._shape}; "
                    "call prepare() with the new shape first"
                )
            if o.dtype != np.float32:
                raise ValueError(f"out must be float32, got {o.dtype}")
        chunks = [(i, min(i + self.max_batch, len(frames))) for i in range(0, len(frames), self.max_batch)]
        bad_frames: list[int] = []
        pending: tuple[int, int, int] | None = None
        for n, (lo, hi) in enumerate(chunks):
            slot = n % 2
            self._issue(frames[lo:hi], outs[lo:hi], slot)
            if pending is not None:
                bad_frames += self._collect(outs, *pending)
            pending = (slot, lo, hi)
        if pending is not None:
            bad_frames += self._collect(outs, *pending)
        if bad_frames:
            bad_frames = [i for i in bad_frames if not self._restore_fp32(frames[i], outs[i])]
        if bad_frames:
            raise FloatingPointError(
                f"the network produced non-finite values for frame(s) {bad_frames} of "
                f"{len(frames)} ({self.model_id}, {self.precision}, also in fp32); "
                "not restored"
            )
        return outs

    def _restore_fp32(self, frame: np.ndarray, out: np.ndarray) -> bool:
        """Restore one frame with the PyTorch module in fp32 (no graph); False if not finite."""
        import torch

        if not self._warned_fp32:
            self._warned_fp32 = True
            log.warning(
                "cuda engine: a frame (max %.0f e-) was out of the range validated for %s (%.0f e-) or "
                "gave non-finite values; such frames are restored in fp32 (slower)",
                float(np.nanmax(frame)) if np.isfinite(frame).any() else float("nan"),
                self.precision,
                self._input_limit_e,
            )
        with self._stream(self._compute), torch.inference_mode():
            x = torch.from_numpy(np.array(frame, dtype=np.float32)).to(
                self.device
            )  # a copy: frame may be read-only
            y, _ = CudaEngine._forward(self, x.reshape(1, 1, *x.shape), "fp32")
            y_host = y.cpu().numpy()[0, 0]  # waits for the compute stream
        if not np.isfinite(y_host).all():
            return False
        np.copyto(out, y_host)
        self.fp32_frames += 1
        return True

    def _pinned(self, a: np.ndarray) -> Any:
        """``a`` as a tensor when it lives in pinned memory (direct DMA), else ``None``."""
        import torch

        if not (self._cuda and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable):
            return None
        t = torch.from_numpy(a)
        return t if t.is_pinned() else None

    def _issue(self, frames: list[np.ndarray], outs: list[np.ndarray], slot: int) -> None:
        """Queue H2D, compute and D2H of one micro-batch in ``slot``; returns at once on a GPU."""
        import torch

        b = len(frames)
        ev = self._ev
        ev["h2d"][slot].synchronize()  # the previous H2D from host_in[slot] is done
        host_in = self._host_in[slot]
        sources = []
        for j, f in enumerate(frames):
            src = self._pinned(f)
            if src is None:  # stage through pinned memory so the copy is asynchronous
                np.copyto(host_in.numpy()[j], f, casting="same_kind")
                src = host_in[j]
            sources.append(src)
        dev_in = self._dev_in[slot][:b]
        with self._stream(self._h2d):
            self._h2d.wait_event(ev["compute"][slot])  # dev_in[slot] no longer read by compute
            for j, src in enumerate(sources):
                dev_in[j, 0].copy_(src, non_blocking=True)
            ev["h2d"][slot].record()
        with self._stream(self._compute), torch.inference_mode():
            self._compute.wait_event(ev["h2d"][slot])
            self._compute.wait_event(ev["d2h"][slot])  # dev_out[slot] already copied out
            if self.cuda_graphs:
                graph, s_in, s_out, s_bad = self._graph(b)
                s_in.copy_(dev_in)
                graph.replay()
            else:
                assert self.precision is not None  # prepare() chose it
                s_out, s_bad = self._forward(
                    dev_in.contiguous(memory_format=torch.channels_last), self.precision
                )
            self._dev_out[slot][:b].copy_(s_out)
            self._dev_bad[slot][:b].copy_(s_bad)
            ev["compute"][slot].record()
        self._direct_out[slot] = [self._pinned(o) is not None for o in outs]
        with self._stream(self._d2h):
            self._d2h.wait_event(ev["compute"][slot])
            for j, o in enumerate(outs):
                dst = self._pinned(o) if self._direct_out[slot][j] else self._host_out[slot][j]
                dst.copy_(self._dev_out[slot][j, 0], non_blocking=True)
            self._host_bad[slot][:b].copy_(self._dev_bad[slot][:b], non_blocking=True)
            ev["d2h"][slot].record()

    def _collect(self, outs: list[np.ndarray], slot: int, lo: int, hi: int) -> list[int]:
        """Wait for a micro-batch's D2H and copy it into ``outs[lo:hi]``; indices of bad frames."""
        self._ev["d2h"][slot].synchronize()
        host_np = self._host_out[slot].numpy()
        bad = self._host_bad[slot].numpy()
        for j in range(hi - lo):
            if not self._direct_out[slot][j]:
                np.copyto(outs[lo + j], host_np[j])
        return [lo + j for j in range(hi - lo) if bad[j]]

    def describe(self) -> dict[str, Any]:
        import torch

        d: dict[str, Any] = {
            "backend": self.name,
            "device": str(self.device),
            "model": self.model_id,
            "precision": self.precision or self.requested_precision,
            "cuda_graphs": self.cuda_graphs,
            "max_batch": self.max_batch,
            "validation_error": dict(self.validation_error),
            "fp32_frames": self.fp32_frames,
            # frames brighter than this (photoelectrons) are restored in fp32; None: no limit
            "input_limit_e": None if self._input_limit_e == float("inf") else round(self._input_limit_e, 1),
            "shape": list(self._shape) if self._shape else None,
            "torch": torch.__version__,
        }
        if self._cuda:
            d["gpu"] = torch.cuda.get_device_name(self.device)
        return d

    def close(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)
        self._graphs.clear()
        self._shape = None
        for attr in ("_host_in", "_host_out", "_host_bad", "_dev_in", "_dev_out", "_dev_bad"):
            self.__dict__.pop(attr, None)
