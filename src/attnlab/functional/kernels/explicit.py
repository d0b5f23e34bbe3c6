"""The explicit kernel: scores, masked softmax and the weighted sum as three tensor operations."""

from __future__ import annotations

from torch import Tensor

from attnlab.functional.kernels._common import dropped, mask_in, returned_weights
from attnlab.functional.masks import causal_mask, merge_masks
from attnlab.functional.normalize import softmax
from attnlab.functional.scores import scaled_dot_score


def explicit(
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
    """softmax(Q K^T * scale + M) V as matmul, softmax, matmul (Vaswani et al., 2017, Eq. 1).

    The whole ``(..., Lq, Lk)`` map is made, so per-head weights cost nothing more; any dtype,
    forward and backward. Arguments and result as ``Kernel``.
    """
    if is_causal:
        mask = merge_masks(mask, causal_mask(query.shape[-2], key.shape[-2], device=query.device))
    weights = softmax(scaled_dot_score(query, key, scale), mask_in(mask, query.dtype))  # (..., Lq, Lk)
    context = dropped(weights, dropout_p) @ value  # (..., Lq, d_v)
    return context, returned_weights(weights, need_weights, weights_average_dim)
