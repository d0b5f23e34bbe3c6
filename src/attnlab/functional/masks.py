"""Masks for attention, in the convention of ``F.scaled_dot_product_attention``.

A mask broadcasts to the scores ``(..., Lq, Lk)`` and is either boolean, ``True`` where a query
*may attend* to a key, or floating point, a bias added to the scores (``-inf`` masks out).
``torch.nn.MultiheadAttention`` uses the opposite boolean convention (``True`` = masked out);
``MultiHeadAttention`` converts at its door, so everything below it speaks this one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(query_len: int, key_len: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean causal mask ``(Lq, Lk)``: query i may attend to key j iff j <= i + (Lk - Lq).

    The last query is aligned with the last key, which is what decoding with a key/value cache
    needs (queries are the newest ``Lq`` of ``Lk`` positions). For ``Lq == Lk`` this is the usual
    lower-triangular mask.
    """
    key_len = query_len if key_len is None else key_len
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(key_len - query_len)


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """Boolean key mask ``(B, L)``, ``True`` at the first ``lengths[b]`` positions of each row."""
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(-1)


def check_mask(mask: Tensor, scores_shape: torch.Size | tuple[int, ...], name: str = "mask") -> None:
    """Raise a ``ValueError`` naming the shapes unless ``mask`` is bool/float and broadcasts to the scores."""
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"{name} must be a Tensor (bool, True = may attend, or a float bias), got {type(mask).__name__}; "
            f"convert it, e.g. torch.as_tensor({name})"
        )
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name} must be bool (True = may attend) or a float bias, got dtype {mask.dtype}")
    if mask.ndim > len(scores_shape):
        raise ValueError(f"{name} of shape {tuple(mask.shape)} has more dims than the scores {tuple(scores_shape)}")
    if not all(m in (1, s) for m, s in zip(reversed(mask.shape), reversed(scores_shape))):
        raise ValueError(
            f"{name} of shape {tuple(mask.shape)} does not broadcast to the scores (..., Lq, Lk) = "
            f"{tuple(scores_shape)}"
        )


def merge_masks(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    """One mask that allows what both allow: ``&`` of booleans, otherwise the sum of the biases."""
    if first is None:
        return second
    if second is None:
        return first
    if first.dtype == torch.bool and second.dtype == torch.bool:
        return first & second
    dtype = first.dtype if first.is_floating_point() else second.dtype
    return to_bias(first, dtype) + to_bias(second, dtype)


def to_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A float bias for a mask: 0 where allowed, ``-inf`` where a boolean mask forbids."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask.to(dtype)


def guard_empty_rows(mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """Open every query row that has no allowed key, and say which rows those were.

    A row with all keys masked would give ``softmax(-inf, ..., -inf) = NaN`` in forward and
    backward. The returned mask lets such rows see every key (finite numbers everywhere); the
    caller zeroes them afterwards with the second value, a boolean ``(..., Lq, 1)`` that is
    ``True`` for rows that keep their weights, or None when no row was empty.
    """
    if mask.dtype == torch.bool:
        keep = mask.any(dim=-1, keepdim=True)
    else:
        keep = (mask != float("-inf")).any(dim=-1, keepdim=True)
    if mask.device.type == "cpu" and bool(keep.all()):  # a shortcut that would cost a GPU a host sync
        return mask, None
    if mask.dtype == torch.bool:
        return mask | ~keep, keep
    return mask.masked_fill(~keep, 0.0), keep


def apply_mask(scores: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Scores with the mask applied (``-inf`` or the bias added) and the rows to zero afterwards.

    The result keeps the scores' dtype: a float32 bias on bf16 scores must not turn the weights
    into float32, which the bf16 values would then refuse to multiply.
    """
    if mask is None:
        return scores, None
    mask, keep = guard_empty_rows(mask)
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf")), keep
    return (scores + mask).to(scores.dtype), keep


def torch_masks_to_allowed(
    key_padding_mask: Tensor | None, attn_mask: Tensor | None, batch: int, heads: int, lq: int, lk: int
) -> Tensor | None:
    """``torch.nn.MultiheadAttention``'s masks (bool ``True`` = masked out, or float biases) as one
    mask in this package's sense (bool ``True`` = may attend), ``(B, H | 1, Lq | 1, Lk)``.

    Args:
        key_padding_mask: ``(B, Lk)``.
        attn_mask: ``(Lq, Lk)``, ``(B * H, Lq, Lk)`` or ``(B, H, Lq, Lk)``.
        batch, heads, lq, lk: B, H, Lq and Lk, for the checks.
    """
    for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if mask is not None and not isinstance(mask, Tensor):
            raise TypeError(
                f"{name} must be a Tensor (bool, True = masked out, or a float bias), got {type(mask).__name__}"
            )
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (batch, lk):
            raise ValueError(
                f"key_padding_mask must be (B, Lk) = ({batch}, {lk}), got shape {tuple(key_padding_mask.shape)}"
            )
        key_padding_mask = _allowed(key_padding_mask, "key_padding_mask")[:, None, None, :]  # (B, 1, 1, Lk)
    if attn_mask is not None:
        if attn_mask.shape == (batch * heads, lq, lk):
            attn_mask = attn_mask.view(batch, heads, lq, lk)
        elif attn_mask.shape not in ((lq, lk), (batch, heads, lq, lk)):
            raise ValueError(
                f"attn_mask must be (Lq, Lk) = ({lq}, {lk}), (B*H, Lq, Lk) = ({batch * heads}, {lq}, {lk}) or "
                f"(B, H, Lq, Lk), got shape {tuple(attn_mask.shape)}"
            )
        attn_mask = _allowed(attn_mask, "attn_mask")
    return merge_masks(key_padding_mask, attn_mask)


def _allowed(mask: Tensor, name: str) -> Tensor:
    """torch's masked-out convention to ours: bool ``True`` = may attend; float biases stay."""
    if mask.dtype == torch.bool:
        return ~mask
    if mask.is_floating_point():
        return mask
    raise TypeError(f"{name} must be bool (True = masked out) or a float bias, got dtype {mask.dtype}")
