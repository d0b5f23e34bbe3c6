"""Key/value caches for incremental decoding: ``KVCache`` for any batch, ``BeamKVCache`` for
beam search, whose keys stay where they were written while hypotheses change parents."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from attnlab.functional.kernels import step_attention

# Positions a growing cache reserves at its first append: most sentences then never copy their
# keys and values to a larger buffer (doubling from 1 copied them six times by 64 tokens).
MIN_CAPACITY = 64
# A beam search's key pool is compacted once it holds this many keys and this many times the
# live ones (see BeamAncestry): 1.5 beat 2 and 1.25 in a base beam-5 search of 64 tokens.
MIN_COMPACTION = 32
COMPACT_RATIO = 1.5


def _grown(buffer: Tensor, needed: int, filled: int, minimum: int) -> Tensor:
    """``buffer`` with room for ``needed`` entries along dim 2 (at least ``minimum``, at least
    double its capacity): a new tensor holding its first ``filled``, or ``buffer`` if it has room."""
    capacity = buffer.shape[2]
    if needed <= capacity:
        return buffer
    grown = buffer.new_empty(*buffer.shape[:2], max(needed, 2 * capacity, minimum), *buffer.shape[3:])
    grown[:, :, :filled] = buffer[:, :, :filled]
    return grown


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
        self._key = _grown(self._key, needed, self.length, MIN_CAPACITY)
        self._value = _grown(self._value, needed, self.length, MIN_CAPACITY)
        self._owned = True


class BeamAncestry:
    """Where each live beam hypothesis finds the keys of its past positions, for the
    ``BeamKVCache`` of every decoder layer.

    Beam search keeps k hypotheses per sentence (rows b * k + j) and after every step each one
    continues a hypothesis of the same sentence. ``KVCache.reorder`` copies the parents' keys and
    values into their children's rows, in every layer, every step. Here the keys of a sentence
    lie in one pool per layer and never move when parents change: this ``(B, k, T)`` table of
    pool indices follows the parents instead, once for all layers, and a hypothesis attends to
    the pool through ``mask``. Hypotheses share most of their past, so most of a pool soon
    belongs to no live hypothesis: once a pool holds 1.5 times its live keys (``COMPACT_RATIO``), the pools are
    compacted (``moved``, applied by every cache before its next step).

    Args:
        beam_size: k, hypotheses per sentence.
    """

    def __init__(self, beam_size: int) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.beam_size = beam_size
        self.length = 0  # positions of every hypothesis
        self.keys = 0  # keys in each sentence's pool, live or not
        self.generation = 0  # compactions so far
        self.moved: Tensor | None = None  # (B, keys): the last compaction's pool, as old indices
        self._lines: Tensor | None = None  # (B, k, capacity): pool index of position s of hypothesis j
        self._step: tuple[int, int] = (-1, 0)  # (position, pool index) of the latest appended keys
        self._mask: Tensor | None = None  # built once per step

    def record(self, batch: int, position: int, new: int, device: torch.device) -> int:
        """Positions ``position .. position + new - 1`` of every hypothesis get keys; return the
        pool index of the first: hypothesis j's i-th new key goes to ``start + i * k + j``.
        The first cache to append a step records it; the others get the same indices."""
        if position == self._step[0] and position + new == self.length:
            return self._step[1]
        if position != self.length:
            raise RuntimeError(
                f"caches sharing a BeamAncestry must append the same positions: "
                f"got position {position}, expected {self.length}"
            )
        k = self.beam_size
        if self._lines is None:
            self._lines = torch.empty(batch, k, MIN_CAPACITY, dtype=torch.long, device=device)
        elif self._lines.shape[0] != batch:
            raise ValueError(f"the caches hold {self._lines.shape[0]} sentences, got keys for {batch}")
        self._lines = _grown(self._lines, self.length + new, self.length, MIN_CAPACITY)
        start = self.keys
        fresh = torch.arange(start, start + new * k, device=device).view(new, k).t()  # (k, new)
        self._lines[:, :, self.length : self.length + new] = fresh
        self._step = (position, start)
        self.length += new
        self.keys += new * k
        self._mask = None
        return start

    def lines(self) -> Tensor:
        """``(B, k, T)``: the pool index of position s of hypothesis j."""
        if self._lines is None:
            raise RuntimeError("no keys were cached yet")
        return self._lines[:, :, : self.length]

    def mask(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, 1, k, keys)``: 0 where hypothesis j may attend a key of its sentence's pool, -inf
        elsewhere (a bias in ``dtype``; every hypothesis sees at least its own keys)."""
        if self._mask is None or self._mask.dtype != dtype:
            lines = self.lines()
            batch, k, _ = lines.shape
            bias = torch.full((batch, k, self.keys), -math.inf, dtype=dtype, device=lines.device)
            self._mask = bias.scatter_(2, lines, 0.0).view(batch, 1, k, self.keys)
        return self._mask

    def reorder(self, index: Tensor) -> None:
        """Hypothesis row i continues row ``index[i]`` ``(B k,)``, a row of the same sentence."""
        if self._lines is None:
            return
        batch, k = self._lines.shape[:2]
        rows = torch.arange(batch * k, device=index.device)
        floor = functools.partial(torch.div, rounding_mode="floor")
        if index.shape != rows.shape or not torch.equal(floor(index, k), floor(rows, k)):
            raise ValueError(
                f"index must keep {k} rows per sentence in place, each a row of the same sentence "
                f"({batch * k} rows), got {index.tolist()}"
            )
        lines = self.lines()
        lines.copy_(lines.gather(1, index.remainder(k).view(batch, k, 1).expand_as(lines)))
        self._mask = None
        self._compact()

    def _compact(self) -> None:
        """Drop the keys no live hypothesis reads once they are a third of the pool or more."""
        lines = self.lines()
        batch = lines.shape[0]
        live = torch.zeros(batch, self.keys, dtype=torch.bool, device=lines.device)
        live.scatter_(1, lines.reshape(batch, -1), True)
        kept = int(live.sum(1).max())
        if self.keys < max(COMPACT_RATIO * kept, MIN_COMPACTION):
            return
        # Live keys first, in their order; sentences with fewer pad with keys no line reads.
        self.moved = torch.argsort(live.logical_not().byte(), dim=1, stable=True)[:, :kept]  # (B, kept)
        new_index = live.long().cumsum(1) - 1  # (B, keys): where a live key goes
        lines.copy_(new_index.gather(1, lines.reshape(batch, -1)).view_as(lines))
        self.keys = kept
        self.generation += 1
        self._step = (-1, 0)


