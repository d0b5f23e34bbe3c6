"""A Transformer decoder's steps as a few compiled-kernel calls per layer (CPU; fp32, bf16 or int8 products).

A decoding step of a few rows costs about one read of the decoder's weights, and the thin
products (``attnlab.functional.kernels.thin``) read them near the memory's rate. What is left is
the glue: ``DecoderLayer.step`` spends some 150 PyTorch operators a layer (views of the heads, a
cache append, adds, norms), each with a fixed cost larger than its arithmetic at these sizes.
``FusedDecoder`` runs the same maths with the glue folded into the kernels:

- the residual add and the ReLU happen as the products store their outputs (the thin kernel's
  epilogue);
- the step attention kernel (``attnlab.functional.kernels.fused_step``) reads the queries and
  the caches where they lie (heads are strides, never copies) and writes the context in the
  rows' own layout;
- the self-attention cache is one buffer per layer, ``(capacity, rows, 2 D)``: a step appends
  its keys and values with one copy, and beam search's reordering never moves them: a table of
  lines (``FusedState.lines``) says which row holds each position of a hypothesis's history,
  and the attention kernel reads the keys there;
- the layer norms run on the step kernel's row norm, written over their input in post-norm layers.

It computes what ``DecoderLayer.step`` computes, in fp32, with the products summed in another
order (the thin kernel's), or with int8 products as ``DecodingEngine(int8=True)`` multiplies, or
with bf16 products as bf16 autocast multiplies (``bf16=True``: bf16 copies of the weights, the
rows rounded to bf16, fp32 sums; the attention, the norms and the caches stay fp32);
``DecodingEngine`` uses it where both kernels run, for at most
``Thresholds.cpu_thin_max_rows`` rows, and ``tests/inference/test_fused_decoder.py`` checks
it against the model's own steps. Weights are packed when the ``FusedDecoder`` is made
(oneDNN's bf16 copies at their first use): after the model's weights change, make a new one (the
engine makes it with itself).

Shapes: B sentences, k rows per sentence (beam hypotheses; 1 in greedy search), R = B k rows,
S source positions, t target positions so far, D model size, H heads of d = D / H.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.functional.kernels import fused_step, onednn, thin
from attnlab.inference import quantized
from attnlab.inference.fused_products import Bf16Product, Int8Product, MemoryProduct, Product, ThinProduct
from attnlab.inference.packed import MIN_PACKED_ELEMENTS

# Target positions a fresh self-attention cache holds before it doubles.
INITIAL_CAPACITY = 64


@dataclass
class _Layer:
    """One decoder layer's weights, packed, and how it is wired."""

    qkv: Product
    self_out: Product
    cross_q: Product
    cross_kv: MemoryProduct | Int8Product  # applied once a search, to the memory
    cross_out: Product
    fc1: Product
    fc2: Product
    norms: tuple[Callable[..., Tensor], ...]  # norm1, norm2, norm3 of rows (R, D); in_place=True writes over them
    activation: nn.Module | None  # None: ReLU, done in fc1's epilogue


@dataclass
class FusedState:
    """What a ``FusedDecoder`` carries between steps.

    Attributes:
        cross: per layer, the memory's keys and values ``(B, H, S, d)``, views of one ``(B, S, 2 D)``.
        allowed: ``(B, H, k, S)`` (a broadcast view), ``True`` where a source position may be
            attended, or None.
        caches: per layer, the self-attention keys and values ``(capacity, R, 2 D)``; the first
            ``length`` positions are written.
        lines: ``(R, capacity)`` int64, the cache row that holds position j of row r's history
            (the same in every layer; row r itself until beam search reorders), or None before
            the first reorder.
        length: t, target positions fed so far.
        repeat: k, rows per source sentence.
        bf16: made by a decoder with bf16 products (the engine steps it with that decoder).
    """

    cross: list[tuple[Tensor, Tensor]]
    allowed: Tensor | None
    caches: list[Tensor]
    lines: Tensor | None
    length: int
    repeat: int
    bf16: bool = False


