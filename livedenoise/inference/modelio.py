"""Model files: weights plus a model card, loaded without ever executing code.

A model is two files side by side:

- ``<id>.pt``: the network's state dict, written with ``torch.save`` and read back with
  ``torch.load(weights_only=True)`` (tensors only; no pickled code runs); stored in float32, or
  in float16 where the card says ``"weights_dtype": "float16"`` (half the file; loaded back into
  float32, so the network computes as before, on weights rounded to 11 significant bits);
- ``<id>.json``: the :class:`ModelCard` (schema ``{"livedenoise_model": 1, ...}``):
  architecture and constructor arguments, parameter count, task, units, how it was
  trained (data, loss, the exact command), measured quality and speed, and the
  SHA-256 of the weights file.

Models are found by id in ``$LIVEDENOISE_MODELS`` (folders separated by ``os.pathsep``)
and then in the shipped folder ``livedenoise.models.MODELS_DIR``, or by path.
:func:`resolve_model_request` is the confined form used for control requests: an id, or a
path inside the operator's model folders, nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from livedenoise.inference.nets import ARCHITECTURES, build_network
from livedenoise.models import MODELS_DIR
from livedenoise.util.atomic import atomic_path
from livedenoise.util.paths import PathError, check_path_text, confine

__all__ = [
    "DEFAULT_MODEL",
    "QUALITY_MODEL",
    "SCHEMA_VERSION",
    "ModelCard",
    "ModelError",
    "check_finite_output",
    "file_sha256",
    "list_models",
    "load_model",
    "model_dirs",
    "resolve_model",
    "resolve_model_request",
    "save_model",
]

log = logging.getLogger("livedenoise")

SCHEMA_VERSION = 1
WEIGHTS_DTYPES = ("float32", "float16")
DEFAULT_MODEL = "resunet-live-v8"
"""The fast live model, used when no model is named: RESUNET with a 4x pixel-unshuffle front end
(the U-Net runs on 1/16 of the pixels), ~24 ms per 512x512 frame on a 2-core Xeon with AMX in bf16,
~40-60 ms in fp32 on 2-core CPUs without it (its card, the README's Speed section). The earlier live
models (``resunet-live-v1``-``v7``, the RLNs ``rln-denoise-v1``/``-v2``) stay shipped and selectable."""
QUALITY_MODEL = "resunet-denoise-v7"
"""The quality model: ``livedenoise denoise`` uses it when asked, the daemon where it keeps up with the
camera (a GPU engine, or a small or slow frame on the CPU; see :mod:`livedenoise.app.modelchoice`)."""
UNITS = "photoelectrons"
TASKS = ("denoise", "deconvolve")


class ModelError(ValueError):
    """A model file that cannot be used (corrupt, another architecture, other units...)."""


@dataclass
class ModelCard:
    """What a model is, how it was made and how good it is (the JSON beside the weights)."""

    id: str
    architecture: str
    arch_params: dict[str, Any] = field(default_factory=dict)
    parameters: int = 0
    task: str = "denoise"
    units: str = UNITS
    training: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    sha256: str = ""
    description: str = ""
    weights_dtype: str = "float32"  # how the weights file stores them (WEIGHTS_DTYPES)
    path: str | None = field(default=None, compare=False)  # where it was read from; not stored

    def to_dict(self) -> dict[str, Any]:
        d = {"livedenoise_model": SCHEMA_VERSION}
        d.update({k: v for k, v in dataclasses.asdict(self).items() if k != "path"})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: str | None = None) -> ModelCard:
        where = f" in {path}" if path else ""
        if not isinstance(d, dict) or "livedenoise_model" not in d:
            raise ModelError(f"not a livedenoise model card{where}: the key 'livedenoise_model' is missing")
        if d["livedenoise_model"] != SCHEMA_VERSION:
            raise ModelError(
                f"model card{where} has schema version {d['livedenoise_model']!r}; this livedenoise reads "
                f"version {SCHEMA_VERSION}: upgrade livedenoise or re-export the model"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"path"}
        missing = {"id", "architecture"} - set(d)
        if missing:
            raise ModelError(f"model card{where} lacks {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names}, path=path)


def model_dirs(extra: tuple[str | os.PathLike[str], ...] | list[Any] = ()) -> list[Path]:
    """Folders searched for model ids: ``extra``, ``$LIVEDENOISE_MODELS`` entries, the shipped folder."""

    env = [Path(p) for p in os.environ.get("LIVEDENOISE_MODELS", "").split(os.pathsep) if p]
    return [*(Path(p) for p in extra), *env, Path(MODELS_DIR)]


def _weights_path(p: Path) -> Path:
    return p.with_suffix(".pt") if p.suffix in (".json", ".pt") else p


def _is_id(name: str) -> bool:
    """A bare model id (no folder part, no file suffix), as opposed to a path."""
    return (
        Path(name).suffix not in (".pt", ".json")
        and "/" not in name
        and os.sep not in name
        and name not in (".", "..")
    )


def resolve_model(
    name_or_path: str | os.PathLike[str] | None = None, *, extra_dirs: tuple[Any, ...] | list[Any] = ()
) -> Path:
    """The weights file (``.pt``) of a model id or path (``None``: :data:`DEFAULT_MODEL`).

    Ids are looked up in ``extra_dirs`` first, then in :func:`model_dirs`.
    """
    name = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    p = Path(name)
    if not _is_id(name) or p.exists():
        w = _weights_path(p)
        if not w.is_file():
            raise FileNotFoundError(
                f"model file {w} does not exist; `livedenoise models` lists the installed ones"
            )
        return w
    for d in model_dirs(extra_dirs):
        w = d / f"{name}.pt"
        if w.is_file():
            return w
    known = ", ".join(c.id for c in list_models(extra_dirs)) or "none"
    raise FileNotFoundError(
        f"no model {name!r} (installed: {known}); pass an id from `livedenoise models` or a .pt path"
    )


def resolve_model_request(name: object, model_folders: tuple[Any, ...] | list[Any] = ()) -> Path:
    """The weights file of a model named in a control request, confined to the model folders.

    The one place where a ``set_model`` request's ``model`` becomes a file. Allowed: ``None``
    (the default model), a model id found in ``model_folders`` (the daemon's ``--model-dir``
    options), ``$LIVEDENOISE_MODELS`` or the shipped models, or a path (``.pt``, ``.json`` or
    an exported ``.onnx``, relative to one of those folders or absolute) inside one of them. A path outside them
    is refused before anything is looked up, so the reply never reveals whether a file
    exists there; NUL bytes and other invalid text are refused too.

    Raises
    ------
    livedenoise.util.paths.PathError
        Invalid text, or a path outside the model folders.
    FileNotFoundError
        No such model inside the model folders (the message lists the installed ids).
    """
    text = DEFAULT_MODEL if name is None else check_path_text(name, "model")
    folders = model_dirs(tuple(model_folders))
    if _is_id(text):  # looked up in the folders only (never a file of that name in the working folder)
        for d in folders:
            w = d / f"{text}.pt"
            if w.is_file():
                return w
        known = ", ".join(c.id for c in list_models(tuple(model_folders))) or "none"
        raise FileNotFoundError(f"no model {text!r} (installed: {known}); give one of the installed ids")
    where = confine(text, folders, what="model", option="--model-dir")
    w = _weights_path(where)
    if w.suffix not in (".pt", ".onnx"):
        raise PathError(
            f"model {text!r} is not a .pt, .json or .onnx model file; give a model id or a model file path"
        )
    if not w.is_file():
        known = ", ".join(c.id for c in list_models(tuple(model_folders))) or "none"
        raise FileNotFoundError(f"no model file {text!r} in the model folders (installed: {known})")
    return w


def read_card(weights: Path) -> ModelCard:
    """Read and check the card beside ``weights``."""
    cpath = weights.with_suffix(".json")
    if not cpath.is_file():
        raise ModelError(f"model {weights} has no card {cpath.name} beside it; a model needs both files")
    try:
        d = json.loads(cpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"model card {cpath} is not valid JSON ({exc}); restore it from the original model"
        ) from exc
    return ModelCard.from_dict(d, str(weights))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks: what a card's ``sha256`` names."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_card(card: ModelCard) -> None:

    if card.architecture not in ARCHITECTURES:
        raise ModelError(
            f"model {card.id!r} is a {card.architecture!r} network; this livedenoise runs {', '.join(ARCHITECTURES)}"
        )
    if card.units != UNITS:
        raise ModelError(
            f"model {card.id!r} was trained on {card.units!r}; livedenoise needs models trained on {UNITS} "
            "(retrain with `livedenoise train`)"
        )
    if card.task not in TASKS:
        raise ModelError(f"model {card.id!r} has task {card.task!r}; expected one of {TASKS}")
    if card.weights_dtype not in WEIGHTS_DTYPES:
        raise ModelError(
            f"model {card.id!r} stores its weights as {card.weights_dtype!r}; this livedenoise reads "
            f"{' or '.join(WEIGHTS_DTYPES)} (upgrade livedenoise)"
        )


_BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


def _ints(value: Any) -> list[int]:
    """Every integer in an arch_params value (lists and dicts searched; bools are not integers)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [len(value), *(i for v in value for i in _ints(v))]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    return []


def _check_declared_size(card: ModelCard, state: dict[str, Any], weights: Path) -> None:
    """Refuse a card whose declared sizes cannot be those of ``state`` (nothing is built)."""
    values = sum(int(v.numel()) for v in state.values())
    params = sum(int(v.numel()) for k, v in state.items() if not k.endswith(_BUFFER_SUFFIXES))
    if card.parameters and int(card.parameters) != params:
        raise ModelError(
            f"model card of {weights} declares {card.parameters} parameters but the weights hold {params}; "
            "the card and the weights do not fit (they belong to different models)"
        )
    too_big = [i for i in _ints(card.arch_params) if i > values]
    if too_big:
        raise ModelError(
            f"model card of {weights} declares sizes up to {max(too_big)} in arch_params, more than the "
            f"{values} values its weights hold; the card and the weights do not fit (different models)"
        )


class _TooLarge(Exception):
    pass


def _build(card: ModelCard, weights: Path, device: Any, *, budget: dict[str, Any]):
    """``build_network`` from the card, on ``device`` (``meta``: shapes only, no memory).

    Registration hooks stop the build as soon as it grows past what the weights can fill
    (more parameter values than stored, or far more modules than stored tensors), so a
    card that declares a huge network is refused in milliseconds.
    """
    import contextlib
    import threading

    import torch
    from torch.nn.modules import module as nn_module

    me = threading.get_ident()
    max_values = sum(int(v.numel()) for v in budget.values())
    max_modules = 8 * len(budget) + 64
    count = {"values": 0, "modules": 0}

    def on_param(mod: Any, name: str, param: Any) -> None:
        if threading.get_ident() == me and param is not None:
            count["values"] += int(param.numel())
            if count["values"] > max_values:
                raise _TooLarge(f"more than the {max_values} parameter values its weights hold")

    def on_module(mod: Any, name: str, sub: Any) -> None:
        if threading.get_ident() == me:
            count["modules"] += 1
            if count["modules"] > max_modules:
                raise _TooLarge(
                    f"more than {max_modules} layers for the {len(budget)} tensors of its weights"
                )

    handles = [
        nn_module.register_module_parameter_registration_hook(on_param),
        nn_module.register_module_module_registration_hook(on_module),
    ]
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return build_network(card.architecture, **card.arch_params)
    except _TooLarge as exc:
        raise ModelError(
            f"model card of {weights} declares a {card.architecture} network with {exc}; "
            "the card and the weights do not fit (they belong to different models)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"model card of {weights} has arch_params {card.arch_params} that do not build a "
            f"{card.architecture} network ({exc})"
        ) from exc
    finally:
        for h in handles:
            h.remove()


def _probe_frames() -> Any:
    """Two small synthetic photoelectron frames (blobs on a background, Poisson noise; fixed seed)."""
    import numpy as np

    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[:64, :64].astype(np.float32)
    frames = []
    for peak in (5.0, 300.0):
        img = np.full((64, 64), 2.0, np.float32)
        for _ in range(6):
            cy, cx, s = rng.uniform(8, 56), rng.uniform(8, 56), rng.uniform(1.5, 4.0)
            img += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).astype(np.float32)
        frames.append(rng.poisson(img).astype(np.float32) + rng.normal(0, 1.5, img.shape).astype(np.float32))
    return np.stack(frames)[:, None]


