"""The decoding-step kernel: a few grouped queries against a key/value cache, without autograd."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.kernels import fused_step
from attnlab.functional.kernels._common import batch_shape, mask_in, returned_weights
from attnlab.functional.kernels.thresholds import fused_step_fits, plain_step_fits
from attnlab.functional.masks import causal_mask, merge_masks


def step(
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
) -> tuple[Tensor, Tensor | None]:
    """softmax(Q K^T * scale + M) V as plain products computed in place (Vaswani et al., 2017, Eq. 1).

    For evaluation only: no dropout, no graph (the result never requires grad). SDPA's CPU
    kernel pays a fixed cost per block of queries of every (batch, head), which a decoding
    step's 2 to 8 queries do not amortise; two products and a softmax do without it.
    Arguments and result as ``Kernel``.

    Raises:
        ValueError: ``dropout_p`` is not 0.
    """
    if dropout_p != 0.0:
        raise ValueError(f"the step kernel runs no dropout, got dropout_p={dropout_p}")
    if is_causal:
        mask = merge_masks(mask, causal_mask(query.shape[-2], key.shape[-2], device=query.device))
    query = query.expand(
        *batch_shape(query, key, value), *query.shape[-2:]
    )  # scores of the full batch, masked in place
    with torch.no_grad():
        context, weights = _plain_products(query, key, value, mask_in(mask, query.dtype), scale)
    return context, returned_weights(weights, need_weights, weights_average_dim)


def step_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
    """The attention of a decoding step's queries ``(B, H, Lq, d)`` against a cache ``(B, H, Lk, d)``.

    No dropout, no causal mask, no gradients. On CPU, fp32 queries against at most
    ``Thresholds.cpu_step_fused_max_keys`` keys take the fused step kernel
    (``attnlab.functional.kernels.fused_step``) where it runs; else the few fp32 queries that
    ``cpu_step_plain_max_queries`` and ``cpu_step_plain_max_keys`` admit, and one bf16 query
    against up to ``cpu_step_plain_max_keys_bfloat16`` keys, take the plain products of ``step``;
    everything else takes ``F.scaled_dot_product_attention``.
    ``mask`` as SDPA's: bool ``True`` = may attend, or a float bias; a query with no allowed key
    gets zeros.

    Returns:
        The context ``(B, H, Lq, d_v)``.
    """
    if fused_step_fits(query, key) and (out := fused_step.try_attention(query, key, value, mask)) is not None:
        return out
    if plain_step_fits(query, key):
        return _plain_products(query, key, value, mask, None)[0]
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)  # caches hold contiguous heads


def _plain_products(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float | None
) -> tuple[Tensor, Tensor]:
    """(C, A): in-place scores, softmax and product; rows with no allowed key become zeros."""
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)).mul_(scale)  # (..., Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill_(~mask, -math.inf) if mask.dtype == torch.bool else scores.add_(mask)
        weights = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # softmax(-inf, ..., -inf) = NaN -> 0
    else:
        weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, value), weights  # (..., Lq, d_v)