def max_rows() -> int:
    """The most rows a search runs on fused steps here by default: ``Thresholds.cpu_thin_max_rows``
    where both compiled kernels run, else 0."""
    return thin.max_rows() if fused_step.available() else 0


def obstacles(model: nn.Module, *, int8: bool = False, bf16: bool = False) -> list[str]:
    """Why ``FusedDecoder`` cannot run ``model`` here (empty when it can): it needs both compiled
    kernels, an fp32 ``Transformer`` on CPU with plain attention layers and head sizes that are
    multiples of 8, for ``int8`` PyTorch's dynamic int8 linear, and for ``bf16`` oneDNN's bf16
    products (a CPU with bf16 instructions)."""
    from attnlab.models.transformer import Transformer  # the models import the inference-free core only

    found = []
    if not (thin.available() and fused_step.available()):
        found.append("the compiled kernels are not available here (not built, or no AVX2 and FMA)")
    if int8 and not quantized.available():
        found.append("this PyTorch build has no CPU int8 linear")
    if int8 and bf16:
        found.append("int8 and bf16 products exclude each other")
    if bf16 and not onednn.bf16_available():
        found.append("oneDNN's bf16 products do not run here (no bf16 instructions)")
    if not isinstance(model, Transformer):
        return [*found, f"a {type(model).__name__} is not a Transformer"]
    weight = model.output.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        found.append(f"weights are {weight.dtype} on {weight.device}, not fp32 on CPU")
    for i, layer in enumerate(model.decoder_layers):
        for name in ("self_attn", "cross_attn"):
            attn = getattr(layer, name)
            if not attn.is_plain:
                found.append(f"decoder layer {i} {name} is not plain ({', '.join(attn._step_obstacles())})")
            elif attn.head_dim % 8:
                found.append(f"decoder layer {i} {name} has head size {attn.head_dim}, not a multiple of 8")
    return found