class BeamKVCache(KVCache):
    """A self-attention cache for beam search whose keys and values stay where they were
    written (see ``BeamAncestry``): each sentence's keys of all its hypotheses lie in one pool
    ``(B, H, keys, d)``, and ``attend`` lets a sentence's k queries read its pool together, each
    through the ancestry's mask.

    ``update``, ``key`` and ``value`` give what a ``KVCache`` would hold, gathered row by row
    (for callers that need the keys themselves, e.g. for attention weights). Reordering goes
    through the shared ``BeamAncestry``, once for all layers, never through a layer's cache.

    Args:
        ancestry: the ``BeamAncestry`` of the decoder (one for all its layers).
    """

    def __init__(self, ancestry: BeamAncestry) -> None:
        super().__init__()
        self.ancestry = ancestry
        self._generation = 0

    @property
    def key(self) -> Tensor | None:
        return None if self._key is None else self._per_row(self._key)

    @property
    def value(self) -> Tensor | None:
        return None if self._value is None else self._per_row(self._value)

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``key (B k, H, n, d_k)`` and ``value``; return every row's keys and values
        ``(B k, H, T, d)`` (copies, gathered along its line)."""
        self._append(key, value)
        return self.key, self.value

    def attend(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """Append this step's keys and values; attend from ``query (B k, H, 1, d)``, one new
        position per row, to each row's line: ``(B k, H, 1, d_v)``. Several new positions or a
        ``mask`` take the keys row by row (``KVCache.attend``)."""
        if query.shape[2] != 1 or mask is not None:
            return super().attend(query, key, value, mask)
        self._append(key, value)
        rows, heads, _, dim = query.shape
        k, keys = self.ancestry.beam_size, self.ancestry.keys
        grouped = query.view(rows // k, k, heads, dim).transpose(1, 2)  # (B, H, k, d)
        mask = self.ancestry.mask(grouped.dtype)
        context = step_attention(grouped, self._key[:, :, :keys], self._value[:, :, :keys], mask)
        return context.transpose(1, 2).reshape(rows, heads, 1, -1)  # (B k, H, 1, d_v)

    def reorder(self, index: Tensor) -> None:
        raise TypeError("a BeamKVCache's keys do not move: reorder its BeamAncestry, once for all layers")

    def _sync(self) -> None:
        """Apply the ancestry's compaction to this cache's pools."""
        if self._generation == self.ancestry.generation or self._key is None:
            self._generation = self.ancestry.generation
            return
        if self._generation + 1 != self.ancestry.generation:
            raise RuntimeError("the ancestry was compacted twice since this cache's last step")
        moved = self.ancestry.moved  # (B, kept)
        for buffer in (self._key, self._value):
            index = moved[:, None, :, None].expand(-1, buffer.shape[1], -1, buffer.shape[-1])
            buffer[:, :, : moved.shape[1]] = buffer.gather(2, index)
        self._generation = self.ancestry.generation

    def _append(self, key: Tensor, value: Tensor) -> None:
        rows, heads, new, _ = key.shape
        k = self.ancestry.beam_size
        if rows % k:
            raise ValueError(f"keys must have k = {k} rows per sentence, got shape {tuple(key.shape)}")
        batch = rows // k
        self._sync()
        start = self.ancestry.record(batch, self.length, new, key.device)
        end = start + new * k
        for name, x in (("_key", key), ("_value", value)):
            grouped = x.view(batch, k, heads, new, x.shape[-1]).permute(0, 2, 3, 1, 4)  # (B, H, n, k, d)
            buffer = getattr(self, name)
            if torch.is_grad_enabled() and x.requires_grad:  # writing in place would break autograd
                past = x.new_empty(batch, heads, 0, x.shape[-1]) if buffer is None else buffer[:, :, :start]
                setattr(self, name, torch.cat([past, grouped.reshape(batch, heads, new * k, -1)], 2))
                continue
            if buffer is None:  # MIN_CAPACITY positions, doubled when full
                buffer = x.new_empty(batch, heads, 0, x.shape[-1])
            buffer = _grown(buffer, end, start, MIN_CAPACITY * k)
            setattr(self, name, buffer)
            buffer[:, :, start:end].view(batch, heads, new, k, -1).copy_(grouped)
        self.length += new

    def _per_row(self, buffer: Tensor) -> Tensor:
        """``(B, H, keys, d)`` -> ``(B k, H, T, d)``: each row's keys along its line."""
        self._sync()
        lines = self.ancestry.lines()  # (B, k, T)
        batch, k, length = lines.shape
        heads, dim = buffer.shape[1], buffer.shape[-1]
        index = lines.reshape(batch, 1, k * length, 1).expand(batch, heads, k * length, dim)
        rows = buffer.gather(2, index)  # (B, H, k T, d)
        return rows.view(batch, heads, k, length, dim).transpose(1, 2).reshape(batch * k, heads, length, dim)
