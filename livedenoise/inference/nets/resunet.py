"""RESUNET: a U-Net whose blocks are residual channel-attention blocks (Xypakis et al. 2023).

The U-Net gives multi-scale context, the RCAN-style residual channel-attention blocks
(conv-ReLU-conv, squeeze-and-excitation channel attention, identity skip) give the
denoising power. Inputs are photon counts: the network sees the Anscombe transform of
the photoelectrons (noise ~unit variance at every level), predicts a residual
correction in that domain, and maps back to photoelectrons with a smooth, non-negative
inverse, so input and output are photoelectrons and the output is >= 0.

Layout for ``channels=(32, 64, 128)``: head conv, encoder levels at full, 1/2 and 1/4
resolution (``enc_blocks`` RCABs each, stride-2 conv down), ``mid_blocks`` RCABs at
the coarsest level, decoder mirrored (transposed conv up, skip concatenation, 1x1
reduction, ``dec_blocks`` RCABs), tail conv. About 1.4M parameters with the defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from livedenoise.inference.nets._common import (
    ANSCOMBE_OFFSET,
    check_input,
    keep_flux,
    pad_to_multiple,
    to_vst,
)

__all__ = ["RCAB", "ResUNet"]


def _as_seen_by_body(z: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The Anscombe image ``z`` rounded as the body sees it, for the residual skip ``z + body(f)``.

    In bfloat16 (8 significant bits) ``z - 4`` is rounded to steps of up to 1/4 (at 500 e-)
    before the body sees it. The body removes noise from what it sees, so with the exact ``z``
    on the skip the rounding error would pass into the output untouched; with the rounded
    ``z`` it is denoised like the rest. Float32 weights and no autocast: ``z`` itself. Under
    autocast the first convolution rounds its input to the autocast type, so the same applies.
    """
    low = f.dtype
    if low == z.dtype and torch.is_autocast_enabled(z.device.type):
        low = torch.get_autocast_dtype(z.device.type)
    if low == z.dtype:
        return z
    return (z - 4.0).to(low).to(z.dtype) + 4.0


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pool, bottleneck MLP, sigmoid gate."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * w


class RCAB(nn.Module):
    """Residual channel-attention block (Zhang et al., RCAN, 2018)."""

    def __init__(self, channels: int, reduction: int = 8, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            ChannelAttention(channels, reduction),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


def _stage(channels: int, n: int, reduction: int) -> nn.Sequential:
    return nn.Sequential(*[RCAB(channels, reduction, res_scale=0.5) for _ in range(n)])


class ResUNet(nn.Module):
    """U-Net of residual channel-attention blocks.

    Parameters
    ----------
    channels : sequence of int
        Width at each resolution level, full resolution first.
    enc_blocks, dec_blocks : int
        RCABs per encoder / decoder level.
    mid_blocks : int
        RCABs at the coarsest level.
    reduction : int
        Channel-attention reduction ratio.
    unshuffle : int
        Pixel-unshuffle factor of the front end (1: none). With ``r > 1`` the Anscombe
        image is folded into ``r*r`` channels at ``1/r`` resolution before the head and
        unfolded after the tail, so the whole U-Net runs on ``1/r^2`` of the pixels: the
        fast live network is this one with ``unshuffle=4``.
    flux_block : int
        0: off. Otherwise the output's ``flux_block``-pixel local means are set to the input's
        (:func:`~livedenoise.inference.nets._common.keep_flux`): photon counts kept at that scale.
    """

    def __init__(
        self,
        channels: tuple[int, ...] | list[int] = (32, 64, 128),
        enc_blocks: int = 1,
        dec_blocks: int = 1,
        mid_blocks: int = 3,
        reduction: int = 8,
        unshuffle: int = 1,
        flux_block: int = 0,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2 or min(channels) < 4:
            raise ValueError(f"channels must list >= 2 widths >= 4, got {channels}")
        unshuffle = int(unshuffle)
        if unshuffle < 1:
            raise ValueError(f"unshuffle must be >= 1, got {unshuffle}")
        self.unshuffle = unshuffle
        if int(flux_block) < 0:
            raise ValueError(f"flux_block must be >= 0 (0: off), got {flux_block}")
        self.flux_block = int(flux_block)
        self.multiple = unshuffle * 2 ** (len(channels) - 1)
        self.head = nn.Conv2d(unshuffle * unshuffle, channels[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i, c in enumerate(channels[:-1]):
            self.enc.append(_stage(c, enc_blocks, reduction))
            self.down.append(nn.Conv2d(c, channels[i + 1], 3, stride=2, padding=1))
        self.mid = _stage(channels[-1], mid_blocks, reduction)
        self.up = nn.ModuleList()
        self.reduce = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(channels) - 2, -1, -1):
            c = channels[i]
            self.up.append(nn.ConvTranspose2d(channels[i + 1], c, 2, stride=2))
            self.reduce.append(nn.Conv2d(2 * c, c, 1))
            self.dec.append(_stage(c, dec_blocks, reduction))
        self.tail = nn.Conv2d(channels[0], unshuffle * unshuffle, 3, padding=1)
        with torch.no_grad():  # start as the identity in the Anscombe domain
            self.tail.weight.mul_(0.1)
            assert self.tail.bias is not None
            self.tail.bias.zero_()

    def forward(self, x_e: torch.Tensor) -> torch.Tensor:
        """Restore ``(N, 1, H, W)`` photoelectrons."""
        check_input(x_e)
        z, (h, w) = pad_to_multiple(to_vst(x_e), self.multiple)
        # the transforms run in the input's precision, the body in the weights' (bf16 inference)
        f = (z - 4.0).to(self.head.weight.dtype)  # centre the typical Anscombe range
        z = _as_seen_by_body(z, f)
        if self.unshuffle > 1:
            f = F.pixel_unshuffle(f, self.unshuffle)
        f = self.head(f)
        skips = []
        for enc, down in zip(self.enc, self.down):
            f = enc(f)
            skips.append(f)
            f = down(f)
        f = self.mid(f)
        for up, reduce, dec in zip(self.up, self.reduce, self.dec):
            f = up(f)
            f = dec(reduce(torch.cat([f, skips.pop()], dim=1)))
        f = self.tail(f)
        if self.unshuffle > 1:
            f = F.pixel_shuffle(f, self.unshuffle)
        o = z + f.to(z.dtype)
        y = F.softplus(0.25 * F.softplus(o, beta=2.0) ** 2 - ANSCOMBE_OFFSET, beta=4.0)[..., :h, :w]
        return keep_flux(x_e, y, self.flux_block) if self.flux_block else y
