"""Key/value caches for incremental decoding: ``KVCache`` for any batch, ``BeamKVCache`` for
beam search, whose keys stay where they were written while hypotheses change parents."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.functional.attention import step_attention

# Positions a growing cache reserves at its first append: most sentences then never copy their
# keys and values to a larger buffer (doubling from 1 copied them six times by 64 tokens).
MIN_CAPACITY = 64


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
            raise ValueError(
                f"cache holds (B, H) = {tuple(self._key.shape[:2])}, got keys of shape {tuple(key.shape)}"
            )
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
        if not self._owned or index.shape[0] != self._key.shape[0] or torch.is_grad_enabled() and self._key.requires_grad:
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
        capacity = self._key.shape[-2]
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity, MIN_CAPACITY)
        for name in ("_key", "_value"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self._owned = True


class BeamAncestry:
    """Which of a sentence's k beam slots wrote each past position of each live hypothesis.

    Beam search keeps k hypotheses per sentence (rows b * k + j) and after every step each one
    continues some hypothesis of the same sentence. ``KVCache.reorder`` copies the parents' keys
    and values into their children's rows, in every layer; with ``BeamKVCache`` the keys stay in
    the slot that computed them and only this ``(B, k, T)`` table of slot ids follows the
    parents, once for all layers. A hypothesis then attends to the keys of the slots on its own
    line (``mask``): more scores per step, no copies.

    Args:
        beam_size: k, hypotheses per sentence.
    """

    def __init__(self, beam_size: int) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.beam_size = beam_size
        self._slots: Tensor | None = None  # (B, k, capacity): slot of position s of hypothesis j
        self._known = 0  # positions written in _slots; later ones are each hypothesis's own slot
        self._mask: tuple[int, Tensor] | None = None  # (length, mask), built once per step

    def mask(self, length: int) -> Tensor:
        """``(B, 1, k, length * k)``, ``True`` where hypothesis j may attend key s * k + i: its
        position s was written by slot i."""
        if self._mask is not None and self._mask[0] == length:
            return self._mask[1]
        slots = self.slots(length)  # (B, k, length)
        batch, k = slots.shape[:2]
        allowed = slots[..., None] == torch.arange(k, device=slots.device)  # (B, k, length, k)
        self._mask = (length, allowed.view(batch, 1, k, length * k))
        return self._mask[1]

    def start(self, batch: int, device: torch.device) -> None:
        """Track ``batch`` sentences (called by the first cache that sees keys)."""
        if self._slots is None:
            self._slots = torch.empty(batch, self.beam_size, MIN_CAPACITY, dtype=torch.long, device=device)
        elif self._slots.shape[0] != batch:
            raise ValueError(f"the caches hold {self._slots.shape[0]} sentences, got keys for {batch}")

    def reorder(self, index: Tensor, length: int) -> None:
        """Hypothesis row i continues row ``index[i]`` ``(B k,)``, a row of the same sentence,
        whose first ``length`` positions it inherits."""
        if self._slots is None:
            return
        batch, k = self._slots.shape[:2]
        rows = torch.arange(batch * k, device=index.device)
        same_sentence = index.shape == rows.shape and torch.equal(index.div(k, rounding_mode="floor"), rows.div(k, rounding_mode="floor"))
        if not same_sentence:
            raise ValueError(
                f"index must keep {k} rows per sentence in place, each a row of the same sentence "
                f"({batch * k} rows), got {index.tolist()}"
            )
        slots = self.slots(length)
        parents = index.remainder(k).view(batch, k, 1).expand(batch, k, length)
        slots.copy_(slots.gather(1, parents))
        self._mask = None

    def slots(self, length: int) -> Tensor:
        """``(B, k, length)``: the slot that wrote position s of hypothesis j, for s < ``length``
        (positions not reordered since they were written are the hypothesis's own)."""
        if self._slots is None:
            raise RuntimeError("no keys were cached yet")
        batch, k, capacity = self._slots.shape
        if length > capacity:
            grown = self._slots.new_empty(batch, k, max(length, 2 * capacity))
            grown[:, :, : self._known] = self._slots[:, :, : self._known]
            self._slots = grown
        if length > self._known:
            own = torch.arange(k, device=self._slots.device)[None, :, None]
            self._slots[:, :, self._known : length] = own
            self._known = length
        return self._slots[:, :, :length]


class BeamKVCache(KVCache):
    """A self-attention cache for beam search whose keys and values never move (see
    ``BeamAncestry``): step t's keys of a sentence's k hypotheses lie side by side at positions
    t * k .. t * k + k - 1 of ``(B, H, T k, d)`` buffers, and ``attend`` lets the k queries of a
    sentence read the sentence's keys together, each through the ancestry's mask.

    ``update``, ``key`` and ``value`` give what a ``KVCache`` would hold, gathered row by row
    (for callers that need the keys themselves, e.g. for attention weights). Reordering goes
    through the shared ``BeamAncestry``, once for all layers, never through a layer's cache.

    Args:
        ancestry: the ``BeamAncestry`` of the decoder (one for all its layers).
    """

    def __init__(self, ancestry: BeamAncestry) -> None:
        super().__init__()
        self.ancestry = ancestry

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
        k = self.ancestry.beam_size
        grouped = query.view(rows // k, k, heads, dim).transpose(1, 2)  # (B, H, k, d)
        end, mask = self.length * k, self.ancestry.mask(self.length)
        context = step_attention(grouped, self._key[:, :, :end], self._value[:, :, :end], mask)  # (B, H, k, d_v)
        return context.transpose(1, 2).reshape(rows, heads, 1, -1)

    def reorder(self, index: Tensor) -> None:
        raise TypeError("a BeamKVCache's keys do not move: reorder its BeamAncestry, once for all layers")

    def _append(self, key: Tensor, value: Tensor) -> None:
        rows, heads, new, _ = key.shape
        k = self.ancestry.beam_size
        if rows % k:
            raise ValueError(f"keys must have k = {k} rows per sentence, got shape {tuple(key.shape)}")
        batch = rows // k
        self.ancestry.start(batch, key.device)
        start, end = self.length * k, (self.length + new) * k
        for name, x in (("_key", key), ("_value", value)):
            grouped = x.view(batch, k, heads, new, x.shape[-1]).permute(0, 2, 3, 1, 4)  # (B, H, n, k, d)
            buffer = getattr(self, name)
            if torch.is_grad_enabled() and x.requires_grad:  # writing in place would break autograd
                past = x.new_empty(batch, heads, 0, x.shape[-1]) if buffer is None else buffer[:, :, :start]
                setattr(self, name, torch.cat([past, grouped.reshape(batch, heads, new * k, -1)], 2))
                continue
            if buffer is None or buffer.shape[2] < end:  # MIN_CAPACITY positions, doubled when full
                capacity = max(end, MIN_CAPACITY * k, 0 if buffer is None else 2 * buffer.shape[2])
                grown = x.new_empty(batch, heads, capacity, x.shape[-1])
                if buffer is not None:
                    grown[:, :, :start] = buffer[:, :, :start]
                setattr(self, name, buffer := grown)
            buffer[:, :, start:end].view(batch, heads, new, k, -1).copy_(grouped)
        self.length += new

    def _per_row(self, buffer: Tensor) -> Tensor:
        """``(B, H, T k, d)`` -> ``(B k, H, T, d)``: each row's keys along its line."""
        batch, heads, _, dim = buffer.shape
        k, length = self.ancestry.beam_size, self.length
        slots = self.ancestry.slots(length)  # (B, k, T)
        positions = torch.arange(length, device=buffer.device) * k + slots  # (B, k, T)
        index = positions.view(batch, 1, k * length, 1).expand(batch, heads, k * length, dim)
        rows = buffer[:, :, : length * k].gather(2, index)  # (B, H, k T, d)
        return rows.view(batch, heads, k, length, dim).transpose(1, 2).reshape(batch * k, heads, length, dim)
