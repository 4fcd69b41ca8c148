"""TensorRT engine via torch-tensorrt, cached on disk, falling back to the CUDA engine.

``pip install -e ".[gpu]"`` (after a CUDA build of torch) installs torch-tensorrt; it is
imported only when this engine is used.

An engine is compiled per (model weights, frame shape, precision) for one GPU model and one
TensorRT version, which takes minutes, so compiled engines are kept in
``~/.cache/livedenoise/trt`` (``$LIVEDENOISE_CACHE/trt``; see ``_cache.py`` for the key and
layout). The compiled program is checked against the fp32 PyTorch output on a synthetic
frame before use; a cached engine that fails the check is removed and rebuilt once, and a
fresh one that fails it is not kept. If compiling, loading or that check fails, the engine
logs why and runs the PyTorch CUDA engine instead, at the requested precision
(``fallback=False`` makes it raise instead); ``describe()`` then says ``backend: cuda``
with the ``fallback_reason``.

Frames go through the CUDA engine's machinery (pinned staging, H2D / compute / D2H on their
own streams, overlapped in ``restore_many``), with the TensorRT module in place of the
network; TensorRT engines are built for batch 1, so micro-batches are batches of one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import logging
import threading
import time
from pathlib import Path
from typing import Any

from livedenoise import __version__
from livedenoise.inference.engines import EngineUnavailable
from livedenoise.inference.engines._cache import CacheKey, EngineCache
from livedenoise.inference.engines._cuda import CudaEngine
from livedenoise.inference.engines.validation import TOLERANCE, relative_error, synthetic_frame

__all__ = ["TensorRTEngine", "model_sha256", "state_dict_sha256"]

log = logging.getLogger("livedenoise")

PRECISIONS = ("fp16", "bf16", "fp32")
HEARTBEAT_S = 30.0
INSTALL = 'pip install -e ".[gpu]" (needs a CUDA build of torch)'


def state_dict_sha256(module: Any) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes, bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_sha256(module: Any, card: Any = None) -> str:
    """sha256 of everything in a network that a compiled engine bakes in.

    The weights (:func:`state_dict_sha256`), the module's class and its ``repr`` (layers and
    their settings, e.g. the activation), and the card's ``architecture`` / ``arch_params``
    when a card is given. Two models that share a weights file but differ in architecture
    therefore never share a cache entry; a card's own ``sha256`` (of the weights file only)
    is not enough for that, and is not trusted for a module passed in directly.
    """
    import json

    if isinstance(card, dict):
        arch = {"architecture": card.get("architecture"), "arch_params": card.get("arch_params")}
    else:
        arch = {
            "architecture": getattr(card, "architecture", None),
            "arch_params": getattr(card, "arch_params", None),
        }
    h = hashlib.sha256()
    h.update(state_dict_sha256(module).encode())
    h.update(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}\n".encode())
    h.update(json.dumps(arch, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _trt_versions() -> tuple[str, str]:
    """``(tensorrt version, torch-tensorrt version)``; raises ImportError when missing."""
    import tensorrt
    import torch_tensorrt

    return str(tensorrt.__version__), str(torch_tensorrt.__version__)


def _settings_fields() -> set[str]:
    """Names of torch-tensorrt's dynamo ``CompilationSettings`` fields (this installed version)."""
    from torch_tensorrt.dynamo._settings import CompilationSettings

    return {f.name for f in dataclasses.fields(CompilationSettings)}


def _precision_kwargs(precision: str, fields: set[str] | None = None) -> dict[str, Any]:
    """torch-tensorrt compile settings for ``precision`` across API generations.

    Releases with ``enable_autocast`` in ``CompilationSettings`` type networks explicitly
    (``use_explicit_typing``, on by default there) and lower to fp16/bf16 with their own
    autocast (``autocast_low_precision_type``); their ``torch_tensorrt.compile`` no longer passes
    ``enabled_precisions`` to the dynamo path at all, so an fp16 request through it would
    silently build fp32. Older releases take ``enabled_precisions`` (weak typing).
    ``fields`` defaults to the installed release's settings.
    """
    import torch

    if fields is None:
        fields = _settings_fields()
    low = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if low is None:
        return {}
    if "enable_autocast" in fields:
        kw: dict[str, Any] = {"use_explicit_typing": True, "enable_autocast": True}
        for name in ("low_precision_type", "autocast_low_precision_type"):
            if name in fields:
                kw[name] = low
                break
        return kw
    kw = {"enabled_precisions": {low}}
    if "use_explicit_typing" in fields:
        kw["use_explicit_typing"] = False
    return kw


