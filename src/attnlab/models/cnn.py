"""Small ResNet-style image classifiers with attention inside every residual block.

Notation: B batch, C channels, H x W feature map, K classes.

The attention module sits on the residual branch, before the addition, as in SE-ResNet (Hu et
al., 2018, Fig. 3) and CBAM (Woo et al., 2018, Fig. 3): out = ReLU(x + Attn(F(x))).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import Tensor, nn

from attnlab.config import ConfigMixin
from attnlab.layers.channel_attention import SEBlock
from attnlab.layers.dropout import Dropout
from attnlab.layers.spatial_attention import SpatialAttention

logger = logging.getLogger(__name__)

ATTENTIONS = ("none", "se", "spatial", "cbam")


@dataclass
class AttentionCNNConfig(ConfigMixin):
    """The hyper-parameters of an ``AttentionCNN``.

    Args:
        in_channels: image channels.
        num_classes: K.
        channels: output channels of each stage; every stage after the first halves H and W.
        blocks: residual blocks per stage (same length as ``channels``).
        attention: ``"none"``, ``"se"`` (SEBlock), ``"spatial"`` (SpatialAttention, F * M + F) or
            ``"cbam"`` (CBAM's channel gate then its spatial gate, F' = M * F each).
        reduction: r of the channel gates.
        spatial_kernel: kernel size of the spatial mask's convolution.
        dropout: dropout before the classifier.
    """

    in_channels: int = 3
    num_classes: int = 10
    channels: tuple[int, ...] = (16, 32, 64)
    blocks: tuple[int, ...] = (1, 1, 1)
    attention: str = "se"
    reduction: int = 8
    spatial_kernel: int = 7
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channels, self.blocks = tuple(self.channels), tuple(self.blocks)  # YAML gives lists
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if not self.channels or len(self.channels) != len(self.blocks):
            raise ValueError(f"channels {self.channels} and blocks {self.blocks} must be non-empty and of one length")
        if min(*self.channels, *self.blocks, self.in_channels, self.num_classes) <= 0:
            raise ValueError(f"sizes must be positive, got channels {self.channels}, blocks {self.blocks}")
        for name in ("reduction", "spatial_kernel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1)")


class BlockAttention(nn.Module):
    """The attention of one residual block: a channel gate, a spatial mask, both (CBAM) or neither."""

    def __init__(self, channels: int, kind: str, reduction: int, spatial_kernel: int) -> None:
        super().__init__()
        self.channel = None
        self.spatial = None
        if kind in ("se", "cbam"):
            self.channel = SEBlock(channels, reduction, pool="avg_max" if kind == "cbam" else "avg")
        if kind in ("spatial", "cbam"):
            self.spatial = SpatialAttention(
                channels, mode=kind if kind == "cbam" else "conv", kernel_size=spatial_kernel, residual=kind != "cbam"
            )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``: the channel gate first, then the spatial mask."""
        if self.channel is not None:
            x = self.channel(x)
        if self.spatial is not None:
            x = self.spatial(x)
        return x


class ResidualBlock(nn.Module):
    """A basic ResNet block (He et al., 2016) with attention on the residual branch.

    y = ReLU(shortcut(x) + Attn(BN(conv3x3(ReLU(BN(conv3x3(x))))))), the shortcut a strided 1x1
    convolution with BN when the shape changes.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: 2 halves H and W.
        attention: a ``BlockAttention``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, attention: BlockAttention) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.attention = attention
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        return self.act(out + self.shortcut(x))


class AttentionCNN(nn.Module):
    """A small ResNet classifier with SE, spatial or CBAM attention in each residual block.

    stem (conv3x3-BN-ReLU) -> stages of ``ResidualBlock`` -> global average pool -> linear.

    Args:
        config: an ``AttentionCNNConfig``.
    """

    def __init__(self, config: AttentionCNNConfig) -> None:
        super().__init__()
        self.config = c = config
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_channels, c.channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(c.channels[0]),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.ModuleList(self._build_blocks(c))
        self.head_drop = Dropout(c.dropout)
        self.head = nn.Linear(c.channels[-1], c.num_classes)

    @staticmethod
    def _build_blocks(c: AttentionCNNConfig) -> list[ResidualBlock]:
        blocks, in_channels = [], c.channels[0]
        for stage, (channels, count) in enumerate(zip(c.channels, c.blocks)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                attention = BlockAttention(channels, c.attention, c.reduction, c.spatial_kernel)
                blocks.append(ResidualBlock(in_channels, channels, stride, attention))
                in_channels = channels
        return blocks

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C_last, H', W')``."""
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.in_channels:
            raise ValueError(f"AttentionCNN expects images (B, {c.in_channels}, H, W), got shape {tuple(images.shape)}")
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return x

    def forward_head(self, features: Tensor, *, pre_logits: bool = False) -> Tensor:
        """Global average pool ``(B, C, H, W) -> (B, C)`` and classify to ``(B, K)``."""
        pooled = self.head_drop(features.mean(dim=(2, 3)))  # (B, C)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: Tensor) -> Tensor:
        """Classify images ``(B, C, H, W)``: logits ``(B, K)``."""
        return self.forward_head(self.forward_features(images))

    def attention_sites(self) -> list[tuple[str, int, nn.Module]]:
        """Where ``attnlab.capture`` finds attention, per residual block: the SE channel gate
        (``se_gate``, ``(B, C)``) and the spatial mask (``spatial_mask``, ``(B, 1, H, W)``)."""
        sites = []
        for i, block in enumerate(self.blocks):
            if block.attention.channel is not None:
                sites.append(("se_gate", i, block.attention.channel))
            if block.attention.spatial is not None:
                sites.append(("spatial_mask", i, block.attention.spatial))
        return sites
