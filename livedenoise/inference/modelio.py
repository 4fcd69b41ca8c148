"""Model files: weights plus a model card, loaded without ever executing code.

A model is two files side by side:

- ``<id>.pt``: the network's state dict, written with ``torch.save`` and read back with
  ``torch.load(weights_only=True)`` (tensors only; no pickled code runs);
- ``<id>.json``: the :class:`ModelCard` (schema ``{"livedenoise_model": 1, ...}``):
  architecture and constructor arguments, parameter count, task, units, how it was
  trained (data, loss, the exact command), measured quality and speed, and the
  SHA-256 of the weights file.

Models are found by id in ``$LIVEDENOISE_MODELS`` (folders separated by ``os.pathsep``)
and then in the shipped folder ``livedenoise.models.MODELS_DIR``, or by path.
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

__all__ = [
    "DEFAULT_MODEL",
    "SCHEMA_VERSION",
    "ModelCard",
    "ModelError",
    "list_models",
    "load_model",
    "model_dirs",
    "resolve_model",
    "save_model",
]

log = logging.getLogger("livedenoise")

SCHEMA_VERSION = 1
DEFAULT_MODEL = "rln-denoise-v2"
"""The fast RLN used by the live pipeline when no model is named (ReLU variant: ~28 ms per
512x512 frame in bf16 on a 2-core CPU; ``rln-denoise-v1``, all softplus, ~45 ms, ~0.25 dB better)."""
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


def model_dirs() -> list[Path]:
    """Folders searched for model ids: ``$LIVEDENOISE_MODELS`` entries, then the shipped folder."""

    extra = [Path(p) for p in os.environ.get("LIVEDENOISE_MODELS", "").split(os.pathsep) if p]
    return [*extra, Path(MODELS_DIR)]


def _weights_path(p: Path) -> Path:
    return p.with_suffix(".pt") if p.suffix in (".json", ".pt") else p


def resolve_model(name_or_path: str | os.PathLike[str] | None = None) -> Path:
    """The weights file (``.pt``) of a model id or path (``None``: :data:`DEFAULT_MODEL`)."""
    name = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path)
    p = Path(name)
    if p.suffix in (".pt", ".json") or os.sep in name or p.exists():
        w = _weights_path(p)
        if not w.is_file():
            raise FileNotFoundError(
                f"model file {w} does not exist; `livedenoise models` lists the installed ones"
            )
        return w
    for d in model_dirs():
        w = d / f"{name}.pt"
        if w.is_file():
            return w
    known = ", ".join(c.id for c in list_models()) or "none"
    raise FileNotFoundError(
        f"no model {name!r} (installed: {known}); pass an id from `livedenoise models` or a .pt path"
    )


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


def _sha256(path: Path) -> str:
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
        Corrupt or tampered file (checksum), unknown architecture, other units, or
        weights that do not fit the architecture in the card.
    """
    import torch

    weights = resolve_model(name_or_path)
    card = read_card(weights)
    _check_card(card)
    digest = _sha256(weights)
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
    module = build_network(card.architecture, **card.arch_params)
    expected = module.state_dict()
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
    module.load_state_dict(state)
    module.to(map_location).eval()
    if not card.path:
        card.path = str(weights)
    return module, card


def save_model(module, card: ModelCard, path: str | os.PathLike[str]) -> ModelCard:
    """Write ``<path>.pt`` (state dict) and ``<path>.json`` (card) atomically; returns the card as saved.

    The card's ``sha256``, ``parameters``, ``units`` and (if empty) ``created`` are filled in.
    """
    import torch

    weights = _weights_path(Path(path))
    if weights.suffix != ".pt":
        weights = weights.with_name(weights.name + ".pt")
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, buf)
    data = buf.getvalue()
    card = dataclasses.replace(
        card,
        sha256=hashlib.sha256(data).hexdigest(),
        parameters=int(sum(p.numel() for p in module.parameters())),
        units=UNITS,
        created=card.created or datetime.now(UTC).isoformat(timespec="seconds"),
        path=str(weights),
    )
    _check_card(card)
    with atomic_path(weights, "model weights") as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)  # readable like any installed file (the temporary file starts private)
    try:
        with atomic_path(weights.with_suffix(".json"), "model card") as tmp:
            tmp.write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
            os.chmod(tmp, 0o644)
    except BaseException:
        weights.unlink(missing_ok=True)  # no weights without their card
        raise
    log.info("saved model %s (%d parameters) to %s", card.id, card.parameters, weights)
    return card


def list_models() -> list[ModelCard]:
    """Cards of every model found in :func:`model_dirs` (first folder wins for a repeated id)."""
    seen: dict[str, ModelCard] = {}
    for d in model_dirs():
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
