"""Fine-tune a restoration network on a paired dataset of the sample at hand.

Pairs become training data in photoelectrons (the dataset's own calibration): each short
exposure is an input, the long exposure of its pair the target, with the exposure ratio
``r = long_ms / short_ms``; the loss is the Poisson one (long counts ~ Poisson(r·λ),
:func:`livedenoise.training.losses.poisson_loss`). Patches are random aligned crops (the same
crop, flip and rotation of both frames).

Validation is by pair, never by patch: held-out pairs are whole fields the network never
saw. On them, :func:`evaluate_pairs` measures the Poisson deviance of the long counts
under ``r × restored short`` and the PSNR of the restored short against ``long / r``
(the best noise-free reference a pair has). Training stops early when the held-out
deviance stops improving; the best weights are kept. The new model card records the
dataset (path, pair count, index SHA-256), the initial model and the held-out measures
before and after.

Example
-------
>>> from livedenoise.training.finetune import finetune                     # doctest: +SKIP
>>> module, card, history = finetune("pairs/", init="rln-denoise-v1", output="models/rln-mycells")
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.acquisition.pairs import PairDataset, PairsError
from livedenoise.imaging.metrics import psnr
from livedenoise.inference.modelio import load_model, save_model

__all__ = ["FinetuneConfig", "PairPatches", "evaluate_pairs", "finetune", "load_pairs", "split_pairs"]

log = logging.getLogger("livedenoise")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run (all have working defaults).

    Attributes
    ----------
    steps : int
        Largest number of optimiser steps.
    batch : int
        Patches per step.
    patch : int
        Patch side in pixels (cropped to the frame if larger).
    lr : float
        Adam learning rate (small: the network starts trained).
    val_fraction : float
        Fraction of pairs held out for validation (at least one pair).
    eval_every : int
        Steps between held-out evaluations.
    patience : int
        Evaluations without improvement before stopping early.
    include_flagged : bool
        Train on pairs that failed a quality check too.
    freeze_batchnorm : bool
        Keep batch-norm statistics of the initial model (small batches of one sample
        would otherwise overwrite them).
    seed : int
    threads : int, optional
        Torch CPU threads (``torch.set_num_threads``); None leaves torch's setting.
    """

    steps: int = 400
    batch: int = 8
    patch: int = 64
    lr: float = 3e-4
    val_fraction: float = 0.2
    eval_every: int = 25
    patience: int = 4
    include_flagged: bool = False
    freeze_batchnorm: bool = True
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch": self.batch >= 1,
            "patch": self.patch >= 8,
            "lr": 0 < self.lr < 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "eval_every": self.eval_every >= 1,
            "patience": self.patience >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "invalid fine-tuning settings: "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                + " (steps, batch, eval_every, patience >= 1; patch >= 8; 0 < lr < 1; 0 < val_fraction < 1)"
            )


@dataclass
class LoadedPair:
    """One pair in photoelectrons: ``short`` (K, H, W), ``long`` (H, W), ratio, id."""

    id: int
    short: np.ndarray
    long: np.ndarray
    ratio: float


def load_pairs(dataset: PairDataset, pairs: Sequence[dict[str, Any]]) -> list[LoadedPair]:
    """Read and convert the frames of ``pairs`` (index entries) to photoelectrons."""
    out = []
    for p in pairs:
        short, long = dataset.load_e(p)
        out.append(
            LoadedPair(
                int(p["id"]), short, long, float(p["long_exposure_ms"]) / float(p["short_exposure_ms"])
            )
        )
    return out


