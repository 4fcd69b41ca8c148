"""ONNX export of the restoration networks, and an engine that runs them with onnxruntime.

The exported graph is the one TensorRT (``trtexec --onnx``, onnxruntime's TensorRT provider)
builds from, so checking it here against the PyTorch CPU output checks the GPU path's input.

Graph contract: input ``x``, output ``y``, both float32 ``(N, 1, H, W)`` photoelectrons;
``N``, ``H`` and ``W`` are dynamic unless a fixed ``shape`` was asked for. The model card is
stored as JSON in the ONNX ``metadata_props`` (key ``livedenoise.model_card``), beside the
model id, the units and the livedenoise version.

Exporter: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). The
torch.export-based one (``dynamo=True``, the default since torch 2.9) needs the ``onnxscript``
package, which is not a dependency of livedenoise; the TorchScript exporter needs nothing but
torch and gives the same operators for these convolutional networks (checked by
``tests/test_onnx.py`` against PyTorch at odd frame sizes).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise import __version__
from livedenoise.inference.engines import EngineUnavailable
from livedenoise.inference.modelio import load_model
from livedenoise.util.atomic import atomic_path, check_writable_dir

__all__ = ["DEFAULT_OPSET", "OnnxRuntimeEngine", "export_module_onnx", "export_onnx", "read_onnx_metadata"]

log = logging.getLogger("livedenoise")

# opset 17 is read by TensorRT >= 8.6 and every onnxruntime >= 1.14
DEFAULT_OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "y"
META_PREFIX = "livedenoise."

# onnxruntime provider names by short name; "tensorrt" only when asked for: it builds its own
# engines at the first run of every new shape (minutes) with no cache configured here.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DEFAULT_PROVIDER_ORDER = ("cuda", "cpu")


def _card_dict(card: Any) -> dict[str, Any]:
    if card is None:
        return {}
    if isinstance(card, dict):
        return dict(card)
    to_dict = getattr(card, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if dataclasses.is_dataclass(card) and not isinstance(card, type):
        return dataclasses.asdict(card)
    raise TypeError(f"model card must be a ModelCard or a dict, not {type(card).__name__}")


def _check_shape(shape: Any) -> tuple[int, int] | None:
    if shape is None:
        return None
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (H, W) or None for dynamic H and W, not {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {h}x{w}")
    return h, w


def export_module_onnx(
    module: Any,
    out_path: str | os.PathLike[str] | None,
    *,
    shape: tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    card: Any = None,
) -> bytes:
    """Export a network (``(N, 1, H, W)`` float32 in and out) to ONNX.

    Parameters
    ----------
    module : torch.nn.Module
        The network; it is exported in eval mode, float32, on the CPU (a copy is not made:
        the module is put in eval mode).
    out_path : path or None
        Where to write the ``.onnx`` file (atomically: complete or not at all). ``None``
        writes nothing; the bytes are returned either way.
    shape : (H, W), optional
        A fixed frame shape (batch 1). ``None``: dynamic ``N``, ``H`` and ``W``.
    opset : int
        ONNX opset version.
    card : ModelCard or dict, optional
        Stored as JSON in the graph's metadata.

    Returns
    -------
    bytes
        The serialised ONNX model.
    """
    import onnx
    import torch

    hw = _check_shape(shape)
    if out_path is not None:  # fail before the export, not after it
        check_writable_dir(Path(out_path).parent if str(Path(out_path).parent) else Path("."), "ONNX model")
    module = module.eval().float().cpu()
    # trace at a size that is not a multiple of the networks' internal padding, so the
    # padding path is in the graph
    dummy = torch.rand((1, 1, *(hw or (67, 93))), dtype=torch.float32) * 50.0
    dynamic_axes = None
    if hw is None:
        dynamic_axes = {INPUT_NAME: {0: "N", 2: "H", 3: "W"}, OUTPUT_NAME: {0: "N", 2: "H", 3: "W"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter announces its own deprecation (torch >= 2.9) with these two
        # DeprecationWarnings. The replacement needs onnxscript, which livedenoise does not
        # depend on (see the module docstring); silence exactly these two messages, nothing else.
        warnings.filterwarnings(
            "ignore",
            message=r"You are using the legacy TorchScript-based ONNX export",
            category=DeprecationWarning,
        )
        warnings.filterwarnings(
            "ignore",
            message=r"The feature will be removed\. Please remove usage of this function",
            category=DeprecationWarning,
        )
        # The networks' input check and their pad-to-multiple branch turn traced sizes into
        # Python booleans; the tracer warns that those branches are frozen. They are frozen the
        # right way because the dummy input needs padding (the pad amounts themselves stay
        # dynamic); tests/test_onnx.py checks sizes that need padding and sizes that do not.
        warnings.filterwarnings(
            "ignore",
            message=r"Converting a tensor to a Python boolean might cause the trace",
            category=torch.jit.TracerWarning,
        )
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(
                module,
                (dummy,),
                buf,  # type: ignore[arg-type]  # torch writes to any binary file object
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=int(opset),
                do_constant_folding=True,
            )
    proto = onnx.load_from_string(buf.getvalue())
    card_d = _card_dict(card)
    meta = {
        "model_card": json.dumps(card_d, sort_keys=True, default=str),
        "model_id": str(card_d.get("id", "")),
        "architecture": str(card_d.get("architecture", "")),
        "units": "photoelectrons",
        "input": f"{INPUT_NAME}: float32 (N, 1, H, W) photoelectrons",
        "output": f"{OUTPUT_NAME}: float32 (N, 1, H, W) expected photoelectrons (>= 0)",
        "shape": "dynamic" if hw is None else f"{hw[0]}x{hw[1]}",
        "version": __version__,
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + k, v
    proto.producer_name = "livedenoise"
    proto.producer_version = __version__
    proto.doc_string = f"livedenoise restoration network {meta['model_id'] or '(unnamed)'}"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if out_path is not None:
        with atomic_path(out_path, "ONNX model") as tmp:
            tmp.write_bytes(data)
        log.info("wrote %s (%d bytes, opset %d, shape %s)", out_path, len(data), opset, meta["shape"])
    return data


def export_onnx(
    model: str | os.PathLike[str] | None,
    out_path: str | os.PathLike[str],
    *,
    shape: tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a shipped or saved model to an ONNX file.

    Parameters
    ----------
    model : str or path or None
        A model id (``livedenoise models``) or a model file; ``None`` = the default model.
    out_path : path
        The ``.onnx`` file to write (atomically).
    shape : (H, W), optional
        Fixed frame shape; ``None`` (default) keeps ``H`` and ``W`` dynamic.
    opset : int
        ONNX opset version (default 17).

    Returns
    -------
    Path
        ``out_path``.

    Examples
    --------
    >>> export_onnx("rln-denoise-v1", "rln.onnx", shape=(512, 512))  # doctest: +SKIP
    """

    module, card = load_model(model, map_location="cpu")
    export_module_onnx(module, out_path, shape=shape, opset=opset, card=card)
    return Path(out_path)