def check_finite_output(module: Any, model_id: str) -> None:
    """Raise :class:`ModelError` unless ``module`` (CPU, eval) gives finite output on synthetic frames."""
    import torch

    x = torch.from_numpy(_probe_frames())
    try:
        with torch.inference_mode():
            y = module(x)
    except Exception as exc:
        raise ModelError(
            f"model {model_id!r} fails on a synthetic 64x64 frame ({type(exc).__name__}: {exc})"
        ) from exc
    if not bool(torch.isfinite(y).all()):
        raise ModelError(
            f"model {model_id!r} gives NaN or Inf on synthetic 64x64 frames (5 and 300 e- peaks); "
            "it is refused: retrain it or restore the original file"
        )


def load_model(name_or_path: str | os.PathLike[str] | None = None, *, map_location: str = "cpu"):
    """Load a model: ``(torch.nn.Module in eval mode, ModelCard)``.

    Parameters
    ----------
    name_or_path : str or path, optional
        Model id (``livedenoise models``) or ``.pt`` / ``.json`` path; ``None`` loads
        :data:`DEFAULT_MODEL`.
    map_location : str
        Device for the weights.

    Raises
    ------
    FileNotFoundError
        No such model.
    ModelError
        Corrupt or tampered file (checksum), unknown architecture, other units, weights
        that do not fit the architecture in the card (checked on a shape-only skeleton
        before the network is built), NaN/Inf weights, or a network whose output on
        synthetic frames is not finite.
    """
    import torch

    weights = resolve_model(name_or_path)
    card = read_card(weights)
    _check_card(card)
    digest = file_sha256(weights)
    if card.sha256 and digest != card.sha256:
        raise ModelError(
            f"model file {weights} is corrupt or was changed: its SHA-256 is {digest[:12]}..., the card says "
            f"{card.sha256[:12]}...; restore the original file"
        )
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelError(
            f"model file {weights} cannot be read as weights ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model file {weights} does not hold a state dict of tensors")
    stored = {str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()}
    if stored and stored != {card.weights_dtype}:
        raise ModelError(
            f"model file {weights} holds {'/'.join(sorted(stored))} weights, but its card says "
            f"{card.weights_dtype!r}: the card and the weights belong to different saves; restore the "
            "original files (or save the model again with livedenoise.inference.modelio.save_model)"
        )
    # weights stored in float16 (the card's weights_dtype) compute in float32, as trained
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise ModelError(
            f"model file {weights} holds NaN or Inf weights (in {', '.join(nonfinite[:3])}); "
            "the model is damaged: retrain it or restore the original file"
        )
    # the card's declared sizes against the weights, before anything is built
    _check_declared_size(card, state, weights)
    skeleton = _build(card, weights, torch.device("meta"), budget=state)
    expected = skeleton.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or extra or wrong:
        detail = "; ".join(
            s
            for s in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {extra[:3]}" if extra else "",
                f"shape differs for {wrong[:3]}" if wrong else "",
            )
            if s
        )
        raise ModelError(
            f"weights in {weights} do not fit a {card.architecture} network with {card.arch_params} ({detail}); "
            "the card and the weights belong to different models"
        )
    module = _build(card, weights, None, budget=state)
    module.load_state_dict(state)
    module.eval()
    check_finite_output(module, card.id)
    module.to(map_location)
    if not card.path:
        card.path = str(weights)
    return module, card


