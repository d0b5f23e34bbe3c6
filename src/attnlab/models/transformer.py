"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) for sequence-to-sequence.

Assembled from ``attnlab.layers`` only: token embeddings scaled by sqrt(d_model), sinusoidal
positions, N ``EncoderLayer`` and N ``DecoderLayer``, and an output projection that may share
the target embedding's weights (Section 3.4). It also speaks the small protocol of
``attnlab.decoding.search`` (``start_state`` / ``step`` / ``reorder_state``), so greedy and beam
search drive it with the key/value cache: the encoder runs once and each layer's source-target
keys and values are projected once.

Shapes: B batch (times the beam in search), S source positions, T target positions of this call,
T' target positions seen so far, D d_model, H heads, V vocabulary, N layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnlab.config import ConfigMixin
from attnlab.layers.dropout import Dropout
from attnlab.layers.kv_cache import KVCache
from attnlab.layers.positional import SinusoidalPositionalEncoding
from attnlab.layers.transformer_blocks import DecoderLayer, EncoderLayer

PRESETS: dict[str, dict[str, Any]] = {
    # Table 3 of the paper; "big" trains with P_drop 0.3 on EN-DE.
    "base": dict(d_model=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048),
    "big": dict(
        d_model=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=4096, dropout=0.3
    ),
    # Sizes that train on a laptop CPU in minutes (small) or seconds (tiny).
    "small": dict(d_model=256, num_heads=4, num_encoder_layers=3, num_decoder_layers=3, dim_feedforward=1024),
    "tiny": dict(d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=128),
}


