"""Spatial attention: a one-channel mask over the feature map that says where to look.

Notation: B batch, C channels, H x W feature map, M the mask (B, 1, H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MODES = ("conv", "cbam")


class SpatialAttention(nn.Module):
    """Gate every position of a feature map by a mask M in [0, 1].

    ``mode="conv"``: M = sigmoid(conv_k(F)), a k x k convolution from the C channels to one.
    ``mode="cbam"``: M = sigmoid(conv_7x7([AvgPool_c(F); MaxPool_c(F)])), the convolution over the
    channel-wise mean and max maps (Woo et al., 2018, Eq. 3).
    The output is F' = F * M + F with ``residual=True`` (the skip keeps features where the mask is
    near zero, as in residual attention, Wang et al., 2017, Eq. 3), or CBAM's F' = M * F.

    Args:
        channels: C.
        mode: how M is computed, ``"conv"`` or ``"cbam"``.
        kernel_size: k, odd (7 in CBAM).
        residual: add F back after gating.
    """

    def __init__(self, channels: int, mode: str = "conv", kernel_size: int = 7, residual: bool = True) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive to keep H x W, got {kernel_size}")
        self.channels, self.mode, self.residual = channels, mode, residual
        in_maps = channels if mode == "conv" else 2
        self.conv = nn.Conv2d(in_maps, 1, kernel_size, padding=kernel_size // 2)

    def mask(self, x: Tensor) -> Tensor:
        """M, ``(B, C, H, W) -> (B, 1, H, W)`` with values in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"SpatialAttention expects features (B, {self.channels}, H, W), got shape {tuple(x.shape)}"
            )
        if self.mode == "cbam":
            x = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return torch.sigmoid(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)`` (the mask: ``mask``, or ``attnlab.capture``)."""
        mask = self.mask(x)
        out = x * mask + x if self.residual else x * mask
        return out

    def extra_repr(self) -> str:
        kernel = self.conv.kernel_size[0]
        return f"channels={self.channels}, mode={self.mode}, kernel_size={kernel}, residual={self.residual}"
