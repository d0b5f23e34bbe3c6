"""The Vision Transformer, ViT (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words").

Notation: B batch, C channels, H x W image, P patch size, N = HW / P^2 patches, T = N + 1 tokens
(the class token first), E embedding size, H heads (in attention maps), K classes.

Parameter names follow timm's ``VisionTransformer`` (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.i``, ``norm``, ``fc_norm``, ``head``); each block is the shared
pre-norm ``EncoderLayer`` (``norm1``, ``self_attn`` laid out as ``MultiHeadAttention``, ``norm2``,
``ffn``). ``attnlab.models.vit_interop`` maps timm and Hugging Face checkpoints onto it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnlab.config import ConfigMixin
from attnlab.layers.dropout import Dropout
from attnlab.layers.feedforward import Linear
from attnlab.layers.patch_embed import PatchEmbed, resample_position_embeddings
from attnlab.layers.transformer_blocks import EncoderLayer

logger = logging.getLogger(__name__)

POOLS = ("cls", "mean")


@dataclass
class ViTConfig(ConfigMixin):
    """The hyper-parameters of a ``ViT`` (saved in checkpoints via ``to_dict``).

    ``from_preset`` reads the named sizes of ``VIT_CONFIGS``.

    Args:
        image_size: the configured (square) input size; position embeddings are learned for
            its patch grid and resampled for other sizes.
        patch_size: P; must divide ``image_size``.
        in_channels: C.
        num_classes: K; 0 gives no head (``forward`` returns the pooled features).
        embed_dim: E (D in the paper).
        depth: L, the number of encoder blocks.
        num_heads: heads per block; must divide ``embed_dim``.
        mlp_ratio: MLP hidden size / E (4 in the paper).
        dropout: dropout after the embeddings, inside the MLP and on the block outputs.
        attn_dropout: dropout on the attention weights.
        pool: ``"cls"`` (the class token, the paper) or ``"mean"`` (average of the patch tokens;
            the final LayerNorm then applies after pooling, as timm's ``fc_norm``).
        layer_norm_eps: epsilon of every LayerNorm (1e-6 in the original JAX code and timm,
            1e-12 in Hugging Face's ``ViTConfig``).
        fused_attn: the attention's ``fused`` switch: None lets the core choose (on CPU the
            explicit path below 256 tokens), True forces SDPA (faster for CPU inference at ViT
            sizes, much slower for bf16 training), False forbids it.
    """

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    pool: str = "cls"
    layer_norm_eps: float = 1e-6
    fused_attn: bool | None = None

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_channels", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be > 0")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes ({self.num_classes}) must be >= 0 (0: no head)")
        for name in ("mlp_ratio", "layer_norm_eps"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} ({getattr(self, name)}) must be > 0")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be in [0, 1)")

    @property
    def mlp_dim(self) -> int:
        """The MLP hidden size, ``int(embed_dim * mlp_ratio)``."""
        return int(self.embed_dim * self.mlp_ratio)


VIT_CONFIGS: dict[str, ViTConfig] = {
    # The paper's Table 1 sizes (Ti and S from DeiT) at 224 x 224, patch 16.
    "vit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    # Small models for 28 x 28 grey images (MNIST, Fashion-MNIST): 49 or 16 patches.
    "vit_mnist_patch4_28": ViTConfig(
        image_size=28, patch_size=4, in_channels=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0
    ),
    "vit_mnist_patch7_28": ViTConfig(
        image_size=28, patch_size=7, in_channels=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0
    ),
    # A very small model for 8 x 8 grey digits (scikit-learn's load_digits): 16 patches.
    "vit_digits_patch2_8": ViTConfig(
        image_size=8, patch_size=2, in_channels=1, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0
    ),
}
# The presets are instances of the class, so they join it once it exists.
ViTConfig.presets = {name: config.to_dict() for name, config in VIT_CONFIGS.items()}


def vit_config(name: str, **overrides: Any) -> ViTConfig:
    """``ViTConfig.from_preset``: a named config with fields replaced.

    E.g. ``vit_config("vit_tiny_patch16_224", num_classes=10)``.

    Raises:
        UnknownKeyError: an unknown name (also a ``ValueError``); the message lists the names.
    """
    return ViTConfig.from_preset(name, **overrides)


class ViT(nn.Module):
    """Vision Transformer: patch tokens and a class token through a Transformer encoder.

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos (Dosovitskiy et al., 2021, Eq. 1), L pre-norm
    ``EncoderLayer`` blocks (Eq. 2-3), then y = LN(z_L^0) (Eq. 4) and a linear head. Position
    embeddings are learned for the configured grid and bicubically resampled when the input has
    another size (Section 3.2).

    Args:
        config: a ``ViTConfig``.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbed(c.image_size, c.patch_size, c.in_channels, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))  # x_class
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, c.embed_dim))  # E_pos
        self.pos_drop = Dropout(c.dropout)
        self.blocks = nn.ModuleList(self._build_block(c) for _ in range(c.depth))
        mean_pool = c.pool == "mean"
        self.norm = nn.Identity() if mean_pool else nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)
        self.fc_norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps) if mean_pool else nn.Identity()
        self.head_drop = Dropout(c.dropout)
        self.head = Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self._init_weights()

    @staticmethod
    def _build_block(c: ViTConfig) -> EncoderLayer:
        """A pre-norm encoder block (Eq. 2-3): z' = MSA(LN(z)) + z, z = MLP(LN(z')) + z', GELU MLP."""
        block = EncoderLayer(
            c.embed_dim,
            c.num_heads,
            c.mlp_dim,
            dropout=c.dropout,
            attn_dropout=c.attn_dropout,
            activation="gelu",
            norm_first=True,
            layer_norm_eps=c.layer_norm_eps,
        )
        block.self_attn.fused = c.fused_attn
        return block

    def _init_weights(self) -> None:
        """timm's initialisation: truncated normal (std 0.02) for embeddings and linear layers."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def position_embeddings(self, grid: tuple[int, int]) -> Tensor:
        """E_pos for a patch grid ``(Gh, Gw)``: ``(1, 1 + Gh * Gw, E)``, resampled if not the configured grid."""
        return resample_position_embeddings(self.pos_embed, self.patch_embed.grid_size, grid, self.num_prefix_tokens)

    def embed(self, images: Tensor) -> Tensor:
        """z_0 (Eq. 1): ``(B, C, H, W) -> (B, T, E)``."""
        self._check_images(images)
        grid = self.patch_embed.patch_grid(images.shape[2], images.shape[3])
        x = self.patch_embed(images)  # (B, N, E)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, E)
        x = torch.cat([cls, x], dim=1) + self.position_embeddings(grid)  # (B, T, E)
        return self.pos_drop(x)

    def encode(self, images: Tensor) -> Tensor:
        """The tokens z_L after the final norm: ``(B, C, H, W) -> (B, T, E)``."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, T, E)``, the encoder output (after the final LayerNorm for ``pool="cls"``)."""
        return self.encode(images)

    def forward_head(self, tokens: Tensor, *, pre_logits: bool = False) -> Tensor:
        """Pool ``(B, T, E)`` to ``(B, E)`` and classify to ``(B, K)`` (``(B, E)`` with ``pre_logits``)."""
        pooled = tokens[:, self.num_prefix_tokens :].mean(dim=1) if self.config.pool == "mean" else tokens[:, 0]
        pooled = self.head_drop(self.fc_norm(pooled))  # (B, E)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, images: Tensor) -> Tensor:
        """Classify images ``(B, C, H, W)`` (H and W multiples of the patch size): logits ``(B, K)``."""
        return self.forward_head(self.encode(images))

    def attention_sites(self) -> list[tuple[str, int, nn.Module]]:
        """Where ``attnlab.capture`` finds attention: each block's self-attention (``vit``), whose
        maps are ``(B, H, T, T)``, T = 1 + HW / P^2, token 0 the class token."""
        return [("vit", i, block.self_attn) for i, block in enumerate(self.blocks)]

    def _check_images(self, images: Tensor) -> None:
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.in_channels:
            raise ValueError(
                f"ViT expects images (B, {c.in_channels}, H, W) with H, W multiples of {c.patch_size} "
                f"(configured {c.image_size}x{c.image_size}), got shape {tuple(images.shape)}"
            )

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ViT:
        """A freshly initialised model of a named size, e.g. ``ViT.from_name("vit_mnist_patch4_28")``."""
        return cls(vit_config(name, **overrides))
