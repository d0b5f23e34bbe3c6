"""The key/value cache of incremental decoding: the projected keys and values of one attention
layer, kept across decoding steps (the decoding engine's beam pools, ``attnlab.inference.beam_cache``,
keep the same contract)."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.functional.kernels import step_attention

# Positions a growing cache reserves at its first append: most sentences then never copy their
# keys and values to a larger buffer (doubling from 1 copied them six times by 64 tokens).
MIN_CAPACITY = 64


def grown(buffer: Tensor, needed: int, filled: int, minimum: int) -> Tensor:
    """``buffer`` with room for ``needed`` entries along dim 2 (at least ``minimum``, at least
    double its capacity): a new tensor holding its first ``filled``, or ``buffer`` if it has room."""
    capacity = buffer.shape[2]
    if needed <= capacity:
        return buffer
    larger = buffer.new_empty(*buffer.shape[:2], max(needed, 2 * capacity, minimum), *buffer.shape[3:])
    larger[:, :, :filled] = buffer[:, :, :filled]
    return larger


class KVCache:
    """The projected keys and values of one attention layer, kept across decoding steps.

    Self-attention caches grow by the new positions of each step (storage for at least
    ``MIN_CAPACITY`` positions, doubled when full, so decoding N tokens copies O(N) rather than
    O(N^2) elements). A ``static`` cache, for source-target attention, is filled once from the
    encoder output and reused as is.

    Args:
        static: keep the first keys/values and ignore later ones (cross-attention).
    """

    def __init__(self, *, static: bool = False) -> None:
        self.static = static
        self._key: Tensor | None = None  # (B, H, capacity, d_k)
        self._value: Tensor | None = None  # (B, H, capacity, d_v)
        self._owned = False  # the buffers are ours to write in place (not the caller's first tensors)
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @property
    def is_filled(self) -> bool:
        """A static cache that holds its keys and values already."""
        return self.static and self._key is not None

    @property
    def key(self) -> Tensor | None:
        return None if self._key is None else self._key[:, :, : self.length]

    @property
    def value(self) -> Tensor | None:
        return None if self._value is None else self._value[:, :, : self.length]

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``key (B, H, n, d_k)`` and ``value (B, H, n, d_v)``; return all cached so far."""
        if self.is_filled:
            return self.key, self.value
        if self._key is None:
            if self.static:  # read on every step: contiguous heads serve the attention products best
                key, value = key.contiguous(), value.contiguous()
            self._key, self._value, self.length = key, value, key.shape[-2]
            return key, value
        if key.shape[:2] != self._key.shape[:2]:
            raise ValueError(f"cache holds (B, H) = {tuple(self._key.shape[:2])}, got keys of shape {tuple(key.shape)}")
        if torch.is_grad_enabled() and (key.requires_grad or value.requires_grad):
            # Writing into the storage in place would break autograd: concatenate instead.
            self._key = torch.cat([self.key, key], dim=-2)
            self._value = torch.cat([self.value, value], dim=-2)
            self.length = self._key.shape[-2]
            return self._key, self._value
        self._reserve(self.length + key.shape[-2])
        end = self.length + key.shape[-2]
        self._key[:, :, self.length : end] = key
        self._value[:, :, self.length : end] = value
        self.length = end
        return self.key, self.value

    def attend(self, query: Tensor, key: Tensor | None, value: Tensor | None, mask: Tensor | None = None) -> Tensor:
        """Append ``key`` and ``value`` (None for a filled static cache) and attend from ``query
        (B, H, L, d)`` to everything cached (``step_attention``): ``(B, H, L, d_v)``. ``mask``
        as SDPA's (bool ``True`` = may attend) or None; one new position needs no causal mask."""
        key, value = self.update(key, value)
        return step_attention(query, key, value, mask)

    def reorder(self, index: Tensor) -> None:
        """Keep the batch rows ``index`` (B',), e.g. the surviving hypotheses of beam search.

        With as many rows as before, only the rows that change are copied, in place and only
        their filled positions: in beam search most hypotheses keep their parent's row, and a
        fresh buffer per step would cost a copy of its whole capacity.
        """
        if self._key is None:
            return
        if (
            not self._owned
            or index.shape[0] != self._key.shape[0]
            or (torch.is_grad_enabled() and self._key.requires_grad)
        ):
            self._key = self._key.index_select(0, index)
            self._value = self._value.index_select(0, index)
            self._owned = True
            return
        rows = index.ne(torch.arange(index.shape[0], device=index.device)).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        sources = index[rows]
        for buffer in (self._key, self._value):
            filled = buffer[:, :, : self.length]
            # index_select + index_copy_: 2-3x faster than filled[rows] = filled[sources] here
            # (advanced indexing gathers element by element; these copy whole rows).
            filled.index_copy_(0, rows, filled.index_select(0, sources))

    def _reserve(self, needed: int) -> None:
        if needed <= self._key.shape[-2]:
            return
        self._key = grown(self._key, needed, self.length, MIN_CAPACITY)
        self._value = grown(self._value, needed, self.length, MIN_CAPACITY)
        self._owned = True