def split_pairs(
    pairs: Sequence[dict[str, Any]], val_fraction: float, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Shuffle and split pair entries into (train, held-out); each side gets >= 1 pair."""
    if len(pairs) < 2:
        raise PairsError(
            f"fine-tuning needs at least 2 usable pairs (1 to train, 1 held out), the dataset has {len(pairs)}; "
            "collect more pairs (or pass --include-flagged to use flagged ones)"
        )
    order = rng.permutation(len(pairs))
    n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
    val = [pairs[i] for i in sorted(order[:n_val])]
    train = [pairs[i] for i in sorted(order[n_val:])]
    return train, val


class PairPatches:
    """Endless random ``(input_e, target_e, ratio)`` patches from loaded pairs.

    Each draw picks a pair, one of its short frames, and one crop with a random flip and
    quarter turn applied alike to the short and the long frame. Yields float32 arrays of
    shape ``(patch, patch)`` and the ratio as a float (the ``livedenoise.training.train`` data form).
    """

    def __init__(self, pairs: Sequence[LoadedPair], patch: int, rng: np.random.Generator) -> None:
        if not pairs:
            raise PairsError("no pairs to draw training patches from")
        self.pairs = list(pairs)
        h, w = self.pairs[0].long.shape
        self.patch = int(min(patch, h, w))
        self.rng = rng

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray, float]:
        rng, p = self.rng, self.patch
        pair = self.pairs[int(rng.integers(len(self.pairs)))]
        k = int(rng.integers(pair.short.shape[0]))
        h, w = pair.long.shape
        y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
        a = pair.short[k, y : y + p, x : x + p]
        b = pair.long[y : y + p, x : x + p]
        turns = int(rng.integers(4))
        a, b = np.rot90(a, turns), np.rot90(b, turns)
        if rng.integers(2):
            a, b = a[:, ::-1], b[:, ::-1]
        return np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), pair.ratio

    def batch(self, n: int) -> tuple[Any, Any, Any]:
        """``n`` patches as torch tensors ``(n, 1, p, p)``, ``(n, 1, p, p)``, ``(n,)``."""
        import torch

        items = [next(self) for _ in range(n)]
        x = torch.from_numpy(np.stack([i[0] for i in items])[:, None])
        y = torch.from_numpy(np.stack([i[1] for i in items])[:, None])
        r = torch.tensor([i[2] for i in items], dtype=torch.float32)
        return x, y, r


def _deviance(y: np.ndarray, mu: np.ndarray) -> float:
    """Mean Poisson deviance ``2 (y log(y/mu) - (y - mu))`` per pixel (y, mu clamped >= 0)."""
    y = np.clip(y.astype(np.float64), 0, None)
    mu = np.clip(mu.astype(np.float64), 1e-6, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(y > 0, y * np.log(y / mu), 0.0)
    return float(np.mean(2 * (term - (y - mu))))


def evaluate_pairs(module: Any, pairs: Sequence[LoadedPair]) -> dict[str, float]:
    """Held-out measures of ``module`` on whole pairs (every short frame restored in full).

    Returns
    -------
    dict
        ``poisson_deviance`` (mean per pixel, of the long counts under ``r × restored``;
        lower is better), ``psnr_db`` (restored short vs ``long / r``), ``psnr_raw_db``
        (the unrestored short vs ``long / r``, for scale), ``pairs``, ``frames``.
    """
    import torch

    dev, psnr_sum, psnr_raw, n, n_psnr = 0.0, 0.0, 0.0, 0, 0
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for pair in pairs:
                ref = pair.long / pair.ratio
                for s in pair.short:
                    restored = module(torch.from_numpy(np.ascontiguousarray(s, np.float32))[None, None])[
                        0, 0
                    ].numpy()
                    dev += _deviance(pair.long, pair.ratio * restored)
                    n += 1
                    # a flat reference has no PSNR, a diverged output none worth a number: not scored
                    if float(ref.max() - ref.min()) > 0 and np.isfinite(restored).all():
                        psnr_sum += psnr(restored, ref)
                        psnr_raw += psnr(s, ref)
                        n_psnr += 1
    finally:
        module.train(was_training)
    return {
        "poisson_deviance": round(dev / n, 5),
        "psnr_db": round(psnr_sum / n_psnr, 3) if n_psnr else float("nan"),
        "psnr_raw_db": round(psnr_raw / n_psnr, 3) if n_psnr else float("nan"),
        "pairs": len(pairs),
        "frames": n,
    }


def _freeze_bn(module: Any) -> None:
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def fit_pairs(
    module: Any,
    train_pairs: Sequence[LoadedPair],
    val_pairs: Sequence[LoadedPair],
    cfg: FinetuneConfig,
    rng: np.random.Generator,
    before: dict[str, float],
    progress: bool,
    desc: str = "fine-tune",
) -> tuple[dict[str, Any], dict[str, float], int, int]:
    """The fine-tuning loop: Poisson loss on patches of ``train_pairs``, early stopping on ``val_pairs``.

    Keeps the weights with the lowest held-out deviance (``before`` is the starting point's).
    Returns ``(history, after, best_step, steps)``; ``module`` ends in eval mode with the best
    weights.
    """
    import torch

    from livedenoise.training.losses import poisson_loss

    patches = PairPatches(train_pairs, cfg.patch, rng)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.lr)
    best_dev, best_state, best_step, bad = (
        before["poisson_deviance"],
        copy.deepcopy(module.state_dict()),
        0,
        0,
    )
    history: dict[str, Any] = {"before": before, "heldout": [], "train_loss": [], "stopped_early": False}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc=desc, unit="step", file=sys.stderr, leave=False)
    t0 = time.perf_counter()
    running, n_running, step = 0.0, 0, 0
    try:
        for step in range(1, cfg.steps + 1):
            x, y, r = patches.batch(cfg.batch)
            loss = poisson_loss(module(x), y, r)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
            n_running += 1
            if bar is not None:
                bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                held = evaluate_pairs(module, val_pairs)
                if cfg.freeze_batchnorm:
                    _freeze_bn(module)
                history["heldout"].append({"step": step, **held})
                history["train_loss"].append({"step": step, "loss": round(running / n_running, 6)})
                running, n_running = 0.0, 0
                if bar is not None:
                    bar.set_postfix(deviance=held["poisson_deviance"], psnr=held["psnr_db"])
                if held["poisson_deviance"] < best_dev:
                    best_dev, best_state, best_step, bad = (
                        held["poisson_deviance"],
                        copy.deepcopy(module.state_dict()),
                        step,
                        0,
                    )
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        history["stopped_early"] = True
                        log.info(
                            "held-out deviance did not improve for %d evaluations: stopping at step %d",
                            bad,
                            step,
                        )
                        break
    finally:
        if bar is not None:
            bar.close()
    module.load_state_dict(best_state)
    module.eval()
    after = evaluate_pairs(module, val_pairs)
    history.update(after=after, best_step=best_step, steps=step, seconds=round(time.perf_counter() - t0, 1))
    module.load_state_dict(best_state)
    module.eval()
    after = evaluate_pairs(module, val_pairs)
    history.update(after=after, best_step=best_step, steps=step, seconds=round(time.perf_counter() - t0, 1))
    return history, after, best_step, step


def derived_card(
    init_card: Any,
    new_id: str,
    description: str,
    *,
    training: dict[str, Any],
    heldout: tuple[str, dict[str, Any]],
    command: str | None = None,
) -> Any:
    """The card of a model trained further from ``init_card`` (fine-tuned or adapted).

    ``training`` gains the starting model, the command line (default: this process's argv) and
    the starting model's own training record; ``quality`` holds the starting model's quality and
    ``heldout = (key, measures)``. Id, path and checksum are left for :func:`save_model`.
    """
    return replace(
        init_card,
        id=new_id,
        created="",
        sha256="",
        path=None,
        description=description,
        training={
            "kind": training["kind"],
            "init_model": {"id": init_card.id, "sha256": init_card.sha256, "path": init_card.path},
            **{k: v for k, v in training.items() if k != "kind"},
            "command": command or " ".join(shlex.quote(a) for a in sys.argv),
            "previous": init_card.training,
        },
        quality={
            "init_model_quality": init_card.quality,  # measured on the initial model, not this one
            heldout[0]: heldout[1],
        },
    )


def finetune(
    dataset: str | os.PathLike[str] | PairDataset,
    init: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    config: FinetuneConfig | None = None,
    *,
    model_id: str | None = None,
    progress: bool = True,
    command: str | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fine-tune model ``init`` on the pairs of ``dataset``; save it to ``output`` if given.

    Parameters
    ----------
    dataset : path or PairDataset
        A paired dataset (``livedenoise collect-pairs``).
    init : str or path, optional
        The model to start from (id or path; default: the default live model).
    output : path, optional
        Where to write ``<output>.pt`` and ``<output>.json`` (:func:`livedenoise.inference.modelio.save_model`).
    config : FinetuneConfig, optional
    model_id : str, optional
        Id of the new model (default: the output file's stem).
    progress : bool
        Show a progress bar (tqdm) on stderr.
    command : str, optional
        The command line recorded in the card (default: this process's argv).

    Returns
    -------
    module : torch.nn.Module
        The best fine-tuned network (eval mode).
    card : ModelCard
        Its card (``training.dataset``, ``training.init_model``, ``quality.heldout``).
    history : dict
        ``steps``, ``train_loss`` (per evaluation interval), ``heldout`` (per evaluation),
        ``before``, ``after``, ``best_step``, ``stopped_early``.
    """
    import torch

    cfg = config or FinetuneConfig()
    ds = dataset if isinstance(dataset, PairDataset) else PairDataset(dataset)
    usable = ds.usable(cfg.include_flagged)
    flagged = len(ds) - len(ds.usable(False))
    rng = np.random.default_rng(cfg.seed)
    train_entries, val_entries = split_pairs(usable, cfg.val_fraction, rng)
    train_pairs, val_pairs = load_pairs(ds, train_entries), load_pairs(ds, val_entries)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    module, init_card = load_model(init)
    module.train()
    if cfg.freeze_batchnorm:
        _freeze_bn(module)
    before = evaluate_pairs(module, val_pairs)
    log.info(
        "fine-tuning %s on %d pairs (%d held out, %d flagged left out): held-out before %s",
        init_card.id,
        len(train_pairs),
        len(val_pairs),
        0 if cfg.include_flagged else flagged,
        before,
    )
    history, after, best_step, step = fit_pairs(module, train_pairs, val_pairs, cfg, rng, before, progress)
    out_path = Path(output) if output is not None else None
    new_id = model_id or (out_path.stem if out_path is not None else f"{init_card.id}-ft")
    card = derived_card(
        init_card,
        new_id,
        f"{init_card.id} fine-tuned on the paired dataset {ds.path.name} ({len(train_pairs)} pairs)",
        training={
            "kind": "finetune",
            "dataset": {
                "path": str(ds.path.resolve()),
                "pairs": len(ds),
                "train_pairs": [p.id for p in train_pairs],
                "heldout_pairs": [p.id for p in val_pairs],
                "flagged_excluded": 0 if cfg.include_flagged else flagged,
                "index_sha256": ds.index_sha256,
                "calibration": ds.index.get("calibration", {}).get("id"),
            },
            "loss": "poisson (long counts ~ Poisson(r * lambda))",
            "config": asdict(cfg),
            "steps": step,
            "best_step": best_step,
            "seed": cfg.seed,
        },
        heldout=(
            "heldout_pairs",
            {
                "before": before,
                "after": after,
                "deviance_change": round(after["poisson_deviance"] - before["poisson_deviance"], 5),
                "psnr_gain_db": round(after["psnr_db"] - before["psnr_db"], 3),
                "reference": "restored short vs long / r on held-out pairs",
            },
        ),
        command=command,
    )
    if out_path is not None:
        card = save_model(module, card, out_path)
    log.info(
        "held-out pairs: deviance %.4f -> %.4f, PSNR %.2f -> %.2f dB (best step %d of %d)",
        before["poisson_deviance"],
        after["poisson_deviance"],
        before["psnr_db"],
        after["psnr_db"],
        best_step,
        step,
    )
    return module, card, history
