"""The contract every kernel keeps, and the small steps they share."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Kernel(Protocol):
    """softmax(Q K^T * scale + M) V (Vaswani et al., 2017, Eq. 1) on already checked inputs.

    Args:
        query: Q ``(..., Lq, d_k)``; key: K ``(..., Lk, d_k)``; value: V ``(..., Lk, d_v)``; their
            leading dims broadcast, ``Lq`` and ``Lk`` are at least 1.
        mask: broadcasting to ``(..., Lq, Lk)``: bool ``True`` = may attend, or a float bias.
        is_causal: also mask keys after each query, the last query aligned with the last key.
        dropout_p: dropout on the weights before they meet V.
        scale: the factor of the dot products, ``1 / sqrt(d_k)`` when None.
        need_weights: return A as well (pre-dropout).
        weights_average_dim: average the returned weights over this dim.

    Returns:
        ``(context (..., Lq, d_v), weights (..., Lq, Lk) or None)``; a query with no allowed key
        gets zero context and zero weights.
    """

    def __call__(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        dropout_p: float = 0.0,
        scale: float | None = None,
        need_weights: bool = False,
        weights_average_dim: int | None = None,
    ) -> tuple[Tensor, Tensor | None]: ...


def dropped(weights: Tensor, dropout_p: float) -> Tensor:
    """The weights as they meet V: with dropout when ``dropout_p > 0``."""
    return F.dropout(weights, dropout_p) if dropout_p > 0 else weights


def returned_weights(weights: Tensor, need_weights: bool, average_dim: int | None) -> Tensor | None:
    """What a kernel returns for its weights: None, the map, or its mean over ``average_dim``."""
    if not need_weights:
        return None
    return weights if average_dim is None else weights.mean(average_dim)


def mask_in(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A float bias in the scores' dtype (a bf16 product plus an fp32 bias would leave bf16); bool as is."""
    if mask is None or mask.dtype == torch.bool or mask.dtype == dtype:
        return mask
    return mask.to(dtype)


def batch_shape(query: Tensor, key: Tensor, value: Tensor) -> torch.Size:
    """The leading dims the three inputs broadcast to."""
    if query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        return query.shape[:-2]
    return broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])


def broadcast_shapes(*shapes: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes`` for concrete sizes, without its first-call import of sympy
    (tens of MB and a second); raises ``RuntimeError`` as it does when the shapes do not broadcast."""
    rank = max(len(shape) for shape in shapes)
    result = []
    for dim in range(-rank, 0):
        sizes = {shape[dim] for shape in shapes if len(shape) >= -dim} - {1}
        if len(sizes) > 1:
            raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast at dim {dim}")
        result.append(sizes.pop() if sizes else 1)
    return torch.Size(result)


def as_4d(query: Tensor, key: Tensor, value: Tensor, batch: torch.Size, mask: Tensor | None) -> tuple[Tensor, ...]:
    """(B, H, L, d) views for SDPA's kernels; leading dims beyond two are flattened into B."""
    if query.ndim <= 4 and query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        if query.ndim == 4 and (mask is None or mask.ndim == 4):
            return query, key, value, mask  # already SDPA's shapes
        pad = (1,) * (4 - query.ndim)
        q, k, v = (x.reshape(*pad, *x.shape) for x in (query, key, value))
        if mask is not None and mask.ndim < 4:  # SDPA wants a mask of the inputs' rank
            mask = mask.reshape(*(1,) * (4 - mask.ndim), *mask.shape)
        return q, k, v, mask
    q, k, v = (x.expand(*batch, *x.shape[-2:]).reshape(-1, 1, *x.shape[-2:]) for x in (query, key, value))
    if mask is not None:
        lq, lk = query.shape[-2], key.shape[-2]
        mask = mask.expand(*batch, lq, lk).reshape(-1, 1, lq, lk)
    return q, k, v, mask
