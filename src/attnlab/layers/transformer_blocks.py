"""The encoder and decoder layers of "Attention Is All You Need" (Vaswani et al., 2017, Section 3.1).

Both come post-norm, as in the paper, LayerNorm(x + Dropout(Sublayer(x))), or pre-norm,
x + Dropout(Sublayer(LayerNorm(x))) (Xiong et al., 2020), behind one switch. Sub-modules are
named and laid out so that ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``
weights map one to one (``linear1/linear2`` -> ``ffn.fc1/fc2``, ``multihead_attn`` -> ``cross_attn``).

Shapes: B batch, S source positions, T target positions (queries of this call), T' all target
positions seen so far (T plus those in the cache), D d_model, H heads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from attnlab.functional.kernels.linear import linear
from attnlab.layers.dropout import Dropout
from attnlab.layers.feedforward import FeedForward, LinearFn
from attnlab.layers.kv_cache import KVCache
from attnlab.layers.multihead import MultiHeadAttention

Sublayer = Callable[[Tensor], Tensor]


class _ResidualBlock(nn.Module):
    """What both layers share: self-attention, the FFN, their norms, and the Add & Norm wiring."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        *,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        score: str = "scaled_dot",
        normalize: str = "softmax",
        rope: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(
            d_model, num_heads, dropout=attn_dropout, score=score, normalize=normalize, rope=rope
        )
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.LayerNorm, sublayer: Sublayer) -> Tensor:
        """Post-norm LN(x + Dropout(F(x))) (Section 5.4) or pre-norm x + Dropout(F(LN(x)))."""
        if self.norm_first:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))


class EncoderLayer(_ResidualBlock):
    """Self-attention then a position-wise FFN, each wrapped in Add & Norm (Section 3.1).

    Args:
        d_model: the model size D (512 in the base model).
        num_heads: h (8).
        dim_feedforward: d_ff (2048).
        dropout: P_drop on every sublayer output and inside the FFN (0.1).
        attn_dropout: dropout on the attention weights.
        activation: the FFN's activation (``relu`` in the paper).
        norm_first: pre-norm instead of the paper's post-norm.
        layer_norm_eps: LayerNorm epsilon.
        score: f_sim of the attention layers (``MultiHeadAttention``'s names).
        normalize: f_norm of the attention layers.
        rope: rotary positions in self-attention (Su et al., 2021).
    """

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """Encode ``x (B, S, D) -> (B, S, D)``.

        Args:
            x: ``(B, S, D)``.
            key_padding_mask: ``(B, S)``, ``True`` at padding.
            attn_mask: ``(S, S)`` or ``(B * H, S, S)``, ``True`` = not allowed.
        """

        def attend(h: Tensor) -> Tensor:
            return self.self_attn(h, h, h, key_padding_mask=key_padding_mask, attn_mask=attn_mask)[0]

        x = self._residual(x, self.norm1, attend)
        return self._residual(x, self.norm2, self.ffn)


class DecoderLayer(_ResidualBlock):
    """Masked self-attention, source-target attention and an FFN, each with Add & Norm (Section 3.1).

    Args are those of ``EncoderLayer`` (keywords after ``dim_feedforward``); source-target
    attention takes the same score and normaliser, and no rotary positions (queries and keys
    count positions of different sequences).
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, **kwargs: Any) -> None:
        super().__init__(d_model, num_heads, dim_feedforward, **kwargs)
        self.cross_attn = MultiHeadAttention(
            d_model,
            num_heads,
            dropout=self.self_attn.dropout,
            score=kwargs.get("score", "scaled_dot"),
            normalize=kwargs.get("normalize", "softmax"),
        )
        self.norm3 = nn.LayerNorm(d_model, eps=self.norm1.eps)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
    ) -> Tensor:
        """Decode ``x`` against the encoder output; target position i sees positions <= i only.

        Args:
            x: ``(B, T, D)``, the newest T target positions when ``self_cache`` holds earlier ones;
                or ``(B k, T, D)``, k rows per source sentence (row b k + j reads memory row b).
            memory: the encoder output ``(B, S, D)`` (its keys and values are cached once
                ``cross_cache`` is filled).
            tgt_key_padding_mask: ``(B, T')``, ``True`` at target padding.
            memory_key_padding_mask: ``(B, S)``, ``True`` at source padding.
            self_cache: a growing ``KVCache`` for incremental decoding.
            cross_cache: a static ``KVCache``: the memory is projected to K, V once.

        Returns:
            ``(B, T, D)``.
        """
        # One new query (a decoding step) may see every cached key: no causal mask to build.
        causal = x.shape[1] > 1

        def self_attend(h: Tensor) -> Tensor:
            return self.self_attn(h, h, h, key_padding_mask=tgt_key_padding_mask, is_causal=causal, cache=self_cache)[0]

        def cross_attend(h: Tensor) -> Tensor:
            # k rows of x per source sentence (the hypotheses of a beam) ask their queries
            # together: one read of the sentence's keys and values instead of k.
            rows, length, dim = h.shape
            grouped = h.reshape(memory.shape[0], -1, dim)  # (B, k T, D)
            out, _ = self.cross_attn(
                grouped, memory, memory, key_padding_mask=memory_key_padding_mask, cache=cross_cache
            )
            return out.reshape(rows, length, dim)

        if x.shape[0] % memory.shape[0]:
            raise ValueError(
                f"x has {x.shape[0]} rows, not a multiple of the {memory.shape[0]} source sentences of memory"
            )
        x = self._residual(x, self.norm1, self_attend)
        x = self._residual(x, self.norm2, cross_attend)
        return self._residual(x, self.norm3, self.ffn)

    def step(
        self,
        x: Tensor,
        memory: Tensor,
        self_cache: KVCache,
        cross_cache: KVCache,
        memory_mask: Tensor | None = None,
        *,
        linear: LinearFn = linear,
    ) -> Tensor:
        """``forward``'s output for one decoding step (evaluation: no dropout, no weights),
        without its checks and options, for scaled-dot softmax attention (``MultiHeadAttention.step``).

        Args:
            x: ``(B k, 1, D)``, the newest position of each row, k rows per source sentence.
            memory: the encoder output ``(B, S, D)``.
            self_cache: the growing self-attention cache.
            cross_cache: the static source-target ``KVCache``.
            memory_mask: ``(B, 1, 1, S)``, bool ``True`` where a source position may be attended
                (the negation of ``memory_key_padding_mask``), or None.
            linear: the products, ``F.linear``'s signature (the decoding engine passes products
                of packed weights).

        Returns:
            ``(B k, 1, D)``.
        """
        rows, length, dim = x.shape

        def cross_attend(h: Tensor) -> Tensor:  # a sentence's k rows ask together, as in forward
            grouped = h.reshape(memory.shape[0], -1, dim)  # (B, k, D)
            out = self.cross_attn.step(grouped, cross_cache, memory, memory_mask, linear=linear)
            return out.reshape(rows, length, dim)

        sublayers = (
            (self.norm1, lambda h: self.self_attn.step(h, self_cache, linear=linear)),
            (self.norm2, cross_attend),
            (self.norm3, lambda h: self.ffn.step(h, linear=linear)),
        )
        for norm, sublayer in sublayers:
            x = x + sublayer(norm(x)) if self.norm_first else norm(x + sublayer(x))
        return x