class FusedDecoder:
    """The plain decoding steps of a ``Transformer``, each layer a few compiled-kernel calls.

    Args:
        model: a ``Transformer`` in evaluation mode that ``obstacles`` finds nothing against.
        int8: multiply by int8 copies of the weights, as ``DecodingEngine(int8=True)`` does
            (``attnlab.inference.quantized``); the attention and the norms stay fp32.
        bf16: multiply by bf16 copies of the weights, as bf16 autocast multiplies (the engine's
            searches under ``torch.autocast("cpu", dtype=torch.bfloat16)``); the attention, the
            norms and the caches stay fp32, and the steps run with autocast off.

    Raises:
        ValueError: ``model`` cannot run here; the message lists ``obstacles(model)``.

    Example:
        >>> fused = FusedDecoder(model.eval())
        >>> state = fused.start(memory, src_key_padding_mask)
        >>> logits = fused.step(state, torch.full((B,), model.bos_id))  # (B, V)
    """

    def __init__(self, model: nn.Module, *, int8: bool = False, bf16: bool = False) -> None:
        if found := obstacles(model, int8=int8, bf16=bf16):
            raise ValueError("FusedDecoder cannot run this model here: " + "; ".join(found))
        self.model, self.int8, self.bf16 = model, int8, bf16
        dim = model.config.d_model
        self.dim, self.heads = dim, model.decoder_layers[0].self_attn.num_heads
        self._heads_of = functools.partial(_heads, heads=self.heads, size=dim // self.heads)
        self.layers = [self._layer(layer, dim) for layer in model.decoder_layers]
        self.output = self._product(model.output.weight, model.output.bias)

    def _product(self, weight: Tensor, bias: Tensor | None) -> Product:
        """int8 where ``QuantizedWeights`` would multiply in int8, bf16 where ``PackedWeights``
        would under bf16 autocast (weights of at least ``MIN_PACKED_ELEMENTS``), else fp32 on the
        thin kernel."""
        if self.int8 and weight.numel() >= MIN_PACKED_ELEMENTS:
            return Int8Product.of(weight, bias)
        if self.bf16 and weight.numel() >= MIN_PACKED_ELEMENTS:
            return Bf16Product.of(weight, bias)
        return ThinProduct.of(weight, bias)

    def _layer(self, layer: nn.Module, dim: int) -> _Layer:
        self_attn, cross_attn, ffn = layer.self_attn, layer.cross_attn, layer.ffn
        in_weight, in_bias = cross_attn.in_proj_weight, cross_attn.in_proj_bias
        q_bias, kv_bias = (None, None) if in_bias is None else (in_bias[:dim], in_bias[dim:])
        int8_kv = self.int8 and in_weight[dim:].numel() >= MIN_PACKED_ELEMENTS
        product = self._product
        return _Layer(
            qkv=product(self_attn.in_proj_weight, self_attn.in_proj_bias),
            self_out=product(self_attn.out_proj.weight, self_attn.out_proj.bias),
            cross_q=product(in_weight[:dim], q_bias),
            cross_kv=(Int8Product if int8_kv else MemoryProduct).of(in_weight[dim:], kv_bias),
            cross_out=product(cross_attn.out_proj.weight, cross_attn.out_proj.bias),
            fc1=product(ffn.fc1.weight, ffn.fc1.bias),
            fc2=product(ffn.fc2.weight, ffn.fc2.bias),
            norms=tuple(functools.partial(_layer_norm, norm) for norm in (layer.norm1, layer.norm2, layer.norm3)),
            activation=None if type(ffn.act) is nn.ReLU else ffn.act,
        )

    def start(self, memory: Tensor, memory_key_padding_mask: Tensor | None = None, *, repeat: int = 1) -> FusedState:
        """The state of a search over ``memory (B, S, D)`` (the encoder's output) with ``repeat``
        rows per sentence (rows b k + j); ``memory_key_padding_mask (B, S)`` is ``True`` at padding."""
        batch, source, _ = memory.shape
        memory = memory.float()  # bf16 from an encoder under autocast; the steps run in fp32
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            cross = [_memory(layer.cross_kv(memory).contiguous(), self.heads) for layer in self.layers]
        allowed = None
        if memory_key_padding_mask is not None and bool(memory_key_padding_mask.any()):
            allowed = (~memory_key_padding_mask)[:, None, None, :].expand(batch, self.heads, repeat, source)
        caches = [memory.new_empty(INITIAL_CAPACITY, batch * repeat, 2 * self.dim) for _ in self.layers]
        return FusedState(cross, allowed, caches, None, 0, repeat, self.bf16)

    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    def step(self, state: FusedState, tokens: Tensor) -> Tensor:
        """Feed the newest token of every row, ``tokens (R,)``: the logits ``(R, V)``."""
        t, model = state.length, self.model
        if t == state.caches[0].shape[0]:
            state.caches = [_grown(cache, t) for cache in state.caches]
            if state.lines is not None:
                lines = state.lines.new_empty(state.lines.shape[0], 2 * t)
                lines[:, :t] = state.lines[:, :t]
                state.lines = _own_rows_after(lines, t)
        x = model.embed_target(tokens[:, None], t)[:, 0].contiguous()  # (R, D)
        for layer, cross, cache in zip(self.layers, state.cross, state.caches):
            x = self._layer_step(layer, x, cache, state.lines, t, cross, state.allowed, state.repeat)
        state.length = t + 1
        return self.output(model.decoder_norm(x))  # (R, V)

    def reorder(self, state: FusedState, index: Tensor) -> None:
        """Keep rows ``index (R,)``, each taken from a row of the same source sentence (beam
        search). The caches stay where they are: row r now reads the positions of row
        ``index[r]``'s history from wherever they were written (``state.lines``).

        Raises:
            ValueError: ``index`` does not keep the number of rows (its caches and the
                sentences' row groups are laid out for that many).
        """
        capacity, rows = state.caches[0].shape[:2]
        if index.shape != (rows,):
            raise ValueError(f"index must keep the {rows} rows of the search, got shape {tuple(index.shape)}")
        lines = state.lines
        if lines is None:
            lines = torch.arange(rows, device=index.device)[:, None].expand(rows, capacity)
        state.lines = _own_rows_after(lines.index_select(0, index), state.length)

    def _layer_step(
        self,
        layer: _Layer,
        x: Tensor,
        cache: Tensor,
        lines: Tensor | None,
        t: int,
        cross: tuple[Tensor, Tensor],
        allowed: Tensor | None,
        k: int,
    ) -> Tensor:
        """``DecoderLayer.step`` for one position of each row ``x (R, D)``. Each product has read
        ``x`` before the residual sum is written over it."""
        rows, dim = x.shape
        heads, batch = self.heads, rows // k
        heads_of = self._heads_of
        pre = self.model.config.norm_first
        norm1, norm2, norm3 = layer.norms
        context = torch.empty_like(x)

        # self-attention: this step's keys and values join the cache, the queries read it
        qkv = layer.qkv(norm1(x) if pre else x)  # (R, 3D)
        cache[t].copy_(qkv[:, dim:])
        keys, values = _cached(cache, t + 1, heads)
        fused_step.unsafe_attention(heads_of(qkv, rows, 1), keys, values, None, heads_of(context, rows, 1), lines)
        x = layer.self_out(context, residual=x)
        x = x if pre else norm1(x, in_place=True)

        # source-target attention: a sentence's k rows ask together
        q = layer.cross_q(norm2(x) if pre else x)
        fused_step.unsafe_attention(heads_of(q, batch, k), *cross, allowed, heads_of(context, batch, k))
        x = layer.cross_out(context, residual=x)
        x = x if pre else norm2(x, in_place=True)

        # feed-forward
        h = layer.fc1(norm3(x) if pre else x, relu=layer.activation is None)
        if layer.activation is not None:
            h = layer.activation(h)
        x = layer.fc2(h, residual=x)
        return x if pre else norm3(x, in_place=True)


def _layer_norm(norm: nn.LayerNorm, x: Tensor, *, in_place: bool = False) -> Tensor:
    """``norm(x)`` of contiguous rows ``x (R, D)`` on the step kernel, written over ``x`` with ``in_place``."""
    return fused_step.unsafe_layer_norm(x, norm.weight, norm.bias, norm.eps, x if in_place else torch.empty_like(x))


def _heads(x: Tensor, batch: int, k: int, heads: int, size: int) -> Tensor:
    """The first ``H d`` features of contiguous rows ``x (B k, >= H d)``, a view ``(B, H, k, d)``."""
    features = x.shape[1]
    return x.as_strided((batch, heads, k, size), (k * features, size, features, 1))


def _cached(cache: Tensor, length: int, heads: int) -> tuple[Tensor, Tensor]:
    """Keys and values ``(R, H, length, d)``: views of the first ``length`` positions of a
    self-attention cache ``(capacity, R, 2 D)``."""
    _, rows, features = cache.shape
    size = features // 2 // heads
    shape, strides = (rows, heads, length, size), (features, size, rows * features, 1)
    return cache.as_strided(shape, strides), cache.as_strided(shape, strides, cache.storage_offset() + features // 2)


def _memory(cross: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """Keys and values ``(B, H, S, d)``: views of the memory's ``(B, S, 2 D)``."""
    batch, source, features = cross.shape
    size = features // 2 // heads
    shape, strides = (batch, heads, source, size), (source * features, size, features, 1)
    return cross.as_strided(shape, strides), cross.as_strided(shape, strides, cross.storage_offset() + features // 2)


def _own_rows_after(lines: Tensor, length: int) -> Tensor:
    """``lines (R, capacity)`` with positions from ``length`` on held by each row itself (where
    the coming steps write them)."""
    lines[:, length:] = torch.arange(lines.shape[0], device=lines.device)[:, None]
    return lines


def _grown(cache: Tensor, length: int) -> Tensor:
    """``cache``'s first ``length`` positions in a buffer of twice the capacity."""
    bigger = cache.new_empty(2 * cache.shape[0], *cache.shape[1:])
    bigger[:length] = cache[:length]
    return bigger
