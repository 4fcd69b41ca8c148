"""Pieces shared by the networks: variance-stabilising front end, padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ANSCOMBE_OFFSET = 3.0 / 8.0


def to_vst(x_e: torch.Tensor) -> torch.Tensor:
    """Anscombe transform of photoelectrons: shot noise becomes ~unit variance.

    Negatives (read noise) are clamped to 0 first, so the result is >= 2 sqrt(3/8) > 0
    and safe to divide by.
    """
    return 2.0 * torch.sqrt(torch.clamp(x_e, min=0.0) + ANSCOMBE_OFFSET)


def from_vst(z: torch.Tensor) -> torch.Tensor:
    """Smooth, non-negative inverse of :func:`to_vst` for a positive ``z``.

    ``softplus((z/2)^2 - 3/8)`` with a sharp softplus: equal to the algebraic inverse
    away from 0, never negative, and with a gradient everywhere (no dead pixels under
    the Poisson loss).
    """
    return F.softplus(0.25 * z * z - ANSCOMBE_OFFSET, beta=4.0)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the last two dimensions up to a multiple; returns the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def check_input(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a (N, 1, H, W) tensor of photoelectrons, got shape {tuple(x.shape)}")


def keep_flux(x_e: torch.Tensor, y: torch.Tensor, block: int) -> torch.Tensor:
    """``y`` with its local photon counts set to the frame's: ``relu(y + up(blockmean(x - y)))``.

    The calibrated input's noise has zero mean (Poisson around the truth, read noise around 0,
    negatives kept), so its ``block``-pixel means estimate the truth's without bias; the network
    keeps every detail finer than ``block`` and takes the coarse level from the measurement, so
    neither a dark background lifted by the output's non-negativity nor a brightening at high
    counts survives. The correction's noise is the per-pixel noise over ``block`` (1/32 of it at
    32 px), smoothed by the bilinear upsampling. ``x_e`` and ``y`` are ``(N, 1, H, W)`` of one shape.
    """
    d = F.avg_pool2d(x_e - y, block, ceil_mode=True)
    return F.relu(y + F.interpolate(d, size=y.shape[-2:], mode="bilinear", align_corners=False))
