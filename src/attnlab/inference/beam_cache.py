"""Beam search's key pools: hypotheses keep their keys where they were written.

Beam search keeps k hypotheses per sentence and after every step each one continues a hypothesis
of the same sentence. A ``KVCache`` follows by copying the parents' keys and values into their
children's rows, in every layer, every step. Here a sentence's keys lie in one pool per layer and
never move: a table of pool indices (``BeamAncestry``) follows the parents, once for all layers,
and each hypothesis reads the pool through a mask. This is part of the decoding engine
(``attnlab.inference.engine``); the models' own decoding path uses ``KVCache``.

Shapes: B sentences, k hypotheses per sentence (rows b k + j), H heads, T positions of each
hypothesis, P keys in a sentence's pool (live or not), d head size.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from attnlab.functional.kernels import step_attention
from attnlab.layers.kv_cache import MIN_CAPACITY, KVCache, grown

# A pool is compacted once it holds this many keys and this many times its live ones: rarer
# compaction copies less, but attention then reads more dead keys (benchmarks.translation
# measures whole searches).
MIN_COMPACTION = 32
COMPACT_RATIO = 1.5


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
        self._lines = grown(self._lines, self.length + new, self.length, MIN_CAPACITY)
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


class BeamKVCache:
    """A self-attention cache for beam search whose keys and values stay where they were
    written (see ``BeamAncestry``): each sentence's keys of all its hypotheses lie in one pool
    ``(B, H, P, d)``, and ``attend`` lets a sentence's k queries read its pool together, each
    through the ancestry's mask.

    It keeps ``KVCache``'s contract for a growing cache (``len``, ``static``, ``is_filled``,
    ``key``, ``value``, ``update``, ``attend``): ``key``, ``value`` and ``update`` give what a
    ``KVCache`` would hold, gathered row by row. Hypotheses change parents through the shared
    ``BeamAncestry`` (``reorder`` there, once for all layers), never through a layer's cache.

    Args:
        ancestry: the ``BeamAncestry`` of the decoder (one for all its layers).
    """

    static = False
    is_filled = False

    def __init__(self, ancestry: BeamAncestry) -> None:
        self.ancestry = ancestry
        self._key: Tensor | None = None  # (B, H, capacity, d_k)
        self._value: Tensor | None = None  # (B, H, capacity, d_v)
        self._generation = 0
        self.length = 0  # positions of every hypothesis

    def __len__(self) -> int:
        return self.length

    @property
    def key(self) -> Tensor | None:
        """``(B k, H, T, d_k)``: every row's keys along its line (a copy)."""
        return None if self._key is None else self._per_row(self._key)

    @property
    def value(self) -> Tensor | None:
        """``(B k, H, T, d_v)``: every row's values along its line (a copy)."""
        return None if self._value is None else self._per_row(self._value)

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``key (B k, H, n, d_k)`` and ``value``; return every row's keys and values
        ``(B k, H, T, d)`` (copies, gathered along its line)."""
        self._append(key, value)
        return self.key, self.value

    def attend(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """Append this step's keys and values; attend from ``query (B k, H, n, d)`` to each
        row's line: ``(B k, H, n, d_v)``. One new position per row and no ``mask`` (a decoding
        step) reads the pools directly; otherwise the keys are gathered row by row."""
        if query.shape[2] != 1 or mask is not None:
            key, value = self.update(key, value)
            return step_attention(query, key, value, mask)
        self._append(key, value)
        rows, heads, _, dim = query.shape
        k, keys = self.ancestry.beam_size, self.ancestry.keys
        grouped = query.view(rows // k, k, heads, dim).transpose(1, 2)  # (B, H, k, d)
        mask = self.ancestry.mask(grouped.dtype)  # (B, 1, k, P)
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
            buffer = grown(buffer, end, start, MIN_CAPACITY * k)
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


class BeamDecoderCache:
    """The decoder's caches for a beam search of k hypotheses per sentence: per layer a
    ``BeamKVCache`` for self-attention (one ``BeamAncestry`` for all) and a static ``KVCache``
    of the source keys and values, which a sentence's k hypotheses read together.

    It has the interface of ``attnlab.models.transformer.DecoderCache`` (``self_attn``,
    ``cross_attn``, ``len``, ``reorder``).

    Args:
        num_layers: decoder layers N.
        beam_size: k.
    """

    def __init__(self, num_layers: int, beam_size: int) -> None:
        self.ancestry = BeamAncestry(beam_size)
        self.self_attn = [BeamKVCache(self.ancestry) for _ in range(num_layers)]
        self.cross_attn = [KVCache(static=True) for _ in range(num_layers)]

    def __len__(self) -> int:
        """Target positions cached so far."""
        return len(self.self_attn[0]) if self.self_attn else 0

    def reorder(self, index: Tensor, *, static: bool = False) -> None:
        """Hypothesis row i continues row ``index[i]`` ``(B k,)`` of the same sentence; the
        source caches, one row per sentence, stay as they are (``static=True`` is refused)."""
        if static:
            raise ValueError("beam pools keep one source row per sentence: reorder(static=True) would move sentences")
        self.ancestry.reorder(index)
