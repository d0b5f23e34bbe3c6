"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) for sequence-to-sequence.

Assembled from ``attnlab.layers`` only: token embeddings scaled by sqrt(d_model), positions
(sinusoidal as in the paper, learned, or rotary inside self-attention), N ``EncoderLayer`` and N
``DecoderLayer`` with any score and normaliser of the core, and an output projection that may
share the target embedding's weights (Section 3.4). It also speaks the small protocol of
``attnlab.decoding.search`` (``start_state`` / ``step`` / ``reorder_state``), so greedy and beam
search drive it with the key/value cache: the encoder runs once and each layer's source-target
keys and values are projected once. ``attnlab.inference.engine.DecodingEngine`` wraps it for
speed (packed weights, beam pools) without changing its results.

Shapes: B batch (times the beam in search), S source positions, T target positions of this call,
T' target positions seen so far, D d_model, H heads, V vocabulary, N layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.layers.dropout import Dropout
from attnlab.layers.feedforward import Linear
from attnlab.layers.kv_cache import KVCache
from attnlab.layers.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from attnlab.layers.transformer_blocks import DecoderLayer, EncoderLayer
from attnlab.models.transformer_config import POSITIONS, PRESETS, TransformerConfig

__all__ = [
    "POSITIONS",
    "PRESETS",
    "DecoderCache",
    "SearchState",
    "Transformer",
    "TransformerConfig",
]


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
        self.positional = _positions(c)
        self.embed_dropout = Dropout(c.dropout)
        layer_args = dict(
            score=c.score,
            normalize=c.normalize,
            rope=c.positions == "rotary",
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
        self.output = Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self._reset_parameters()
        if c.tie_output:
            self.output.weight = self.tgt_embed.weight

    def _reset_parameters(self) -> None:
        """Xavier-uniform matrices (as ``nn.Transformer``); embeddings N(0, D^-1/2), so that scaled
        by sqrt(D) they have unit variance and, tied, give logits of unit scale; padding row zero."""
        for name, param in self.named_parameters():
            if param.dim() > 1 and "embed" not in name and not name.startswith("positional."):
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
        """``(B, L)``, ``True`` where ``tokens == pad_id``; None when there is no padding at all
        (always the mask in code that ``torch.compile`` traces, which cannot branch on values)."""
        mask = tokens.eq(self.config.pad_id)
        return mask if torch.compiler.is_compiling() or bool(mask.any()) else None

    def _embed(self, embedding: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        """Dropout(Embedding(tokens) * sqrt(D) + PE), ``(B, L) -> (B, L, D)``."""
        x = embedding(tokens) * math.sqrt(self.config.d_model)
        if self.positional is not None:  # rotary positions enter inside self-attention instead
            x = self.positional(x, offset=offset)
        return self.embed_dropout(x)

    def embed_target(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """The decoder's input for target ids ``(B, T)`` at positions ``offset ..``: ``(B, T, D)``."""
        return self._embed(self.tgt_embed, tokens, offset)

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """Run the encoder stack: source ids ``(B, S)`` -> memory ``(B, S, D)``.

        Args:
            src: source token ids ``(B, S)``.
            src_key_padding_mask: ``(B, S)``, ``True`` at padding; None takes ``src == pad_id``.
        """
        if src_key_padding_mask is None:
            src_key_padding_mask = self.padding_mask(src)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, key_padding_mask=src_key_padding_mask)
        return self.encoder_norm(x)

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
        *,
        features_only: bool = False,
    ) -> Tensor:
        """Run the decoder stack and the output projection: logits ``(B, T, V)``.

        Target positions start at ``len(cache)``: with a cache, ``tgt_in`` holds only the new
        tokens (usually one per row) and the caches grow by them. Target padding needs no mask:
        it comes after the tokens that matter, which the causal mask keeps from seeing it.

        Args:
            tgt_in: decoder input ids ``(B, T)`` (BOS y_1 ... y_{T-1} when training), or
                ``(B k, T)``: k rows per source sentence (beam hypotheses), row b k + j reads memory row b.
            memory: the encoder output ``(B, S, D)``.
            memory_key_padding_mask: ``(B, S)``, ``True`` at source padding.
            cache: a ``DecoderCache`` for incremental decoding, updated in place.
            features_only: return the normalised decoder features ``(B, T, D)`` that the output
                projection reads, not the logits.
        """
        offset = 0 if cache is None else len(cache)
        x = self.embed_target(tgt_in, offset)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(
                x,
                memory,
                memory_key_padding_mask=memory_key_padding_mask,
                self_cache=None if cache is None else cache.self_attn[i],
                cross_cache=None if cache is None else cache.cross_attn[i],
            )
        x = self.decoder_norm(x)  # (B, T, D)
        return x if features_only else self.output(x)  # (B, T, V)

    def forward(
        self, src: Tensor, tgt_in: Tensor, src_key_padding_mask: Tensor | None = None, *, features_only: bool = False
    ) -> Tensor:
        """Teacher-forced logits for training, ``decode(tgt_in, encode(src))``: ``(B, T, V)``.

        Args:
            src: ``(B, S)`` source ids.
            tgt_in: ``(B, T)`` decoder inputs, the targets shifted right behind BOS.
            src_key_padding_mask: ``(B, S)``, ``True`` at padding; None takes ``src == pad_id``.
            features_only: return the features ``(B, T, D)`` the output projection reads (a loss
                may then apply ``self.output`` itself, in chunks).
        """
        if src_key_padding_mask is None:
            src_key_padding_mask = self.padding_mask(src)
        memory = self.encode(src, src_key_padding_mask)
        return self.decode(tgt_in, memory, src_key_padding_mask, features_only=features_only)

    def attention_sites(self) -> list[tuple[str, int, nn.Module]]:
        """Where ``attnlab.capture`` finds attention: ``(kind, layer, module)`` for every encoder
        self-attention, decoder self-attention and source-target (``cross``) attention."""
        return (
            [("encoder_self", i, layer.self_attn) for i, layer in enumerate(self.encoder_layers)]
            + [("decoder_self", i, layer.self_attn) for i, layer in enumerate(self.decoder_layers)]
            + [("cross", i, layer.cross_attn) for i, layer in enumerate(self.decoder_layers)]
        )

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

    def step(self, state: SearchState, tokens: Tensor) -> tuple[Tensor, SearchState]:
        """Feed the newest token of every row ``(B,)``: ``(logits (B, V), state)``."""
        if state.cache is not None:
            new_tokens = tokens[:, None]  # (B, 1)
        else:
            state.prefix = torch.cat([state.prefix, tokens[:, None]], dim=1)  # (B, T')
            new_tokens = state.prefix
        logits = self.decode(new_tokens, state.memory, state.memory_key_padding_mask, state.cache)
        return logits[:, -1], state

    def reorder_state(self, state: SearchState, index: Tensor) -> SearchState:
        """Keep rows ``index (B',)``, where row i of the result comes from the same source sentence
        as row i of the state (beam search), so source-side tensors need no reordering."""
        if state.cache is not None:
            state.cache.reorder(index, static=False)
        else:
            state.prefix = state.prefix.index_select(0, index)
        return state


def _positions(config: TransformerConfig) -> nn.Module | None:
    """The positions added to the embeddings: a sinusoidal or learned table; None for rotary."""
    if config.positions == "sinusoidal":
        return SinusoidalPositionalEncoding(config.d_model, config.max_len)
    if config.positions == "learned":
        return LearnedPositionalEmbedding(config.max_len, config.d_model)
    return None