@dataclass
class TransformerConfig(ConfigMixin):
    """Hyper-parameters of ``Transformer``; saved inside checkpoints via ``to_dict``.

    ``from_preset`` reads ``PRESETS`` (``base``, ``big``, ``small``, ``tiny``) with overrides (vocab sizes).

    Attributes:
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size.
        d_model: model size D.
        num_heads: attention heads h.
        num_encoder_layers: N of the encoder.
        num_decoder_layers: N of the decoder.
        dim_feedforward: d_ff.
        dropout: P_drop on embeddings + positions, sublayer outputs and inside the FFN.
        attn_dropout: dropout on attention weights.
        activation: the FFN's activation.
        norm_first: pre-norm layers plus a final LayerNorm after each stack.
        share_embeddings: one embedding for source and target (joint vocabulary).
        tie_output: the output projection is the target embedding matrix (Section 3.4).
        max_len: positions precomputed for the sinusoidal table.
        layer_norm_eps: LayerNorm epsilon.
        pad_id: padding token id.
        bos_id: beginning-of-sentence id, the first decoder input.
        eos_id: end-of-sentence id.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation: str = "relu"
    norm_first: bool = False
    share_embeddings: bool = False
    tie_output: bool = True
    max_len: int = 1024
    layer_norm_eps: float = 1e-5
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "dim_feedforward", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs one joint vocabulary, got src_vocab_size ({self.src_vocab_size}) "
                f"!= tgt_vocab_size ({self.tgt_vocab_size})"
            )
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < min(self.src_vocab_size, self.tgt_vocab_size):
                raise ValueError(f"{name} ({getattr(self, name)}) must be a valid id of both vocabularies")


@dataclass
class AttentionWeights:
    """Attention maps returned on request, one tensor per layer (a head dim after B if not averaged).

    Attributes:
        encoder: encoder self-attention, ``(B, S, S)`` each.
        decoder: decoder self-attention, ``(B, T, T')`` each.
        cross: source-target attention (the alignments), ``(B, T, S)`` each.
    """

    encoder: list[Tensor] = field(default_factory=list)
    decoder: list[Tensor] = field(default_factory=list)
    cross: list[Tensor] = field(default_factory=list)


class DecoderCache:
    """Key/value caches of the decoder: per layer a growing self-attention one and a static
    source-target one (filled by the first step, reused by every later one).

    Args:
        num_layers: decoder layers N.
    """

    def __init__(self, num_layers: int) -> None:
        self.self_attn = [KVCache() for _ in range(num_layers)]
        self.cross_attn = [KVCache(static=True) for _ in range(num_layers)]

    def __len__(self) -> int:
        """Target positions cached so far."""
        return len(self.self_attn[0]) if self.self_attn else 0

    def reorder(self, index: Tensor, *, static: bool = True) -> None:
        """Keep the batch rows ``index (B',)``; ``static=False`` leaves source-target caches as
        they are, which is right when ``index`` never moves a row to another source sentence."""
        for cache in self.self_attn + (self.cross_attn if static else []):
            cache.reorder(index)


@dataclass
class SearchState:
    """What ``Transformer.step`` carries between decoding steps.

    Attributes:
        memory: the encoder output ``(B, S, D)``.
        memory_key_padding_mask: ``(B, S)``, ``True`` at source padding, or None.
        cache: the decoder's KV caches, or None to recompute the whole prefix every step.
        prefix: the target tokens so far ``(B, T')`` (kept only without a cache).
    """

    memory: Tensor
    memory_key_padding_mask: Tensor | None
    cache: DecoderCache | None
    prefix: Tensor | None = None


class Transformer(nn.Module):
    """Encoder-decoder Transformer, p(y | x) = prod_t softmax(W_out h_t) (Vaswani et al., 2017).

    Embeddings are multiplied by sqrt(d_model) and summed with sinusoidal positions (Section 3.4,
    3.5), dropout follows; post-norm layers as in the paper, or pre-norm with a final LayerNorm.

    Args:
        config: the hyper-parameters.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.tgt_embed = (
            self.src_embed if c.share_embeddings else nn.Embedding(c.tgt_vocab_size, c.d_model, padding_idx=c.pad_id)
        )
        self.positional = SinusoidalPositionalEncoding(c.d_model, c.max_len)
        self.embed_dropout = Dropout(c.dropout)
        layer_args = dict(
            dropout=c.dropout,
            attn_dropout=c.attn_dropout,
            activation=c.activation,
            norm_first=c.norm_first,
            layer_norm_eps=c.layer_norm_eps,
        )
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.num_heads, c.dim_feedforward, **layer_args) for _ in range(c.num_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(c.d_model, c.num_heads, c.dim_feedforward, **layer_args) for _ in range(c.num_decoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else nn.Identity()
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self._reset_parameters()
        if c.tie_output:
            self.output.weight = self.tgt_embed.weight

    def _reset_parameters(self) -> None:
        """Xavier-uniform matrices (as ``nn.Transformer``); embeddings N(0, D^-1/2), so that scaled
        by sqrt(D) they have unit variance and, tied, give logits of unit scale; padding row zero."""
        for name, param in self.named_parameters():
            if param.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(param)
        for embedding in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(embedding.weight, std=self.config.d_model**-0.5)
            with torch.no_grad():
                embedding.weight[self.config.pad_id].zero_()

    # --- the protocol of attnlab.decoding.search -------------------------------------------
    @property
    def pad_id(self) -> int:
        return self.config.pad_id

    @property
    def bos_id(self) -> int:
        return self.config.bos_id

    @property
    def eos_id(self) -> int:
        return self.config.eos_id

    def padding_mask(self, tokens: Tensor) -> Tensor | None:
        """``(B, L)``, ``True`` where ``tokens == pad_id``; None when there is no padding at all."""
        mask = tokens.eq(self.config.pad_id)
        return mask if bool(mask.any()) else None

    def _embed(self, embedding: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        """Dropout(Embedding(tokens) * sqrt(D) + PE), ``(B, L) -> (B, L, D)``."""
        x = embedding(tokens) * math.sqrt(self.config.d_model)
        return self.embed_dropout(self.positional(x, offset=offset))

    def embed_target(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """The decoder's input for target ids ``(B, T)`` at positions ``offset ..``: ``(B, T, D)``."""
        return self._embed(self.tgt_embed, tokens, offset)

    def encode(
        self,
        src: Tensor,
        src_key_padding_mask: Tensor | None = None,
        *,
        need_weights: bool = False,
        average_attn_weights: bool = True,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Run the encoder stack.

        Args:
            src: source token ids ``(B, S)``.
            src_key_padding_mask: ``(B, S)``, ``True`` at padding; None takes ``src == pad_id``.
            need_weights: also return each layer's self-attention weights.
            average_attn_weights: average them over heads.

        Returns:
            memory ``(B, S, D)``, or ``(memory, weights)`` with one ``(B, S, S)`` per layer.
        """
        if src_key_padding_mask is None:
            src_key_padding_mask = self.padding_mask(src)
        x, weights = self._embed(self.src_embed, src), []
        for layer in self.encoder_layers:
            x, w = layer(
                x,
                key_padding_mask=src_key_padding_mask,
                need_weights=need_weights,
                average_attn_weights=average_attn_weights,
            )
            weights.append(w)
        memory = self.encoder_norm(x)
        return (memory, weights) if need_weights else memory

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
        *,
        need_weights: bool = False,
        average_attn_weights: bool = True,
    ) -> Tensor | tuple[Tensor, AttentionWeights]:
        """Run the decoder stack and the output projection.

        Target positions start at ``len(cache)``: with a cache, ``tgt_in`` holds only the new
        tokens (usually one per row) and the caches grow by them. Target padding needs no mask:
        it comes after the tokens that matter, which the causal mask keeps from seeing it.

        Args:
            tgt_in: decoder input ids ``(B, T)`` (BOS y_1 ... y_{T-1} when training), or
                ``(B k, T)``: k rows per source sentence (beam hypotheses), row b k + j reads memory row b.
            memory: the encoder output ``(B, S, D)``.
            memory_key_padding_mask: ``(B, S)``, ``True`` at source padding.
            cache: a ``DecoderCache`` for incremental decoding, updated in place.
            need_weights: also return the decoder's attention weights.
            average_attn_weights: average them over heads.

        Returns:
            logits ``(B, T, V)``, or ``(logits, AttentionWeights)`` with ``decoder`` and ``cross``.
        """
        offset = 0 if cache is None else len(cache)
        x, weights = self.embed_target(tgt_in, offset), AttentionWeights()
        for i, layer in enumerate(self.decoder_layers):
            x, self_w, cross_w = layer(
                x,
                memory,
                memory_key_padding_mask=memory_key_padding_mask,
                self_cache=None if cache is None else cache.self_attn[i],
                cross_cache=None if cache is None else cache.cross_attn[i],
                need_weights=need_weights,
                average_attn_weights=average_attn_weights,
            )
            weights.decoder.append(self_w)
            weights.cross.append(cross_w)
        logits = self.output(self.decoder_norm(x))  # (B, T, V)
        return (logits, weights) if need_weights else logits

    def forward(
        self,
        src: Tensor,
        tgt_in: Tensor,
        src_key_padding_mask: Tensor | None = None,
        *,
        need_weights: bool = False,
        average_attn_weights: bool = True,
    ) -> Tensor | tuple[Tensor, AttentionWeights]:
        """Teacher-forced logits for training: ``decode(tgt_in, encode(src))``.

        Args:
            src: ``(B, S)`` source ids.
            tgt_in: ``(B, T)`` decoder inputs, the targets shifted right behind BOS.
            src_key_padding_mask: ``(B, S)``, ``True`` at padding; None takes ``src == pad_id``.
            need_weights: also return every layer's attention weights.
            average_attn_weights: average them over heads.

        Returns:
            logits ``(B, T, V)``, or ``(logits, AttentionWeights)``.
        """
        if src_key_padding_mask is None:
            src_key_padding_mask = self.padding_mask(src)
        if not need_weights:
            memory = self.encode(src, src_key_padding_mask)
            return self.decode(tgt_in, memory, src_key_padding_mask)
        memory, encoder_weights = self.encode(
            src, src_key_padding_mask, need_weights=True, average_attn_weights=average_attn_weights
        )
        logits, weights = self.decode(
            tgt_in, memory, src_key_padding_mask, need_weights=True, average_attn_weights=average_attn_weights
        )
        weights.encoder = encoder_weights
        return logits, weights

    # --- incremental decoding, driven by attnlab.decoding.search ----------------------------
    def start_state(
        self, src: Tensor, src_key_padding_mask: Tensor | None = None, *, repeat: int = 1, use_cache: bool = True
    ) -> SearchState:
        """Encode ``src (B, S)`` once; the state holds ``repeat`` rows per sentence (row b * repeat + j)."""
        if src_key_padding_mask is None:
            src_key_padding_mask = self.padding_mask(src)
        # The memory is not repeated: the decoder layers group the ``repeat`` rows of a sentence
        # for source-target attention.
        memory = self.encode(src, src_key_padding_mask)  # (B, S, D)
        rows = memory.shape[0] * repeat
        if use_cache:
            return SearchState(memory, src_key_padding_mask, DecoderCache(len(self.decoder_layers)))
        return SearchState(memory, src_key_padding_mask, None, memory.new_empty(rows, 0, dtype=torch.long))

    def step(
        self, state: SearchState, tokens: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, SearchState, Tensor | None]:
        """Feed the newest token of every row ``(B,)``.

        Returns:
            ``(logits (B, V), state, cross)``: ``cross`` is the source-target attention of this
            step averaged over heads, ``(B, N, S)`` for the N decoder layers, or None.
        """
        if state.cache is not None:
            new_tokens = tokens[:, None]  # (B, 1)
        else:
            state.prefix = torch.cat([state.prefix, tokens[:, None]], dim=1)  # (B, T')
            new_tokens = state.prefix
        out = self.decode(
            new_tokens, state.memory, state.memory_key_padding_mask, state.cache, need_weights=need_weights
        )
        logits, weights = out if need_weights else (out, None)
        cross = None if weights is None else torch.stack([w[:, -1] for w in weights.cross], dim=1)  # (B, N, S)
        return logits[:, -1], state, cross

    def reorder_state(self, state: SearchState, index: Tensor) -> SearchState:
        """Keep rows ``index (B',)``, where row i of the result comes from the same source sentence
        as row i of the state (beam search), so source-side tensors need no reordering."""
        if state.cache is not None:
            state.cache.reorder(index, static=False)
        else:
            state.prefix = state.prefix.index_select(0, index)
        return state
