"""RLN: the Richardson-Lucy network (Li et al., Nat Methods 19:1427, 2022), in 2D.

The Richardson-Lucy update ``x <- x * BP(y / FP(x))`` built into a small network:

- **estimation branch** at half resolution: 2x average pool of the input, forward
  projection (three convolutions initialised as Gaussians: the PSF), channel mean,
  input / (estimate + eps), backward projection (three convolutions), transposed
  convolution x2 back to full resolution, times the input;
- **update branch** at full resolution on the estimation output ``E1``: the same
  FP -> divide -> BP pattern, multiplied with ``E1``;
- **merge**: both branches concatenated, two convolutions, channel mean.

Softplus activations (the paper's; ``activation="softplus"``, the default) and batch
norm, no convolution biases (as in the reference code), so every intermediate is
positive and the divisions are safe. Softplus (``log1p(exp(x))``) is ~40% of a 512x512
frame's CPU time (~1.6 ms per 2M values on a 2-core CPU, ReLU ~0.17 ms), hence
``activation="relu"``, the fast live variant: ReLU on the hidden layers, softplus kept
where it matters, on two kinds of layer:

- the last forward-projection layer: its channel mean is the denominator of the RL
  ratio (a ReLU there could give exactly 0, a ratio of ``input / EPS``);
- the last merge layer, the network's output: no pixel loses its gradient under the
  Poisson loss (ReLU everywhere trained ~0.4 dB worse with v1's recipe; with these two
  softplus layers ~0.25 dB worse, at ~30 ms instead of ~45 ms per 512x512 frame in bf16).

The other intermediates are then >= 0 instead of > 0; nothing divides by them. The network
works on the Anscombe transform of the photoelectrons (see :mod:`livedenoise.inference.nets`),
divided by its per-image mean (batch norm would otherwise wash the photon level out;
the mean is multiplied back at the end), and maps its output back, so input and output
are photoelectrons and the output is >= 0.

With the paper's widths (4 forward-, 8 backward-projection channels) and 3x3 kernels
the 2D network has ~5.3k parameters (the 3D original, with 3x3x3 kernels, ~16k);
that keeps a 512x512 frame within tens of milliseconds on a 2-core CPU.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from livedenoise.inference.nets._common import check_input, from_vst, keep_flux, pad_to_multiple, to_vst

__all__ = ["ACTIVATIONS", "RLN"]

EPS = 1e-3

ACTIVATIONS = ("softplus", "relu")
"""Names accepted by ``RLN(activation=...)``."""


def _activation(name: str) -> nn.Module:
    if name == "softplus":
        return nn.Softplus()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown RLN activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


def _conv_bn(cin: int, cout: int, k: int, activation: str = "softplus") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        _activation(activation),
    )


def _gaussian_init(conv: nn.Conv2d, sigma: float, generator: torch.Generator) -> None:
    if conv.weight.is_meta:  # a shape-only skeleton (model cards are checked on one): nothing to fill
        return
    k = conv.kernel_size[0]
    c = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    g = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * sigma**2))
    g = g / g.sum() / conv.in_channels
    noise = 1.0 + 0.1 * torch.randn(conv.weight.shape, generator=generator)
    with torch.no_grad():
        conv.weight.copy_(g * noise)


class _Projection(nn.Module):
    """Three conv-BN-activation layers; ``mean`` reduces to one channel (forward projection).

    A forward projection (``mean=True``) always ends in softplus: its output is a denominator.
    """

    def __init__(self, cin: int, width: int, k: int, mean: bool, activation: str = "softplus") -> None:
        super().__init__()
        last = "softplus" if mean else activation
        self.layers = nn.Sequential(
            _conv_bn(cin, width, k, activation),
            _conv_bn(width, width, k, activation),
            _conv_bn(width, width, k, last),
        )
        self.mean = mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return y.mean(dim=1, keepdim=True) if self.mean else y


class RLN(nn.Module):
    """Richardson-Lucy network, 2D.

    Parameters
    ----------
    fp_channels : int
        Width of the forward-projection convolutions (paper: 4).
    bp_channels : int
        Width of the backward-projection convolutions (paper: 8).
    merge_channels : int
        Width of the merge convolutions.
    kernel : int
        Convolution kernel size (odd).
    activation : str
        ``"softplus"`` (the paper's, default) or ``"relu"`` (faster on CPUs; the forward
        projections and the output layer keep softplus, see the module docstring).
    flux_block : int
        0: off. Otherwise the output's ``flux_block``-pixel local means are set to the input's
        (:func:`~livedenoise.inference.nets._common.keep_flux`; for deconvolution too: a blur
        keeps photon counts, so the deconvolved image has the input's at that scale).
    """

    multiple = 2

    def __init__(
        self,
        fp_channels: int = 4,
        bp_channels: int = 8,
        merge_channels: int = 8,
        kernel: int = 3,
        activation: str = "softplus",
        flux_block: int = 0,
    ) -> None:
        super().__init__()
        if kernel % 2 == 0 or kernel < 1:
            raise ValueError(f"kernel must be a positive odd number, got {kernel}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown RLN activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
            )
        self.activation = activation
        if int(flux_block) < 0:
            raise ValueError(f"flux_block must be >= 0 (0: off), got {flux_block}")
        self.flux_block = int(flux_block)
        k, act = kernel, activation
        # estimation branch (half resolution)
        self.fp_est = _Projection(1, fp_channels, k, mean=True, activation=act)
        self.bp_est = _Projection(1, bp_channels, k, mean=False, activation=act)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(bp_channels, bp_channels, 2, stride=2, bias=False),
            nn.BatchNorm2d(bp_channels),
            _activation(act),
        )
        # update branch (full resolution)
        self.fp_upd = _Projection(1, fp_channels, k, mean=True, activation=act)
        self.bp_upd = _Projection(1, bp_channels, k, mean=False, activation=act)
        # merge
        self.merge = nn.Sequential(
            _conv_bn(2 * bp_channels, merge_channels, k, act),
            _conv_bn(merge_channels, merge_channels, k, "softplus"),  # the output layer: softplus always
        )
        gen = torch.Generator().manual_seed(0)
        for proj in (self.fp_est, self.fp_upd):
            for layer in proj.layers:
                _gaussian_init(cast(nn.Conv2d, cast(nn.Sequential, layer)[0]), sigma=1.0, generator=gen)

    def forward(self, x_e: torch.Tensor, return_estimate: bool = False):
        """Restore ``(N, 1, H, W)`` photoelectrons; optionally also return the estimation-branch image."""
        check_input(x_e)
        z, (h, w) = pad_to_multiple(to_vst(x_e), self.multiple)
        # the transforms run in the input's precision, the core in the weights' (bf16 inference)
        # per-image scale: the core sees an image of mean ~1 whatever the photon level
        # (batch norm would otherwise wash the photon level out); multiplied back at the end
        scale = z.mean(dim=(2, 3), keepdim=True)
        z = (z / scale).to(next(self.merge.parameters()).dtype)
        # estimation branch
        zd = F.avg_pool2d(z, 2)
        est = self.fp_est(zd)
        ratio = zd / (est + EPS)
        e1 = self.up(self.bp_est(ratio)) * z  # (N, bp, H, W)
        e1m = e1.mean(dim=1, keepdim=True)
        # update branch
        fp = self.fp_upd(e1m)
        ratio2 = z / (fp + EPS)
        e2 = self.bp_upd(ratio2) * e1m
        # the mean over the output channels in float32: under bf16 inference each channel is
        # rounded to 8 significant bits, their float32 mean keeps finer steps (+0.02 dB, free)
        out = self.merge(torch.cat([e1, e2], dim=1)).float().mean(dim=1, keepdim=True)
        y = from_vst(out.to(x_e.dtype) * scale)[..., :h, :w]
        if self.flux_block:
            y = keep_flux(x_e, y, self.flux_block)
        if return_estimate:
            return y, from_vst(e1m.to(x_e.dtype) * scale)[..., :h, :w]
        return y

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"activation={self.activation}, parameters={n} ({n / 1e3:.1f}k)"
