"""Restoration networks: photoelectrons in, photoelectrons out.

Every network here takes a ``(N, 1, H, W)`` float32 tensor of photoelectrons (small
negatives from read noise allowed) and returns the estimate of the noise-free expected
photoelectrons, same shape, ``>= 0``. Any ``H, W`` works: networks pad internally to
their multiple and crop back.

Scale handling is inside the networks: a generalized-Anscombe-like variance-stabilising
front end (``2 sqrt(x + 3/8)``) so that shot noise has about unit variance at every
photon level, and the matching inverse at the output, so no percentile normalisation
is ever applied to the data.

``build_network(architecture, **arch_params)`` is the only constructor other modules
need; ``ARCHITECTURES`` lists the names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ARCHITECTURES", "build_network", "count_parameters", "fuse_for_inference"]

ARCHITECTURES = ("rln", "resunet")


def build_network(architecture: str, **arch_params: Any):
    """Build an untrained network.

    Parameters
    ----------
    architecture : str
        ``"rln"`` (Richardson-Lucy network, ~10-20k parameters, the fast live model)
        or ``"resunet"`` (U-Net of residual channel-attention blocks, ~1-2M parameters).
    **arch_params
        Constructor keyword arguments of that network (stored in the model card).

    Returns
    -------
    torch.nn.Module
    """
    if architecture == "rln":
        from livedenoise.inference.nets.rln import RLN

        return RLN(**arch_params)
    if architecture == "resunet":
        from livedenoise.inference.nets.resunet import ResUNet

        return ResUNet(**arch_params)
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")


def count_parameters(module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def fuse_for_inference(module):
    """A copy of ``module`` in eval mode with every (transposed) Conv2d + BatchNorm2d pair folded.

    Pairs are found as consecutive items of ``nn.Sequential`` containers. The output is numerically the same as ``module.eval()`` (up to
    float rounding).
    """
    import copy

    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(module).eval()
    with torch.no_grad():
        for seq in fused.modules():
            if not isinstance(seq, torch.nn.Sequential):
                continue
            items = list(seq)
            for i in range(len(items) - 1):
                conv, bn = items[i], items[i + 1]
                if isinstance(conv, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and isinstance(
                    bn, torch.nn.BatchNorm2d
                ):
                    transpose = isinstance(conv, torch.nn.ConvTranspose2d)
                    seq[i] = fuse_conv_bn_eval(conv, bn, transpose=transpose)
                    seq[i + 1] = torch.nn.Identity()
    return fused
