"""The dispatcher: which kernel computes one call of scaled-dot softmax attention."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.functional.kernels._common import Kernel
from attnlab.functional.kernels.blockwise import blockwise
from attnlab.functional.kernels.causal import (
    blocks_fit,
    causal,
    full_blocks,
    full_blocks_apply,
    prefix_attention_applies,
)
from attnlab.functional.kernels.explicit import explicit
from attnlab.functional.kernels.sdpa import sdpa
from attnlab.functional.kernels.thresholds import Thresholds, current_thresholds


def choose_kernel(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    is_causal: bool = False,
    need_weights: bool = False,
    weights_average_dim: int | None = None,
    thresholds: Thresholds | None = None,
) -> Kernel:
    """The kernel for one call, like PyTorch's own choice of SDPA backend.

    Per-head weights take ``explicit`` (it makes the map once; SDPA would need a second pass);
    otherwise CUDA takes ``sdpa``. On CPU, head-averaged weights take ``blockwise``; causal self-
    attention with no mask or a key-padding mask takes ``causal`` from
    ``thresholds.cpu_causal_min_queries`` queries on (0: never) where its compiled blocks fit
    (``causal.blocks_fit``: fp32, AVX2), and such self-attention that is not causal takes
    ``full_blocks`` from ``thresholds.cpu_full_blocks_min_queries`` queries on; other calls that
    need no gradients take ``sdpa`` from
    ``thresholds.forward_sdpa_min_keys(dtype)`` keys on (bf16 and fp16: ``explicit`` below), and
    training calls ``sdpa`` from ``thresholds.backward_sdpa_min_keys(dtype)`` keys on, ``explicit`` below.

    Args:
        query, key, value, mask: the call's inputs, as ``Kernel`` takes them.
        is_causal: whether the call masks the keys after each query, as ``Kernel`` takes it.
        need_weights, weights_average_dim: what the call returns, as ``Kernel`` takes them.
        thresholds: the table to choose by; ``current_thresholds()`` when None.
    """
    if need_weights and weights_average_dim is None:
        return explicit
    if query.device.type != "cpu":
        return sdpa
    if need_weights:
        return blockwise
    thresholds = current_thresholds() if thresholds is None else thresholds
    if (
        0 < thresholds.cpu_causal_min_queries <= query.shape[-2]
        and blocks_fit(query)
        and prefix_attention_applies(query, key, value, mask, is_causal, 0.0, need_weights)
    ):
        return causal
    if (
        not is_causal
        and 0 < thresholds.cpu_full_blocks_min_queries <= query.shape[-2]
        and blocks_fit(query)
        and full_blocks_apply(query, key, value, mask, 0.0, need_weights)
    ):
        return full_blocks
    if not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        return sdpa if key.shape[-2] >= thresholds.forward_sdpa_min_keys(query.dtype) else explicit
    return sdpa if key.shape[-2] >= thresholds.backward_sdpa_min_keys(query.dtype) else explicit
