"""The blockwise kernel: a block of queries at a time, so all heads' maps are never held at once."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from attnlab.functional.kernels._common import broadcast_shapes, dropped, mask_in
from attnlab.functional.kernels.thresholds import current_thresholds
from attnlab.functional.masks import causal_mask, merge_masks
from attnlab.functional.normalize import softmax
from attnlab.functional.scores import scaled_dot_score


def blockwise(
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
    """softmax(Q K^T * scale + M) V a block of query rows at a time (Vaswani et al., 2017, Eq. 1).

    What ``nn.MultiheadAttention(need_weights=True)`` computes, but with head-averaged weights
    (``weights_average_dim``) memory holds the averaged map and one block of scores, never every
    head's map, and each block of scores is still in cache when V meets it. Blocks hold about
    ``Thresholds.weights_chunk_elements`` scores. Arguments and result as ``Kernel``.
    """
    value = value.contiguous()  # read by every block
    in_place = not _needs_grad(query, key, value)
    contexts, weights = RowBlocks(query.shape[-2], in_place), RowBlocks(query.shape[-2], in_place)
    for rows, block in softmax_blocks(query, key, mask, is_causal, scale, current_thresholds().weights_chunk_elements):
        contexts.put(rows, dropped(block, dropout_p) @ value)  # (..., rows, d_v)
        if need_weights:
            weights.put(rows, block if weights_average_dim is None else block.mean(weights_average_dim))
    return contexts.result(), weights.result() if need_weights else None


def attention_weights(
    query: Tensor,
    key: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    average_dim: int | None = None,
    chunk_elements: int | None = None,
) -> Tensor:
    """Softmax(Q K^T * scale + M) under the mask, computed a chunk of queries at a time.

    Peak memory is the result plus one chunk of about ``chunk_elements`` scores (by default
    ``Thresholds.weights_chunk_elements``): with ``average_dim`` set (e.g. over heads) the
    per-head map is never held whole, and without gradients each chunk is written into the
    result as it is made rather than concatenated at the end.

    Returns:
        ``(..., Lq, Lk)``, the averaged dim removed.
    """
    chunk_elements = current_thresholds().weights_chunk_elements if chunk_elements is None else chunk_elements
    result = RowBlocks(query.shape[-2], in_place=not _needs_grad(query, key))
    for rows, weights in softmax_blocks(query, key, mask, is_causal, scale, chunk_elements):
        result.put(rows, weights if average_dim is None else weights.mean(average_dim))
    return result.result()


def softmax_blocks(
    query: Tensor, key: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None, chunk_elements: int
) -> Iterator[tuple[slice, Tensor]]:
    """``(rows, softmax(Q[rows] K^T * scale + M[rows]))`` for blocks of about ``chunk_elements`` scores."""
    lq, lk = query.shape[-2], key.shape[-2]
    key = key.contiguous()  # read by every block: one copy here, not one per block inside matmul
    maps = math.prod(broadcast_shapes(query.shape[:-2], key.shape[:-2]))
    rows_per_chunk = max(1, chunk_elements // max(1, lk * maps))
    full_mask = merge_masks(mask, causal_mask(lq, lk, device=query.device)) if is_causal else mask
    full_mask = mask_in(full_mask, query.dtype)
    for start in range(0, lq, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, lq))
        block_mask = None if full_mask is None else _rows_of(full_mask, rows)
        yield rows, softmax(scaled_dot_score(query[..., rows, :], key, scale), block_mask)  # (..., rows, Lk)


def _rows_of(mask: Tensor, rows: slice) -> Tensor:
    """The mask's slice for a block of query rows (a mask broadcasting over queries is kept whole)."""
    return mask if mask.ndim < 2 or mask.shape[-2] == 1 else mask[..., rows, :]


class RowBlocks:
    """A ``(..., Lq, n)`` result assembled from blocks of its query rows.

    ``in_place``: each block is copied into one tensor allocated at the first block, so memory
    holds the result and one block; otherwise the blocks are kept and concatenated at the end
    (autograd's path, which holds the blocks and the result at once).
    """

    def __init__(self, rows: int, in_place: bool) -> None:
        self.rows, self.in_place = rows, in_place
        self.blocks: list[Tensor] = []
        self.out: Tensor | None = None

    def put(self, rows: slice, block: Tensor) -> None:
        """Add the block ``(..., len(rows), n)`` of rows ``rows``."""
        if not self.in_place:
            self.blocks.append(block)
            return
        if self.out is None:
            self.out = block.new_empty(*block.shape[:-2], self.rows, block.shape[-1])  # (..., Lq, n)
        self.out[..., rows, :] = block

    def result(self) -> Tensor:
        """The assembled ``(..., Lq, n)``."""
        return self.out if self.in_place else torch.cat(self.blocks, dim=-2)


def _needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` here."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