def read_onnx_metadata(source: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """The livedenoise metadata of an exported graph (``model_card`` decoded from JSON)."""
    import onnx

    proto = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(os.fspath(source))
    meta: dict[str, Any] = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(META_PREFIX):
            meta[entry.key[len(META_PREFIX) :]] = entry.value
    if "model_card" in meta:
        meta["model_card"] = json.loads(meta["model_card"])
    return meta


class OnnxRuntimeEngine:
    """The Engine protocol over onnxruntime (CPU here; the CUDA provider where installed).

    Parameters
    ----------
    model : str or path, optional
        A model id or model file (exported in memory, dynamic shape), or an ``.onnx`` file
        written by :func:`export_onnx`. ``None`` = the default model.
    providers : sequence of str, optional
        Short names (``"cuda"``, ``"cpu"``, ``"tensorrt"``) or onnxruntime provider names,
        in order of preference; default: CUDA if present, then CPU.
    threads : int, optional
        Intra-op threads for the CPU provider (default: onnxruntime's choice).
    """

    name = "onnxruntime"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import onnx  # noqa: F401
            import onnxruntime as ort
        except ImportError as exc:
            return False, f'{exc.name or exc} is not installed; pip install -e ".[onnx]"'
        present = [p for p in ort.get_available_providers() if p in PROVIDERS.values()]
        return True, f"onnxruntime {ort.__version__} with {', '.join(present)}"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        providers: Any = None,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        if options:
            raise TypeError(
                f"unknown onnxruntime engine option(s): {', '.join(sorted(options))}; "
                "expected providers=, threads="
            )
        ok, why = self.available()
        if not ok:
            raise EngineUnavailable(why)
        import onnxruntime as ort

        if model is not None and str(model).endswith(".onnx"):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(
                    f"ONNX model {path} does not exist; write it with `livedenoise export`"
                )
            data = path.read_bytes()
        else:
            module, card = load_model(model, map_location="cpu")
            data = export_module_onnx(module, None, card=card)
        meta = read_onnx_metadata(data)
        if meta.get("units") != "photoelectrons":
            raise ValueError(
                f"{model} is not a livedenoise export (no livedenoise metadata); "
                "export it with `livedenoise export --format onnx`"
            )
        self.model_id: str | None = meta.get("model_id") or None
        self._fixed_shape = (
            None
            if meta.get("shape", "dynamic") == "dynamic"
            else tuple(int(s) for s in meta["shape"].split("x"))
        )
        self.providers = self._resolve_providers(providers, ort.get_available_providers())
        so = ort.SessionOptions()
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            so.intra_op_num_threads = int(threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(data, sess_options=so, providers=self.providers)
        self._binding = self._session.io_binding()
        self._shape: tuple[int, int] | None = None
        self._threads = threads
        self._ort_version = ort.__version__

    @staticmethod
    def _resolve_providers(providers: Any, present: list[str]) -> list[str]:
        wanted = list(providers) if providers is not None else list(DEFAULT_PROVIDER_ORDER)
        out = []
        for p in wanted:
            full = PROVIDERS.get(p, p)
            if full not in PROVIDERS.values():
                raise ValueError(f"unknown onnxruntime provider {p!r}; choose from {', '.join(PROVIDERS)}")
            if full in present:
                out.append(full)
            elif providers is not None:
                log.warning("onnxruntime provider %s is not installed here; skipping it", full)
        if not out:
            raise ValueError(f"none of the providers {wanted} is present (onnxruntime has {present})")
        return out

    def prepare(self, shape: tuple[int, int]) -> None:
        """Check the shape against a fixed-shape export and warm the session up once."""
        h, w = (int(s) for s in shape)
        if self._fixed_shape is not None and (h, w) != self._fixed_shape:
            fh, fw = self._fixed_shape
            raise ValueError(
                f"this ONNX model was exported for {fh}x{fw} frames but the frames are {h}x{w}; "
                "export it again without --shape (dynamic) or with this shape"
            )
        self._shape = (h, w)
        warm = np.zeros((h, w), np.float32)
        self.restore(warm, np.empty_like(warm))

    def restore(self, frame_e: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Restore one frame into ``out`` (onnxruntime writes straight into it)."""
        if self._shape is None:
            raise RuntimeError("call prepare(shape) before restore()")
        if frame_e.shape != self._shape or out.shape != self._shape:
            raise ValueError(
                f"frame {frame_e.shape} / out {out.shape} do not match the prepared shape "
                f"{self._shape}; call prepare() with the new shape first"
            )
        if out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous float32 array")
        x = np.ascontiguousarray(frame_e, dtype=np.float32).reshape(1, 1, *self._shape)
        y = out.reshape(1, 1, *self._shape)
        io_ = self._binding
        try:
            io_.bind_cpu_input(INPUT_NAME, x)
            io_.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
            self._session.run_with_iobinding(io_)
        finally:
            io_.clear_binding_inputs()
            io_.clear_binding_outputs()
        if not np.isfinite(out).all():
            raise FloatingPointError(
                f"onnxruntime produced non-finite values for model {self.model_id}; frame not restored"
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": "cuda"
            if "CUDAExecutionProvider" in self.providers[:1]
            or "TensorrtExecutionProvider" in self.providers[:1]
            else "cpu",
            "providers": list(self.providers),
            "model": self.model_id,
            "precision": "float32",
            "threads": self._threads,
            "onnxruntime": self._ort_version,
            "shape": list(self._shape) if self._shape else None,
        }

    def close(self) -> None:
        self._session = None
        self._binding = None
        self._shape = None
