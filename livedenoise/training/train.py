"""Training: synthetic phantoms (or any source of pairs) -> a model and its card.

Data interface
--------------
A training source is any iterable of ``(input_e, target_e, ratio)``:

- ``input_e``: float32 ``(H, W)`` photoelectrons of the short (noisy) exposure, small
  negatives allowed;
- ``target_e``: float32 ``(H, W)`` of the same field: a noise-free expectation
  (synthetic data) or the counts of a longer exposure (paired acquisitions), also in
  photoelectrons;
- ``ratio``: float, target exposure / input exposure (1 for synthetic denoise
  targets). The network always predicts the expected photoelectrons of the *input*
  exposure; the Poisson loss compares ``ratio * prediction`` with the target counts.

Patches within one batch must share a shape (crop them to ``config.patch`` in the
source). The iterable is consumed as long as training runs; a finite one is restarted
(``iter`` again) when exhausted. :class:`livedenoise.imaging.synthetic.SyntheticPatches` is the
default source; paired acquisitions slot in by yielding the same triples. Validation
data is a tuple ``(inputs, targets, ratios)`` of arrays ``(N, H, W)``, ``(N, H, W)``,
``(N,)``; by default a fixed synthetic set separate from the training stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livedenoise.imaging.psf import named_psf
from livedenoise.imaging.synthetic import SAMPLE_MIX, TASKS, TRAIN_MIX, SyntheticPatches, make_eval_set
from livedenoise.inference.modelio import ModelCard, load_model
from livedenoise.inference.nets import ARCHITECTURES, build_network
from livedenoise.training.stream import Prefetch, batches
from livedenoise.util.atomic import atomic_path
from livedenoise.util.cpu import cpu_flags, cpu_model

__all__ = [
    "KEEP_CHOICES",
    "TRAIN_PRECISIONS",
    "Prefetch",
    "TrainConfig",
    "batches",
    "evaluate_psnr",
    "psnr_db",
    "train",
]

log = logging.getLogger("livedenoise")

VAL_SEED_OFFSET = 500_000_000  # validation frames: another seed range than the training stream

TRAIN_PRECISIONS = ("fp32", "bf16")
"""Training precision: float32, or the passes under bfloat16 autocast (see TrainConfig.precision)."""

DATA_KINDS = ("legacy", "sample")
"""Synthetic training data: the original phantoms, or sample-like data (see TrainConfig.data)."""

KEEP_CHOICES = ("best", "last")
"""``TrainConfig.keep`` (``train --keep``): the output holds the best validation epoch's weights or the last step's."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the model card).

    Attributes
    ----------
    architecture, arch_params : network name and constructor arguments.
    task : ``"denoise"`` or ``"deconvolve"``.
    loss : ``"poisson"`` (default), ``"psnr"``, ``"mse"`` or ``"mse_ssim"`` (:mod:`livedenoise.training.losses`).
    bg_bias_weight : 0 (default: off), or the weight of each patch's squared mean error over its
        background region (e-², :func:`~livedenoise.training.losses.with_background_bias`) added to
        the loss, in training and validation alike.
    dark_bias_weight : 0 (default: off), or the weight of the square of the batch's mean error over
        the background regions of its dark-background patches (e-²,
        :func:`~livedenoise.training.losses.with_dark_bias`), in training and validation alike (there
        over each chunk of 8 validation frames, so its validation value depends on that chunking).
    keep : which weights the output holds: ``"best"`` (default), the epoch's with the lowest
        validation loss, or ``"last"``, the final step's (where the loss trades synthetic validation
        for what the evaluation on real structure measures, e.g. the bias terms).
    patch, batch : training patch side (pixels) and batch size.
    steps : optimiser steps in total; ``epoch_steps`` steps make an epoch (validation
        and checkpoint after each).
    stop_after : stop at this step (a whole number of epochs), the schedule still the one of
        ``steps``: a run made in stages (``--resume`` the next stage) is reproducible this way.
    lr, lr_schedule, warmup_steps : Adam learning rate, ``"cosine"`` | ``"exp"`` |
        ``"constant"`` decay, linear warm-up.
    peak_e_range : synthetic peak photon levels (log-uniform).
    data : ``"legacy"`` (the original phantoms, flat backgrounds, :func:`random_psf`) or
        ``"sample"`` (:data:`~livedenoise.imaging.synthetic.SAMPLE_MIX`, backgrounds 0-30 e- with
        drifts and haze, PSFs from sigma 0.8 px to wide widefield; :mod:`livedenoise.imaging.samples`).
    psf : a :data:`~livedenoise.imaging.psf.NAMED_PSFS` name: every training patch (and validation
        frame) is blurred by that one PSF, recorded in the card (a deconvolution model is made for
        one microscope); None: PSFs drawn per patch.
    seed : seeds the network initialisation, the data stream and the validation set.
    val_size, val_px : validation frames and their side length.
    checkpoint_dir, resume : where ``last.pt`` goes each epoch; continue from it.
    device : ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.
    threads : CPU threads for torch (None: torch's default).
    init : a model (id or path) whose weights start the training (fine-tuning).
    precision : ``"fp32"`` (default) or ``"bf16"``: the forward and backward passes under bfloat16
        autocast (weights, optimiser, loss and validation stay float32). On CPUs with AMX
        (Intel Sapphire Rapids and later) a step is 2-3x faster; elsewhere bf16 is emulated and slow.
    prefetch : batches made ahead by a background thread while the network trains on the last one
        (0: none). The stream is the same either way: one thread draws it in order.
    """

    architecture: str = "rln"
    arch_params: dict[str, Any] = field(default_factory=dict)
    task: str = "denoise"
    loss: str = "poisson"
    bg_bias_weight: float = 0.0
    dark_bias_weight: float = 0.0
    keep: str = "best"
    patch: int = 64
    batch: int = 16
    steps: int = 2000
    epoch_steps: int = 200
    stop_after: int | None = None
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 50
    grad_clip: float = 1.0
    peak_e_range: tuple[float, float] = (1.0, 500.0)
    data: str = "legacy"
    psf: str | None = None
    seed: int = 0
    val_size: int = 24
    val_px: int = 96
    checkpoint_dir: str | None = None
    resume: bool = False
    device: str = "auto"
    threads: int | None = None
    init: str | None = None
    model_id: str | None = None
    command: str = ""
    precision: str = "fp32"
    prefetch: int = 0

    def __post_init__(self) -> None:
        from livedenoise.training.losses import LOSSES

        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; expected one of {ARCHITECTURES}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {tuple(LOSSES)}")
        for key in ("bg_bias_weight", "dark_bias_weight"):
            weight = getattr(self, key)
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"{key} must be a finite number >= 0 (0: off), got {weight}")
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"unknown keep {self.keep!r}; expected one of {KEEP_CHOICES}")
        if self.data not in DATA_KINDS:
            raise ValueError(f"unknown data {self.data!r}; expected one of {DATA_KINDS}")
        if self.psf is not None:
            named_psf(self.psf)  # raises on an unknown name
        if self.precision not in TRAIN_PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; expected one of {TRAIN_PRECISIONS}")
        if int(self.prefetch) < 0:
            raise ValueError(f"prefetch must be >= 0 batches (0: none), got {self.prefetch}")
        if self.lr_schedule not in ("cosine", "exp", "constant"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; expected cosine, exp or constant")
        for name in ("patch", "batch", "steps", "epoch_steps", "val_size", "val_px"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stop_after is not None and not 1 <= int(self.stop_after) <= int(self.steps):
            raise ValueError(f"stop_after must be 1 to steps ({self.steps}), got {self.stop_after}")
        if self.patch < 16:
            raise ValueError(f"patch must be >= 16 pixels, got {self.patch}")
        self.peak_e_range = (float(self.peak_e_range[0]), float(self.peak_e_range[1]))
        if not 0 < self.peak_e_range[0] <= self.peak_e_range[1]:
            raise ValueError(f"peak_e_range must be 0 < low <= high, got {self.peak_e_range}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["peak_e_range"] = list(self.peak_e_range)
        return d


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate at ``step`` (warm-up, then the schedule)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    frac = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    if config.lr_schedule == "cosine":
        return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
    if config.lr_schedule == "exp":
        return config.lr * 0.02**frac
    return config.lr


def psnr_db(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR (dB) of ``x`` against ``ref``; data range ``ref.max() - ref.min()``."""
    mse = float(np.mean((np.asarray(x, np.float64) - ref) ** 2))
    rng = float(ref.max() - ref.min())
    if mse == 0:
        return float("inf")
    return 10 * math.log10(max(rng, 1e-12) ** 2 / mse)


def evaluate_psnr(
    module, inputs: np.ndarray, targets: np.ndarray, ratios=None, device="cpu", batch=8
) -> dict:
    """Mean PSNR of the network and of the raw input (scaled by ratio) against the targets."""
    import torch

    ratios = np.ones(len(inputs), np.float32) if ratios is None else np.asarray(ratios, np.float32)
    module.eval()
    out = np.empty_like(inputs)
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + batch, None])).to(device)
            out[i : i + batch] = module(x)[:, 0].cpu().numpy()
    net = [psnr_db(o * r, t) for o, t, r in zip(out, targets, ratios)]
    raw = [psnr_db(x * r, t) for x, t, r in zip(inputs, targets, ratios)]
    return {"psnr_db": float(np.mean(net)), "raw_psnr_db": float(np.mean(raw)), "outputs": out}


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def _fingerprint(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _default_val(config: TrainConfig):

    sample = config.data == "sample"
    x, t, _ = make_eval_set(
        config.val_size,
        config.val_px,
        config.peak_e_range,
        config.task,
        seed=config.seed + VAL_SEED_OFFSET,
        held_out=False,
        background="sample" if sample else "legacy",
        psf_range="wide" if sample else "legacy",
        psf=config.psf,
    )
    return x, t, np.ones(len(x), np.float32)


def _psf_record(config: TrainConfig) -> dict[str, Any]:
    """The fixed PSF of a run, as the card records it (and the target's PSF for ``deconvolve``)."""
    _, info = named_psf(str(config.psf))
    rec: dict[str, Any] = dict(info)
    if config.task == "deconvolve":
        rec["target"] = (
            f"the object seen through a Gaussian of sigma {max(0.35, float(info['sigma_px']) / 2):g} px"
        )
    return rec


WEIGHTLESS_ARCH_PARAMS = ("flux_block",)
"""Network parameters that hold no weights: ``--arch-param`` may set them on an ``--init`` model."""


def _init_arch_params(init: dict[str, Any], given: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``--init`` model's network parameters, with the weightless ones of ``given`` set anew.

    Any other ``--arch-param`` that differs from the model's would change its weights' shapes or
    meaning, and is refused with the model's value rather than silently ignored.
    """
    out = dict(init)
    for key, value in given.items():
        if key in WEIGHTLESS_ARCH_PARAMS:
            out[key] = value
        elif init.get(key) != value:
            raise ValueError(
                f"--arch-param {key}={value!r} cannot change the --init model {source!r} (its {key} is "
                f"{init.get(key)!r}); leave it out to fine-tune that network, or train a new one without "
                f"--init. Only {', '.join(WEIGHTLESS_ARCH_PARAMS)} (no weights) may be set on an --init model"
            )
    return out


def _refuse_another_loss(saved: dict[str, Any], config: TrainConfig, last: Path) -> None:
    """A run resumes only with the loss and terms of its checkpoint: its best loss is on their scale."""
    for key, flag, default in (
        ("loss", "--loss", "poisson"),
        ("bg_bias_weight", "--bg-bias-weight", 0.0),
        ("dark_bias_weight", "--dark-bias-weight", 0.0),
    ):
        was, now = saved.get(key, default), getattr(config, key)
        if was != now:
            what, fmt = ("loss", str) if key == "loss" else ("weight", lambda v: f"{float(v):g}")
            raise ValueError(
                f"checkpoint {last} was trained with {flag} {fmt(was)}, not {fmt(now)}: resume with that "
                f"{what}, or start a new run from its weights with --init and another --checkpoint-dir"
            )


def train(config: TrainConfig, data: Iterable | None = None, val_data=None, progress: bool = True):
    """Train a network.

    Parameters
    ----------
    config : TrainConfig
    data : iterable of (input_e, target_e, ratio), optional
        Training source (see the module docstring); default: synthetic phantoms.
    val_data : (inputs, targets, ratios), optional
        Validation arrays; default: a fixed synthetic set.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    module : torch.nn.Module
        The network with the best validation loss, on the CPU, in eval mode.
    card : ModelCard
        Its card (training record and validation quality; not yet saved).
    history : list of dict
        Per epoch: step, train loss, validation loss and PSNR, learning rate, time.
    """
    import torch
    from tqdm.auto import tqdm

    from livedenoise.training.losses import loss_terms_record, training_loss

    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = _device(config.device)
    host = {"cpu": cpu_model(), "cpu_features": cpu_flags()}
    if (
        config.precision == "bf16"
        and device.type == "cpu"
        and not {"amx_bf16", "avx512_bf16"} & set(host["cpu_features"])
    ):
        log.warning(
            "--precision bf16 on a CPU without AMX or AVX-512 bf16 (%s): bfloat16 is emulated there and "
            "slower than fp32",
            host["cpu"],
        )
    torch.manual_seed(config.seed)
    if config.init:
        module, init_card = load_model(config.init)
        if init_card.architecture != config.architecture:
            raise ValueError(
                f"--init model is a {init_card.architecture}, but --arch is {config.architecture}"
            )
        config.arch_params = _init_arch_params(init_card.arch_params, config.arch_params, config.init)
        if config.arch_params != dict(init_card.arch_params):  # an output stage set anew: same weights
            net = build_network(config.architecture, **config.arch_params)
            net.load_state_dict(module.state_dict())
            module = net
    else:
        module = build_network(config.architecture, **config.arch_params)
    # channels-last: 3-5x faster convolutions (forward and backward) on CPU
    module.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(module.parameters(), lr=config.lr)
    loss_fn = training_loss(config.loss, config.bg_bias_weight, config.dark_bias_weight)
    history: list[dict[str, Any]] = []
    start = 0
    resumed_val: str | None = None
    best: tuple[float, dict | None, int] = (float("inf"), None, -1)
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        last = ckpt_dir / "last.pt"
        if config.resume and last.is_file():
            ck = torch.load(last, map_location=device, weights_only=True)
            saved = json.loads(ck["config"])
            if saved["architecture"] != config.architecture:
                raise ValueError(
                    f"checkpoint {last} is for another architecture; use another --checkpoint-dir"
                )
            _refuse_another_loss(saved, config, last)
            module.load_state_dict(ck["model"])
            module.to(memory_format=torch.channels_last)
            opt.load_state_dict(ck["optim"])
            start = int(ck["step"])
            history = json.loads(ck["history"])
            best = (float(ck["best_loss"]), ck["best_model"], int(ck["best_step"]))
            resumed_val = ck.get("val_sha256")
            log.info("resumed from %s at step %d", last, start)
        elif config.resume:
            log.warning("--resume: no checkpoint in %s; starting from scratch", ckpt_dir)
    if data is None:
        stream_seed = int(np.random.SeedSequence([config.seed, start]).generate_state(1)[0] % 2**31)
        sample = config.data == "sample"
        data = SyntheticPatches(
            config.patch,
            config.task,
            stream_seed,
            config.peak_e_range,
            mix=dict(SAMPLE_MIX if sample else TRAIN_MIX),
            background="sample" if sample else "legacy",
            psf_range="wide" if sample else "legacy",
            psf=config.psf,
        )
        data_desc = (
            f"synthetic {'sample-like ' if sample else ''}phantoms ({config.task}), {config.patch}px patches, "
            f"peak {config.peak_e_range[0]:g}-{config.peak_e_range[1]:g} e- log-uniform, "
            "Poisson + sCMOS read noise, seed " + str(config.seed)
        )
        if config.psf is not None:
            data_desc += f", every patch blurred by the {config.psf} PSF"
    else:
        data_desc = getattr(data, "description", type(data).__name__)
    vx, vt, vr = _default_val(config) if val_data is None else val_data
    vr = np.asarray(vr, np.float32)
    val_sha = _fingerprint(vx, vt, vr)

    def validate() -> tuple[float, float, float]:
        module.eval()
        losses = []
        with torch.inference_mode():
            for i in range(0, len(vx), 8):
                x = torch.from_numpy(np.ascontiguousarray(vx[i : i + 8, None])).to(device)
                t = torch.from_numpy(np.ascontiguousarray(vt[i : i + 8, None])).to(device)
                r = torch.from_numpy(vr[i : i + 8]).to(device)
                losses.append(loss_fn(module(x), t, r).item() * len(x))
        ev = evaluate_psnr(module, vx, vt, vr, device=device)
        module.train()
        return sum(losses) / len(vx), ev["psnr_db"], ev["raw_psnr_db"]

    # where training starts from (an --init model): the end result is compared with it
    start_eval = validate() if config.init and start == 0 else None
    if start and resumed_val != val_sha:
        # the validation frames changed since the checkpoint (other --val-size, data or version): its
        # best loss is on other frames and says nothing here; the best is measured again from now on
        vloss = validate()[0]
        log.warning("--resume: the validation set changed since %s; its best model is compared afresh", last)
        best = (vloss, {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, start)
    module.train()
    stream: Iterator = batches(data, config.batch)
    prefetch: Prefetch | None = None
    # bf16: the passes under autocast (convolutions in bfloat16); weights, optimiser and loss in fp32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    bar = tqdm(
        total=config.steps,
        initial=start,
        disable=not progress,
        desc=f"train {config.architecture}",
        unit="step",
        dynamic_ncols=True,
    )
    running, n_run = 0.0, 0
    step = start
    end = config.steps if config.stop_after is None else int(config.stop_after)
    try:
        if config.prefetch:  # inside the try: the finally below stops its thread
            prefetch = Prefetch(stream, int(config.prefetch))
            stream = prefetch
        while step < end:
            x_np, t_np, r_np = next(stream)
            x = torch.from_numpy(x_np).to(device).contiguous(memory_format=torch.channels_last)
            t = torch.from_numpy(t_np).to(device).contiguous(memory_format=torch.channels_last)
            r = torch.from_numpy(r_np).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(config, step)
            if config.loss == "mse_ssim" and config.architecture == "rln":
                with autocast:
                    pred, est = module(x, return_estimate=True)
                loss = loss_fn(pred.float(), t, r, estimate=est.float(), input_e=x)
            else:
                with autocast:
                    pred = module(x)
                loss = loss_fn(pred.float(), t, r)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            opt.step()
            step += 1
            running += loss.item()
            n_run += 1
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{running / n_run:.4g}")
            if step % config.epoch_steps == 0 or step == end:
                vloss, vpsnr, vraw = validate()
                rec = {
                    "step": step,
                    "train_loss": running / max(n_run, 1),
                    "val_loss": vloss,
                    "val_psnr_db": vpsnr,
                    "val_raw_psnr_db": vraw,
                    "lr": lr_at(config, step - 1),
                    "time_s": time.perf_counter() - t0,
                }
                history.append(rec)
                running, n_run = 0.0, 0
                bar.write(
                    f"step {step}: train {rec['train_loss']:.4g}  val {vloss:.4g}  "
                    f"PSNR {vpsnr:.2f} dB (raw {vraw:.2f})"
                )
                log.info("step %s: val loss %.4g, PSNR %.2f dB (raw %.2f)", step, vloss, vpsnr, vraw)
                if vloss < best[0]:
                    best = (
                        vloss,
                        {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
                        step,
                    )
                if ckpt_dir is not None:
                    ck = {
                        "model": module.state_dict(),
                        "optim": opt.state_dict(),
                        "step": step,
                        "history": json.dumps(history),
                        "config": json.dumps(config.to_dict()),
                        "best_loss": best[0],
                        "best_model": best[1],
                        "best_step": best[2],
                        "val_sha256": val_sha,
                    }
                    with atomic_path(ckpt_dir / "last.pt", "checkpoint") as tmp:
                        torch.save(ck, tmp)
    finally:
        bar.close()
        if prefetch is not None:
            prefetch.close()
    out_step = step if config.keep == "last" else best[2]
    if config.keep == "best" and best[1] is not None:
        module.load_state_dict(best[1])
    module.to("cpu", memory_format=torch.contiguous_format).eval()
    elapsed = time.perf_counter() - t0
    out_rec = next((h for h in history if h["step"] == out_step), history[-1] if history else {})
    card = ModelCard(
        id=config.model_id or f"{config.architecture}-{config.task}-custom",
        architecture=config.architecture,
        arch_params=dict(config.arch_params),
        parameters=int(sum(p.numel() for p in module.parameters())),
        task=config.task,
        training={
            "data": data_desc,
            "loss": config.loss,
            **loss_terms_record(config.bg_bias_weight, config.dark_bias_weight),
            "command": config.command,
            "seed": config.seed,
            "steps": config.steps,
            "best_step": best[2],
            **({"kept": "last", "output_step": out_step} if config.keep == "last" else {}),
            "batch": config.batch,
            "patch": config.patch,
            "lr": config.lr,
            "lr_schedule": config.lr_schedule,
            "grad_clip": config.grad_clip,
            "time_s": round(elapsed, 1),
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "precision": config.precision,
            "prefetch": int(config.prefetch),
            "host": host,  # bf16 kernels differ between CPUs (AMX, AVX-512 bf16, emulated): the same run elsewhere differs
            "init": config.init,
            **({"psf": _psf_record(config)} if config.psf is not None else {}),
        },
        quality={
            "validation": {
                "frames": len(vx),
                "psnr_db": round(out_rec.get("val_psnr_db", float("nan")), 3),
                "raw_psnr_db": round(out_rec.get("val_raw_psnr_db", float("nan")), 3),
                "loss": round(out_rec.get("val_loss", float("nan")), 5),
            }
        },
    )
    if start_eval is not None:
        card.quality["validation"]["start"] = {
            "model": config.init,
            "psnr_db": round(start_eval[1], 3),
            "loss": round(start_eval[0], 5),
        }
    return module, card, history
