"""Attention rollout: how much each input token flows into each position through all layers.

Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020), section 3. A residual block
passes ``x + attn(x)``, so one layer mixes tokens by ``A = 0.5 W + 0.5 I`` (``W`` the attention weights
averaged over heads), and the layers compose by matrix product::

    Ã(l) = A(l) Ã(l - 1),    Ã(1) = A(1)

Shapes: B batch, H heads, L tokens (the class token first, at index 0, as in ViT and BERT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

HEAD_FUSIONS = ("mean", "max", "min")
CLASS_TOKEN = 0


def attention_rollout(
    maps: Sequence[Tensor], *, head_fusion: str = "mean", discard_ratio: float = 0.0, residual: bool = True
) -> Tensor:
    """Roll the attention maps of successive layers out into one token-to-token map.

    Per layer: fuse the heads, discard the weakest entries, add the identity for the residual path,
    renormalise every row to sum to 1, then multiply onto the layers below (Abnar & Zuidema 2020, eq. of
    section 3: ``Ã(l) = A(l) Ã(l-1)``). With mean fusion, no discard and ``residual=True`` each layer's
    matrix is exactly the paper's ``0.5 W + 0.5 I``.

    Discarding (the "tweak" vit-explain added for images): in each fused map of each batch item, the
    ``floor(discard_ratio * L * (L - 1))`` smallest entries outside column 0 are set to 0 before the
    identity is added. Column 0 is every token's attention to the class token. It is kept whole because
    in ViTs those entries are small, so a ratio-based cut would remove them first and sever the paths
    that run through the class token, the very paths whose sum ``class_token_map`` reads. The popular
    implementation means to protect the class token but keeps only the flat index 0, i.e. the single
    entry (0, 0), and discards in the first image of the batch only; here each batch item is cut alone.

    Args:
        maps: per layer, from the first to the last, the attention weights ``(B, H, L, L)`` or
            ``(H, L, L)``; rows are queries, columns keys. All layers must have the same shape.
        head_fusion: "mean" (the paper), "max" or "min" over the heads.
        discard_ratio: fraction in [0, 1) of each fused map's entries (outside column 0) to zero.
        residual: add the identity before renormalising (the paper); False rolls the raw maps.

    Returns:
        ``(B, L, L)`` (or ``(L, L)`` for unbatched maps): row i is how much each input token
        contributes to position i after the last layer; every row sums to 1.

    Raises:
        ValueError: no maps, a map that is not ``([B,] H, L, L)``, layers of different shapes, an
            unknown ``head_fusion``, or ``discard_ratio`` outside [0, 1).
    """
    shape = _check_maps(maps)
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    size = shape[-1]
    eye = torch.eye(size, dtype=maps[0].dtype, device=maps[0].device)
    rolled = None
    for layer in maps:
        layer = layer if layer.ndim == 4 else layer.unsqueeze(0)  # (B, H, L, L)
        fused = _fuse_heads(layer, head_fusion)  # (B, L, L)
        if discard_ratio > 0:
            fused = _discard_lowest(fused, discard_ratio)
        step = fused + eye if residual else fused
        step = step / step.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(step.dtype).tiny)
        rolled = step if rolled is None else step @ rolled  # (B, L, L)
    return rolled if len(shape) == 4 else rolled.squeeze(0)


def class_token_map(rolled: Tensor, grid: tuple[int, int]) -> Tensor:
    """The class token's row of a rolled-out (or one layer's) map, without itself, on the patch grid.

    Args:
        rolled: ``(B, L, L)`` or ``(L, L)`` with the class token at index 0 and ``L - 1`` patches after
            it in row-major order.
        grid: ``(gh, gw)`` patches per column and per row; ``gh * gw`` must equal ``L - 1``.

    Returns:
        ``(B, gh, gw)`` or ``(gh, gw)``: how much each patch flows into the class token (not rescaled).
    """
    if rolled.ndim not in (2, 3) or rolled.shape[-1] != rolled.shape[-2]:
        raise ValueError(f"rolled must be (B, L, L) or (L, L), got shape {tuple(rolled.shape)}")
    gh, gw = grid
    patches = rolled.shape[-1] - 1
    if gh * gw != patches:
        raise ValueError(f"grid {gh}x{gw} holds {gh * gw} patches, but the map has {patches} (L - 1)")
    row = rolled[..., CLASS_TOKEN, CLASS_TOKEN + 1 :]  # (B, L-1) or (L-1,)
    return row.reshape(*row.shape[:-1], gh, gw)  # (B, gh, gw) or (gh, gw)


def _check_maps(maps: Sequence[Tensor]) -> tuple[int, ...]:
    """The common shape of the layers' maps, after checking that they are ``([B,] H, L, L)``."""
    if len(maps) == 0:
        raise ValueError("attention_rollout needs at least one layer's map, got none")
    shape = tuple(maps[0].shape)
    for index, layer in enumerate(maps):
        if layer.ndim not in (3, 4) or layer.shape[-1] != layer.shape[-2]:
            raise ValueError(f"map of layer {index} must be (B, H, L, L) or (H, L, L), got shape {tuple(layer.shape)}")
        if tuple(layer.shape) != shape:
            raise ValueError(f"map of layer {index} has shape {tuple(layer.shape)}, layer 0 has {shape}")
    return shape


def _fuse_heads(layer: Tensor, head_fusion: str) -> Tensor:
    """``(B, H, L, L) -> (B, L, L)`` by the mean, max or min over heads."""
    if head_fusion == "mean":
        return layer.mean(dim=1)
    return layer.amax(dim=1) if head_fusion == "max" else layer.amin(dim=1)


def _discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the ``floor(ratio * L * (L - 1))`` smallest entries outside column 0 of each ``(L, L)`` map."""
    batch, size, _ = fused.shape
    others = fused[..., CLASS_TOKEN + 1 :].reshape(batch, -1)  # (B, L*(L-1))
    count = int(ratio * others.shape[-1])
    if count == 0:
        return fused
    lowest = others.topk(count, dim=-1, largest=False).indices  # (B, count)
    kept = others.scatter(-1, lowest, 0.0).reshape(batch, size, size - 1)  # (B, L, L-1)
    return torch.cat([fused[..., : CLASS_TOKEN + 1], kept], dim=-1)  # (B, L, L)
