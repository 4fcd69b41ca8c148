"""Learn the sample from its noisy frames alone (self-supervised adaptation).

livedenoise knows its noise: Poisson shot noise of the expected photoelectrons plus per-pixel
read noise, after the calibration. Two noisy views of the same expected image are therefore a
training pair for the Poisson loss with ratio 1 (Noise2Noise: the expected loss is minimised by
the expected image, whatever the noise), and no clean target is ever needed:

- ``temporal``: consecutive frames of a static or slowly moving field (frame ``t`` is the input,
  frame ``t + 1`` the target), the idea behind DeepCAD-RT. Needs a time series; the strongest
  when the field holds still between frames.
- ``neighbor``: Neighbor2Neighbor sub-sampling of single frames: in every 2×2 cell two different
  pixels go to two half-size images, whose expectations differ only by the sub-pixel shift.
  Works on a single frame of a moving sample; the network learns at half scale.

``auto`` picks ``temporal`` for time series of at least :data:`MIN_FRAMES` frames, else
``neighbor``. Training is the fine-tuning loop of :mod:`livedenoise.training.finetune`
(:func:`~livedenoise.training.finetune.fit_pairs`): held-out frames (the last ``val_fraction``
of the series, never trained on) give the self-supervised validation measure, the Poisson
deviance of one view under the restoration of the other, with early stopping. The model card
records the method, the frames used and the measured change.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.calibration.maps import Calibration, PhotonConverter
from livedenoise.inference.modelio import load_model, save_model
from livedenoise.training.finetune import FinetuneConfig, LoadedPair, derived_card, evaluate_pairs, fit_pairs

__all__ = ["METHODS", "MIN_FRAMES", "SelfSupConfig", "adapt", "frames_to_e", "make_pairs", "read_frames"]

log = logging.getLogger("livedenoise")

METHODS = ("auto", "temporal", "neighbor")
MIN_FRAMES = 4
"""Fewest frames a temporal adaptation takes (at least 2 to train on and 1 pair held out)."""


@dataclass(frozen=True)
class SelfSupConfig:
    """Settings of a self-supervised adaptation (the fine-tuning ones, plus the method)."""

    method: str = "auto"
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(steps=300, patience=4))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")


def frames_to_e(frames_adu: np.ndarray, calibration: Calibration) -> np.ndarray:
    """``(T, H, W)`` uint16 ADU frames to float32 photoelectrons with the calibration's maps.

    Raises
    ------
    ValueError
        Frames that are not uint16 ``(H, W)`` or ``(T, H, W)``, or of a size the calibration
        does not have (crop it to the ROI first: :meth:`Calibration.for_roi`).
    """
    frames_adu = np.asarray(frames_adu)
    if frames_adu.ndim == 2:
        frames_adu = frames_adu[None]
    if frames_adu.ndim != 3 or frames_adu.dtype != np.uint16:
        raise ValueError(
            f"self-supervised training takes uint16 frames (H, W) or (T, H, W), got {frames_adu.dtype} "
            f"{frames_adu.shape}: pass the camera's raw frames, not restored or rescaled ones"
        )
    if frames_adu.shape[1:] != calibration.shape:
        raise ValueError(
            f"the frames are {frames_adu.shape[2]}×{frames_adu.shape[1]} but the calibration is "
            f"{calibration.shape[1]}×{calibration.shape[0]}: use the calibration of this ROI "
            "(or crop the full-sensor one to the ROI the frames were taken with)"
        )
    conv = PhotonConverter(calibration)
    return np.stack([conv.convert(f) for f in frames_adu]).astype(np.float32, copy=False)


def _neighbor_views(frame: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two half-size images from two different random pixels of every 2×2 cell."""
    h, w = (frame.shape[0] // 2) * 2, (frame.shape[1] // 2) * 2
    cells = frame[:h, :w].reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(h // 2, w // 2, 4)
    first = rng.integers(0, 4, size=cells.shape[:2])
    second = (first + rng.integers(1, 4, size=cells.shape[:2])) % 4  # always another pixel
    a = np.take_along_axis(cells, first[..., None], axis=2)[..., 0]
    b = np.take_along_axis(cells, second[..., None], axis=2)[..., 0]
    return np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)


def make_pairs(frames_e: np.ndarray, method: str, rng: np.random.Generator) -> list[LoadedPair]:
    """Training pairs (input, target, ratio 1) from photoelectron frames by ``method``."""
    if method == "temporal":
        return [
            LoadedPair(i, frames_e[i][None], np.ascontiguousarray(frames_e[i + 1]), 1.0)
            for i in range(len(frames_e) - 1)
        ]
    if method == "neighbor":
        out = []
        for i, f in enumerate(frames_e):
            a, b = _neighbor_views(f, rng)
            out.append(LoadedPair(i, a[None], b, 1.0))
        return out
    raise ValueError(f"method must be temporal or neighbor, got {method!r}")


def _choose(method: str, n_frames: int) -> str:
    if method == "auto":
        return "temporal" if n_frames >= MIN_FRAMES else "neighbor"
    if method == "temporal" and n_frames < MIN_FRAMES:
        raise ValueError(
            f"temporal self-supervision needs a time series of at least {MIN_FRAMES} frames, got "
            f"{n_frames}: record more frames, or use --method neighbor (single frames)"
        )
    return method


def _split(n: int, val_fraction: float) -> tuple[range, range]:
    """Contiguous blocks: the first frames train, the last ones (never seen) validate."""
    n_val = min(n - 2, max(2, round(val_fraction * n)))
    return range(0, n - n_val), range(n - n_val, n)


def adapt(
    frames_e: np.ndarray,
    init: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    config: SelfSupConfig | None = None,
    *,
    model_id: str | None = None,
    source: str = "frames",
    progress: bool = True,
    command: str | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Adapt model ``init`` to the sample of ``frames_e`` (``(T, H, W)`` photoelectrons).

    Returns ``(module, card, history)`` as :func:`livedenoise.training.finetune.finetune` does;
    ``history["improved"]`` says whether the held-out measure got better. With ``output``, the
    model is saved there (``.pt`` and its ``.json`` card).
    """
    import torch

    cfg = config or SelfSupConfig()
    ft = cfg.finetune
    frames_e = np.asarray(frames_e, np.float32)
    if frames_e.ndim == 2:
        frames_e = frames_e[None]
    if frames_e.ndim != 3 or min(frames_e.shape[1:]) < 16:
        raise ValueError(f"frames must be (T, H, W) photoelectrons of at least 16×16, got {frames_e.shape}")
    if not np.isfinite(frames_e).all():
        raise ValueError("frames contain NaN or Inf; pass the camera's frames converted with its calibration")
    method = _choose(cfg.method, len(frames_e))
    if method == "neighbor" and len(frames_e) < 2:
        raise ValueError("neighbor self-supervision needs at least 2 frames (1 to train, 1 held out)")
    rng = np.random.default_rng(ft.seed)
    train_idx, val_idx = _split(len(frames_e), ft.val_fraction)
    train_pairs = make_pairs(frames_e[train_idx.start : train_idx.stop], method, rng)
    val_pairs = make_pairs(frames_e[val_idx.start : val_idx.stop], method, rng)
    if not train_pairs or not val_pairs:
        raise ValueError(f"{len(frames_e)} frames are too few for {method} self-supervision; record more")
    torch.manual_seed(ft.seed)
    if ft.threads:
        torch.set_num_threads(int(ft.threads))
    module, init_card = load_model(init)
    if init_card.task != "denoise":
        raise ValueError(
            f"model {init_card.id!r} is a {init_card.task} model; self-supervision with noisy views as "
            "targets teaches denoising only: start from a denoise model (`livedenoise models`)"
        )
    module.train()
    before = evaluate_pairs(module, val_pairs)
    log.info(
        "self-supervised (%s) adaptation of %s on %d frames (%d held out): before %s",
        method,
        init_card.id,
        len(train_idx),
        len(val_idx),
        before,
    )
    history, after, best_step, steps = fit_pairs(
        module, train_pairs, val_pairs, ft, rng, before, progress, desc=f"adapt ({method})"
    )
    improved = after["poisson_deviance"] < before["poisson_deviance"]
    history.update(method=method, improved=improved)
    out_path = Path(output) if output is not None else None
    new_id = model_id or (out_path.stem if out_path is not None else f"{init_card.id}-adapted")
    card = derived_card(
        init_card,
        new_id,
        f"{init_card.id} adapted to the sample by {method} self-supervision ({source})",
        training={
            "kind": "self-supervised",
            "method": method,
            "frames": {
                "source": source,
                "count": len(frames_e),
                "shape": list(frames_e.shape[1:]),
                "train": [train_idx.start, train_idx.stop],
                "heldout": [val_idx.start, val_idx.stop],
                "mean_e": round(float(frames_e.mean()), 3),
            },
            "loss": "poisson, ratio 1 (Noise2Noise: one noisy view is the target of the other)",
            "config": {"method": cfg.method, **asdict(ft)},
            "steps": steps,
            "best_step": best_step,
            "seed": ft.seed,
        },
        heldout=(
            "heldout_frames",
            {
                "before": before,
                "after": after,
                "deviance_change": round(after["poisson_deviance"] - before["poisson_deviance"], 5),
                "improved": improved,
                "measure": f"Poisson deviance of one {method} view under the restoration of the other, "
                "on held-out frames",
            },
        ),
        command=command,
    )
    if out_path is not None:
        card = save_model(module, card, out_path)
    log.info(
        "held-out frames: deviance %.5f -> %.5f (%s)",
        before["poisson_deviance"],
        after["poisson_deviance"],
        "better" if improved else "NOT better",
    )
    return module, card, history


def read_frames(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """uint16 frames from a ``(T, Y, X)`` TIFF, 2D TIFFs, or a folder of TIFFs (sorted by name)."""
    import tifffile

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix.lower() in (".tif", ".tiff"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist; pass a (T, Y, X) TIFF or a folder of TIFFs")
    if not files:
        raise FileNotFoundError(f"no TIFF files in {', '.join(map(str, paths))}")
    stacks = []
    for f in files:
        a = tifffile.imread(f)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.dtype != np.uint16:
            raise ValueError(
                f"{f} is {a.dtype} {a.shape}; self-supervised training takes uint16 (T, Y, X) frames"
            )
        stacks.append(a)
    shapes = {s.shape[1:] for s in stacks}
    if len(shapes) > 1:
        raise ValueError(f"the frames have different sizes {sorted(shapes)}; give frames of one ROI")
    return np.concatenate(stacks)