def save_model(
    module, card: ModelCard, path: str | os.PathLike[str], *, weights_dtype: str = "float32"
) -> ModelCard:
    """Write ``<path>.pt`` (state dict) and ``<path>.json`` (card) atomically; returns the card as saved.

    The card's ``sha256``, ``parameters``, ``units``, ``weights_dtype`` and (if empty) ``created``
    are filled in. ``weights_dtype="float16"`` stores the floating-point weights in half precision
    (half the file; refused if a weight does not fit float16's range).
    """
    import torch

    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {weights_dtype!r}")
    weights = _weights_path(Path(path))
    if weights.suffix != ".pt":
        weights = weights.with_name(weights.name + ".pt")
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    if weights_dtype == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        too_big = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if too_big:
            raise ModelError(
                f"weights {', '.join(too_big[:3])} exceed float16's range (65504); save them as float32"
            )
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    card = dataclasses.replace(
        card,
        weights_dtype=weights_dtype,
        sha256=hashlib.sha256(data).hexdigest(),
        parameters=int(sum(p.numel() for p in module.parameters())),
        units=UNITS,
        created=card.created or datetime.now(UTC).isoformat(timespec="seconds"),
        path=str(weights),
    )
    _check_card(card)
    card_text = json.dumps(card.to_dict(), indent=2) + "\n"
    with atomic_path(weights, "model weights", need_bytes=len(data) + len(card_text)) as tmp:
        tmp.write_bytes(data)  # the user's umask applies (atomic_path)
    try:
        with atomic_path(weights.with_suffix(".json"), "model card") as tmp:
            tmp.write_text(card_text, encoding="utf-8")
    except BaseException:
        weights.unlink(missing_ok=True)  # no weights without their card
        raise
    log.info("saved model %s (%d parameters) to %s", card.id, card.parameters, weights)
    return card


def list_models(extra_dirs: tuple[Any, ...] | list[Any] = ()) -> list[ModelCard]:
    """Cards of every model found in :func:`model_dirs` (first folder wins for a repeated id)."""
    seen: dict[str, ModelCard] = {}
    for d in model_dirs(extra_dirs):
        if not d.is_dir():
            continue
        for cpath in sorted(d.glob("*.json")):
            w = cpath.with_suffix(".pt")
            if not w.is_file():
                continue
            try:
                card = read_card(w)
            except ModelError as exc:
                log.warning("skipping %s: %s", cpath, exc)
                continue
            seen.setdefault(card.id, card)
    return list(seen.values())
