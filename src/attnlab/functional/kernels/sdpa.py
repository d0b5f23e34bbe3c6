"""The SDPA kernel: ``F.scaled_dot_product_attention``, with the weights computed beside it on request."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.kernels._common import as_4d, batch_shape
from attnlab.functional.kernels.blockwise import attention_weights
from attnlab.functional.kernels.thresholds import current_thresholds
from attnlab.functional.masks import causal_mask, merge_masks


def sdpa(
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
    """softmax(Q K^T * scale + M) V by ``F.scaled_dot_product_attention`` (flash kernels where they apply).

    SDPA never forms the weights; asked for, they are computed beside it a block of queries at a
    time (``attention_weights``): one more Q K^T and softmax. Arguments and result as ``Kernel``.
    """
    lq, lk = query.shape[-2], key.shape[-2]
    batch = batch_shape(query, key, value)
    sdpa_mask, sdpa_causal = mask, is_causal
    if is_causal and (mask is not None or lq != lk):
        # SDPA's is_causal aligns the first query with the first key and takes no extra mask.
        sdpa_mask, sdpa_causal = merge_masks(mask, causal_mask(lq, lk, device=query.device)), False
    q, k, v, m = as_4d(query, key, value, batch, sdpa_mask)  # (B, H, L, d)
    if query.device.type == "cpu" and lk >= current_thresholds().cpu_contiguous_min_keys:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # SDPA's CPU kernel reads whole heads faster
    context = F.scaled_dot_product_attention(
        q, k, v, attn_mask=m, dropout_p=dropout_p, is_causal=sdpa_causal, scale=scale
    )
    if context.shape[:-2] != batch:
        context = context.reshape(*batch, lq, value.shape[-1])  # (..., Lq, d_v)
    if not need_weights:
        return context, None
    return context, attention_weights(
        query, key, mask=mask, is_causal=is_causal, scale=scale, average_dim=weights_average_dim
    )
