"""Training losses, in photoelectrons.

- :func:`poisson_loss` (default, physics-informed): the Poisson negative log-likelihood
  of the target counts under the predicted rate, offset by a constant so that it equals
  the Kullback-Leibler divergence ``KL(Pois(t) || Pois(r*lambda))`` when the target is
  an expectation. For a target exposure ``r`` times the input's, target counts are
  ``Poisson(r * lambda)``. Per pixel, an error of one shot-noise standard deviation
  costs ~1/2 at any photon level, so frames from 1 to 500 e- weigh alike.
- :func:`psnr_loss`: minus the mean PSNR of the samples, each against its target's range (the
  evaluation's figure of merit), for a last stage on a network trained with the Poisson loss.
  From ``resunet-denoise-v4``, 800 steps of it gained 0.1 dB on real structure where 800 more
  Poisson steps gained nothing and range-scaled MSE (dominated by the dimmest samples) 0.08 dB;
  the v5 RESUNETs are the v4 ones trained on with it (about +0.4 dB each).
- :func:`mse_loss`, and :func:`mse_ssim_loss` (RLN's own: MSE + -log((1 + SSIM)/2), with
  the optional 0.1 * MSE(estimate, 0.8 target + 0.2 input) term), both on images scaled
  by the target's range so that they too compare frames of different photon levels.

``LOSSES`` maps the names used by ``livedenoise train --loss`` to the functions; every
function takes ``(pred, target, ratio=1.0, **extra)`` with ``(N, 1, H, W)`` tensors.
:func:`with_background_bias` adds to any of them a penalty on each sample's mean error over its
background region (``livedenoise train --bg-bias-weight``), in photoelectrons. The networks spread a
little of the structure's light into its dark surroundings, a bias none of the losses above sees in a
mean over all pixels and the flux stage (which keeps 32-pixel block means) does not undo: on real
structure with no background, ``resunet-denoise-v5`` reads +0.07 e- there, with or without the output's
final ReLU (so it is not the non-negativity). :func:`with_dark_bias` (``--dark-bias-weight``) adds a
penalty on the batch's mean error over the background regions of its dark-background samples: per
sample, that error is mostly noise (the flux stage's block means are the noisy input's), so the
per-sample penalty barely moves a bias of a few hundredths of an e-; averaged over the dark samples of
the batch, the noise cancels and what is left is the bias.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "BG_LEVEL",
    "LOSSES",
    "background_bias",
    "loss_terms_record",
    "mse_loss",
    "mse_ssim_loss",
    "poisson_kl",
    "poisson_loss",
    "psnr_loss",
    "ssim",
    "training_loss",
    "with_background_bias",
    "with_dark_bias",
]

EPS = 1e-6
PSNR_FLOOR = 1e-12  # psnr_loss: a sample is worth at most 120 dB (no division by a zero error)
BG_LEVEL = 0.02  # background region: target within 2 % of its range above its minimum
BG_MIN_RANGE_E = 20.0  # with_background_bias: samples whose target spans fewer e- do not count
DARK_BG_E = 1.0  # with_dark_bias: a sample's background is dark where its region's target mean is below this


def poisson_kl(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Element-wise ``KL(Pois(a) || Pois(b)) = a log(a / b) - a + b`` (0 log 0 = 0).

    Negative inputs are clamped to 0; ``eps`` keeps ``log b`` finite at ``b = 0``.
    """
    a = torch.clamp(a, min=0.0)
    b = torch.clamp(b, min=0.0)
    return torch.xlogy(a, a) - a * torch.log(b + eps) - a + b


