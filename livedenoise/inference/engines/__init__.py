"""Restoration engines: one protocol, several backends.

A backend is a class registered in ``BACKENDS`` (module path, loaded lazily so that
``import livedenoise.inference.engines`` costs nothing). ``make_engine("auto", ...)`` picks the
fastest backend that is available here and says which and why.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "BACKENDS",
    "Engine",
    "EngineUnavailable",
    "PassthroughEngine",
    "available_backends",
    "make_engine",
]

log = logging.getLogger("livedenoise")


class EngineUnavailable(RuntimeError):
    """The backend cannot run here (missing package, no GPU, ...); the message says why."""


@runtime_checkable
class Engine(Protocol):
    """What the pipeline, ``denoise`` and ``bench`` need from a backend.

    Contract
    --------
    - ``prepare(shape)`` is called before the first frame and whenever the frame
      shape changes (ROI change); it may allocate, compile or warm up.
    - ``restore(frame_e, out)``: ``frame_e`` is a C-contiguous float32 ``(H, W)``
      array of photoelectrons (it may hold small negatives from read noise); the
      engine writes the estimate of the noise-free expected photoelectrons (>= 0,
      finite) into the preallocated float32 ``out`` of the same shape and returns it.
      It must not keep a reference to either array after returning. It raises on
      failure; the caller counts the frame as dropped.
    - ``describe()`` returns a JSON-able dict (backend, device, precision, model...).
    """

    name: str
    model_id: str | None

    def prepare(self, shape: tuple[int, int]) -> None: ...

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class PassthroughEngine:
    """Copies photoelectrons through unchanged (clipped at 0): plumbing tests and benchmarks."""

    name = "passthrough"
    model_id: str | None = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, "always available"

    def __init__(self, model: str | None = None, **_: Any) -> None:
        if model not in (None, "none", "passthrough"):
            raise ValueError("the passthrough engine runs no model; drop --model or choose another --engine")

    def prepare(self, shape: tuple[int, int]) -> None:
        pass

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.maximum(frame_e, 0.0, out=out)
        return out

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "model": None, "precision": "float32"}

    def close(self) -> None:
        pass


# name -> "module:Class"; each class has ``available() -> (bool, reason)`` and
# ``__init__(model=..., **options)``.
BACKENDS: dict[str, str] = {
    "passthrough": "livedenoise.inference.engines:PassthroughEngine",
    "cpu": "livedenoise.inference.engines.torch_cpu:TorchCPUEngine",
    "onnxruntime": "livedenoise.inference.engines.onnx:OnnxRuntimeEngine",
    "cuda": "livedenoise.inference.engines.torch_cuda:TorchCUDAEngine",
    "tensorrt": "livedenoise.inference.engines.tensorrt:TensorRTEngine",
}

# ``auto`` tries these in order
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


def _backend_class(name: str) -> Any:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of: auto, {', '.join(BACKENDS)}") from None
    module, _, cls = target.partition(":")
    try:
        return getattr(import_module(module), cls)
    except ImportError as exc:
        raise EngineUnavailable(f"engine {name!r} cannot load: {exc}") from exc


def available_backends() -> dict[str, tuple[bool, str]]:
    """``{name: (available, reason)}`` for every registered backend."""
    out: dict[str, tuple[bool, str]] = {}
    for name in BACKENDS:
        try:
            out[name] = _backend_class(name).available()
        except EngineUnavailable as exc:
            out[name] = (False, str(exc))
    return out


def make_engine(kind: str = "auto", model: str | None = None, **options: Any) -> Engine:
    """Create an engine.

    Parameters
    ----------
    kind : str
        ``auto`` or a name in ``BACKENDS``.
    model : str, optional
        A model id from ``livedenoise models`` or a path to a model file.
    **options
        Backend options (precision, threads, cache folder, ...).
    """
    if kind == "auto":
        reasons = []
        for name in AUTO_ORDER:
            try:
                ok, why = _backend_class(name).available()
            except EngineUnavailable as exc:
                ok, why = False, str(exc)
            if ok:
                try:
                    engine = _backend_class(name)(model=model, **options)
                except EngineUnavailable as exc:
                    reasons.append(f"{name}: {exc}")
                    continue
                log.info("engine auto -> %s (%s)", name, why)
                return engine
            reasons.append(f"{name}: {why}")
        raise EngineUnavailable("no engine could run: " + "; ".join(reasons))
    cls = _backend_class(kind)
    ok, why = cls.available()
    if not ok:
        raise EngineUnavailable(f"engine {kind!r} is not available here: {why}")
    return cls(model=model, **options)