def _compile(module: Any, example: Any, precision: str) -> Any:
    """Compile ``module`` for ``example``'s shape with torch-tensorrt (dynamo IR).

    ``device`` is passed so that the example inputs of the trace land on the module's GPU
    (torch-tensorrt's default is the current device, not necessarily ``example.device``).
    """
    import torch_tensorrt

    params = inspect.signature(torch_tensorrt.compile).parameters
    spec = [torch_tensorrt.Input(shape=tuple(example.shape), dtype=example.dtype)]
    inputs_kw = {"arg_inputs": spec} if "arg_inputs" in params else {"inputs": spec}
    return torch_tensorrt.compile(
        module,
        ir="dynamo",
        min_block_size=1,
        device=example.device,
        **inputs_kw,
        **_precision_kwargs(precision),
    )


def _save(compiled: Any, path: Path, example: Any) -> None:
    import torch_tensorrt

    params = inspect.signature(torch_tensorrt.save).parameters
    inputs_kw = {"arg_inputs": [example]} if "arg_inputs" in params else {"inputs": [example]}
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", **inputs_kw)


def _load(path: Path) -> Any:
    """The callable module of a saved program.

    ``torch_tensorrt.load`` rather than ``torch.export.load``: it also registers the Python
    runtime's ``tensorrt::execute_engine`` op where the C++ runtime is not installed.
    """
    import torch_tensorrt

    program = torch_tensorrt.load(str(path))
    return program.module() if hasattr(program, "module") else program