def _ratio(ratio, like: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(ratio, dtype=like.dtype, device=like.device)
    if r.dim() == 1:  # one ratio per sample
        r = r.view(-1, 1, 1, 1)
    if torch.any(r <= 0):
        raise ValueError("exposure ratio must be > 0 (target exposure / input exposure)")
    return r


def poisson_loss(pred: torch.Tensor, target: torch.Tensor, ratio=1.0, eps: float = EPS, **_) -> torch.Tensor:
    """Mean Poisson NLL of ``target`` counts under rate ``ratio * pred`` (+ constant: the Poisson KL).

    ``pred`` is the network's estimate of the expected photoelectrons of the *input*
    exposure; ``target`` counts (or expectations) were taken with ``ratio`` times that
    exposure. Well defined for ``target = 0`` and for slightly negative values (both
    clamped to 0).
    """
    rate = _ratio(ratio, pred) * torch.clamp(pred, min=0.0)
    return poisson_kl(target, rate, eps).mean()


def mse_loss(pred: torch.Tensor, target: torch.Tensor, ratio=1.0, **_) -> torch.Tensor:
    """MSE between ``ratio * pred`` and ``target``, each sample scaled by its target's range."""
    r = _ratio(ratio, pred)
    scale = _range(target)
    return (((r * pred - target) / scale) ** 2).mean()


def psnr_loss(pred: torch.Tensor, target: torch.Tensor, ratio=1.0, **_) -> torch.Tensor:
    """Minus the mean PSNR (dB) of the samples, each against its target's range.

    The evaluation's own figure of merit (the range as in :func:`livedenoise.imaging.metrics.psnr`,
    unclamped): every sample counts alike in decibels, where :func:`mse_loss` is dominated by the
    samples with the fewest photons (their range-scaled errors are largest) and
    :func:`poisson_loss` weighs each pixel by its inverse rate. A sample's range only shifts its
    term, so the gradient is that of ``10 log10(MSE)``: about 40 in norm on a batch of the RESUNETs,
    against 0.2 for the Poisson loss, so the default gradient clip (1.0, ``TrainConfig.grad_clip``,
    recorded in the card) scales every step of it to unit norm; the v5 models were trained so.
    """
    r = _ratio(ratio, pred)
    mse = (((r * pred - target) / _range(target, floor=1e-12)) ** 2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(mse + PSNR_FLOOR)).mean()


def background_bias(
    pred: torch.Tensor, target: torch.Tensor, ratio=1.0, level: float = BG_LEVEL
) -> torch.Tensor:
    """Each sample's mean error ``ratio * pred - target`` (e-) over its background region, shape ``(N,)``.

    The region is the pixels whose target is at most ``level`` of the sample's range above its
    minimum, which needs only the target. The evaluation's background regions are where the
    structure alone is below 2 % of its peak; on a flat background the two agree, but where the
    background drifts or holds haze (the sample-like training data) this region is its darkest part
    only. It holds the sample's darkest pixel, so it is never empty. The target must be noise-free
    (synthetic training): on noisy counts, choosing the low pixels would choose negative noise.
    Computed in float32 whatever ``pred``'s precision.
    """
    return _background_region(pred, target, ratio, level)[0]


def _background_region(
    pred: torch.Tensor, target: torch.Tensor, ratio=1.0, level: float = BG_LEVEL
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's mean error over its background region (:func:`background_bias`) and the target's
    mean there, both ``(N,)`` e-, in float32."""
    pred, target = pred.float(), target.float()
    r = _ratio(ratio, pred)
    lo = target.flatten(1).min(dim=1).values.view(-1, 1, 1, 1)
    mask = (target <= lo + level * _range(target, floor=0.0)).float()
    n = mask.flatten(1).sum(dim=1)
    bias = ((r * pred - target) * mask).flatten(1).sum(dim=1) / n
    return bias, (target * mask).flatten(1).sum(dim=1) / n


def with_background_bias(
    loss_fn: Callable[..., torch.Tensor], weight: float, min_range_e: float = BG_MIN_RANGE_E
) -> Callable[..., torch.Tensor]:
    """``loss_fn`` plus ``weight`` times the mean over the batch of :func:`background_bias` squared (e-²).

    Samples whose target spans fewer than ``min_range_e`` photoelectrons count 0: there the 2 % band
    above the minimum is a few hundredths of an e- wide, so the region is the target's extreme dark
    pixels, where any smoothing estimate reads above the target whether the background is lifted or
    not; counting them pushed every dim background down (-0.3 dB at 2 e- peak on real structure).
    From ``resunet-denoise-v5`` (PSNR loss, 800 steps at lr 1e-4): weight 30 brought the mean
    background bias on real structure with no background from +0.071 to +0.043 e- (tolerance 0.05)
    at -0.06 dB; with dim samples left out (20 e-), to +0.039 e- at -0.015 dB.
    """
    if not weight > 0:
        raise ValueError(f"background-bias weight must be > 0, got {weight}")

    def loss(pred: torch.Tensor, target: torch.Tensor, ratio=1.0, **extra) -> torch.Tensor:
        b2 = background_bias(pred, target, ratio) ** 2
        if min_range_e > 0:
            b2 = b2 * (_range(target, floor=0.0).flatten() >= min_range_e).to(b2.dtype)
        return loss_fn(pred, target, ratio, **extra) + weight * b2.mean()

    return loss


def with_dark_bias(
    loss_fn: Callable[..., torch.Tensor],
    weight: float,
    min_range_e: float = BG_MIN_RANGE_E,
    dark_e: float = DARK_BG_E,
) -> Callable[..., torch.Tensor]:
    """``loss_fn`` plus ``weight`` times the square of the batch's mean background error over its dark samples (e-²).

    A sample is dark where its background region's target mean (:func:`background_bias`) is below
    ``dark_e`` photoelectrons and its target spans at least ``min_range_e`` (as in
    :func:`with_background_bias`: the extreme dark pixels of a dim sample read high under any
    smoothing estimate). A batch with no dark sample adds 0. This is the bias the evaluation's
    0.05 e- tolerance is about, on a dark background next to bright structure: each sample's own
    background error is mostly the noise of the flux stage's block means (~0.05 e- at 0 e- of
    background), so :func:`with_background_bias` at a weight that keeps the PSNR barely moves a bias
    of a few hundredths; the batch mean cancels that noise. From ``resunet-live-v6`` (1500 steps at
    lr 5e-5 with ``--bg-bias-weight 30``): weight 1000 brought the 0 e- background on real
    structure from +0.054 to +0.043 e- at -0.02 dB.
    """
    if not weight > 0:
        raise ValueError(f"dark-bias weight must be > 0, got {weight}")

    def loss(pred: torch.Tensor, target: torch.Tensor, ratio=1.0, **extra) -> torch.Tensor:
        bias, truth = _background_region(pred, target, ratio)
        dark = ((truth < dark_e) & (_range(target.float(), floor=0.0).flatten() >= min_range_e)).float()
        mean = (bias * dark).sum() / dark.sum().clamp(min=1.0)
        return loss_fn(pred, target, ratio, **extra) + weight * mean**2

    return loss


def training_loss(
    name: str, bg_bias_weight: float = 0.0, dark_bias_weight: float = 0.0
) -> Callable[..., torch.Tensor]:
    """The loss ``livedenoise train`` minimises: :data:`LOSSES` ``[name]`` with the background terms whose
    weight is not 0 (:func:`with_background_bias`, then :func:`with_dark_bias`)."""
    loss_fn = LOSSES[name]
    if bg_bias_weight:
        loss_fn = with_background_bias(loss_fn, bg_bias_weight)
    if dark_bias_weight:
        loss_fn = with_dark_bias(loss_fn, dark_bias_weight)
    return loss_fn


def loss_terms_record(bg_bias_weight: float = 0.0, dark_bias_weight: float = 0.0) -> dict[str, float]:
    """The background terms of :func:`training_loss` as a model card records them (``training``): none when off."""
    rec: dict[str, float] = {}
    if bg_bias_weight:
        rec.update(bg_bias_weight=bg_bias_weight, bg_bias_min_range_e=BG_MIN_RANGE_E)
    if dark_bias_weight:
        rec.update(
            dark_bias_weight=dark_bias_weight,
            dark_bias_background_e=DARK_BG_E,
            dark_bias_min_range_e=BG_MIN_RANGE_E,
        )
    return rec


def _range(t: torch.Tensor, floor: float = 1.0) -> torch.Tensor:
    """Each sample's ``max - min``, at least ``floor``, shaped ``(N, 1, 1, 1)``."""
    flat = t.flatten(1)
    rng = flat.max(dim=1).values - flat.min(dim=1).values
    return torch.clamp(rng, min=floor).view(-1, 1, 1, 1)


def _gauss_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    c = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(c**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: torch.Tensor | float = 1.0, win: int = 11
) -> torch.Tensor:
    """Mean SSIM of ``(N, 1, H, W)`` images (Gaussian window 11, sigma 1.5; Wang et al. 2004)."""
    win = min(win, x.shape[-1], x.shape[-2])
    win = win if win % 2 else win - 1
    w = _gauss_window(win, 1.5, x)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx * mx
    syy = F.conv2d(y * y, w) - my * my
    sxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def mse_ssim_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    ratio=1.0,
    estimate: torch.Tensor | None = None,
    input_e: torch.Tensor | None = None,
    **_,
) -> torch.Tensor:
    """RLN's loss: MSE + -log((1 + SSIM) / 2) [+ 0.1 MSE(estimate, 0.8 target + 0.2 input)], range-scaled."""
    r = _ratio(ratio, pred)
    scale = _range(target)
    p, t = r * pred / scale, target / scale
    loss = ((p - t) ** 2).mean() - torch.log((1 + ssim(p, t, 1.0)) / 2 + EPS)
    if estimate is not None and input_e is not None:
        mix = 0.8 * t + 0.2 * (input_e * r) / scale
        loss = loss + 0.1 * ((r * estimate / scale - mix) ** 2).mean()
    return loss


LOSSES = {"poisson": poisson_loss, "mse": mse_loss, "psnr": psnr_loss, "mse_ssim": mse_ssim_loss}