class _Heartbeat:
    """Logs 'still building' every ``period_s`` while a long build runs."""

    def __init__(self, what: str, period_s: float = HEARTBEAT_S) -> None:
        self.what, self.period_s = what, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="livedenoise-trt-build", daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.period_s):
            log.info("%s: still building (%.0f s)", self.what, time.monotonic() - t0)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class TensorRTEngine(CudaEngine):
    """The Engine protocol over a torch-tensorrt compiled network (CUDA engine on failure).

    Parameters
    ----------
    model : str, path, torch.nn.Module or None
        As for :class:`~livedenoise.inference.engines._cuda.CudaEngine`.
    precision : {"auto", "fp16", "bf16", "fp32"}
        ``auto`` = fp16. The compiled engine must match fp32 within ``TOLERANCE``.
    cache_dir : path, optional
        Engine cache folder (default ``$LIVEDENOISE_CACHE/trt`` or ``~/.cache/livedenoise/trt``).
    fallback : bool
        On a compile / load / validation failure, run the CUDA engine (default) or raise
        :class:`~livedenoise.inference.engines.EngineUnavailable`.
    device, card
        As for the CUDA engine.
    """

    name = "tensorrt"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        ok, why = CudaEngine.available()
        if not ok:
            return False, why
        try:
            trt_v, tt_v = _trt_versions()
        except ImportError as exc:
            return False, f"{exc.name or 'torch-tensorrt'} is not installed: {INSTALL}"
        return True, f"TensorRT {trt_v}, torch-tensorrt {tt_v} on {why}"

    def __init__(
        self,
        model: Any = None,
        *,
        precision: str = "auto",
        cache_dir: Any = None,
        fallback: bool = True,
        device: str | None = None,
        card: Any = None,
    ) -> None:

        if precision not in ("auto", *PRECISIONS):
            raise ValueError(f"precision must be auto, fp16, bf16 or fp32, not {precision!r}")
        # the requested precision also governs the CUDA engine this falls back to
        super().__init__(model, precision=precision, device=device, cuda_graphs=False, max_batch=1, card=card)
        self.trt_precision = "fp16" if precision == "auto" else precision
        self.cache = EngineCache(cache_dir)
        self.fallback = bool(fallback)
        self.fallback_reason: str | None = None
        self.from_cache: bool | None = None
        self._trt: Any = None
        self.model_sha256 = model_sha256(self._module, self.card)

    def cache_key(self, shape: tuple[int, int]) -> Any:
        """The :class:`~livedenoise.inference.engines._cache.CacheKey` of this model at ``shape`` here."""
        import torch

        trt_v, tt_v = _trt_versions()
        if self._cuda:
            gpu, cap = torch.cuda.get_device_name(self.device), torch.cuda.get_device_capability(self.device)
        else:
            gpu, cap = "cpu", (0, 0)
        return CacheKey(
            self.model_sha256, (1, 1, *shape), self.trt_precision, trt_v, tt_v, gpu, cap, __version__
        )

    def prepare(self, shape: tuple[int, int]) -> None:
        """Load or compile the TensorRT engine for ``shape``; on failure, the CUDA engine."""
        h, w = (int(s) for s in shape)
        self._input_limit_e = float("inf")  # no range flag while validating
        if self.fallback_reason is None:
            try:
                self._prepare_trt((h, w))
            except Exception as exc:
                self._trt = None
                msg = (
                    f"TensorRT engine for {self.model_id} at {h}x{w} {self.trt_precision} failed: "
                    f"{type(exc).__name__}: {exc}"
                )
                if not self.fallback:
                    raise EngineUnavailable(msg + "; use --engine cuda") from exc
                log.error("%s; running the PyTorch CUDA engine instead (run with -vv for details)", msg)
                log.debug("TensorRT failure", exc_info=True)
                self.fallback_reason = msg
                self.name = "cuda"
                self.cuda_graphs = self._cuda
                self.max_batch = 4
        super().prepare((h, w))

    def _prepare_trt(self, shape: tuple[int, int]) -> None:
        import torch

        key = self.cache_key(shape)
        example = torch.zeros((1, 1, *shape), device=self.device)
        what = f"TensorRT {self.model_id} {shape[0]}x{shape[1]} {self.trt_precision}"

        def build(path: Path) -> None:
            log.info("%s: building (this takes minutes; the engine is cached in %s)", what, self.cache.root)
            t0 = time.monotonic()
            with _Heartbeat(what):
                compiled = _compile(self._module, example, self.trt_precision)
                _save(compiled, path, example)
            log.info("%s: built in %.0f s", what, time.monotonic() - t0)

        self._trt, self.from_cache = self.cache.load_or_build(key, build, _load, model=self.model_id)
        try:
            self._validate_trt(shape)
        except ValueError as exc:
            # never keep an entry that fails validation: it would be loaded again at every start
            self.cache.remove(key)
            if not self.from_cache:
                raise
            log.warning("%s: the cached engine fails validation (%s); removed, rebuilding", what, exc)
            self._trt, self.from_cache = self.cache.load_or_build(key, build, _load, model=self.model_id)
            try:
                self._validate_trt(shape)
            except ValueError:
                self.cache.remove(key)
                raise

    def _validate_trt(self, shape: tuple[int, int]) -> None:
        import torch

        frame = synthetic_frame(shape)
        self._validated_peak_e = float(frame.max())
        x = torch.from_numpy(frame).to(self.device).reshape(1, 1, *shape)
        with torch.inference_mode():
            ref = CudaEngine._forward(self, x, "fp32")[0].cpu().numpy()[0, 0]
            y, bad = self._forward(x, self.trt_precision)
        err = float("inf") if bool(bad.any()) else relative_error(y.cpu().numpy()[0, 0], ref)
        self.validation_error[f"tensorrt-{self.trt_precision}"] = err
        if not err <= TOLERANCE[self.trt_precision]:
            raise ValueError(
                f"compiled engine differs from fp32 PyTorch by {err:.2e} of the output range "
                f"(tolerance {TOLERANCE[self.trt_precision]:.0e})"
            )

    def _choose_precision(self, shape: tuple[int, int]) -> str:
        if self._trt is not None:
            return self.trt_precision  # validated by _validate_trt
        return super()._choose_precision(shape)

    def _forward(self, x: Any, precision: str) -> tuple[Any, Any]:
        if self._trt is None:
            return super()._forward(x, precision)
        y = self._trt(x.contiguous())
        return self._finish(x, (y[0] if isinstance(y, (tuple, list)) else y).float())

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["requested"] = "tensorrt"
        if self._trt is not None:
            d.update(
                backend="tensorrt",
                precision=self.trt_precision,
                from_cache=self.from_cache,
                cache=str(self.cache.root),
            )
            with contextlib.suppress(ImportError):
                d["tensorrt"], d["torch_tensorrt"] = _trt_versions()
        if self.fallback_reason:
            d["fallback_reason"] = self.fallback_reason
        return d

    def close(self) -> None:
        super().close()
        self._trt = None
