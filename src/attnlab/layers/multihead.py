"""Multi-head attention over any score and normaliser, a drop-in for ``torch.nn.MultiheadAttention``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.functional.attention import attention
from attnlab.functional.kernels.linear import linear
from attnlab.functional.masks import torch_masks_to_allowed
from attnlab.functional.normalize import NormalizeFn
from attnlab.functional.scores import ScoreFn
from attnlab.layers.feedforward import Linear, LinearFn
from attnlab.layers.kv_cache import KVCache
from attnlab.layers.positional import RotaryEmbedding
from attnlab.layers.scores import build_score_and_normalizer


class MultiHeadAttention(nn.Module):
    """Multi-head attention, MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O (Vaswani et al., 2017).

    head_i = attention(Q W_i^Q, K W_i^K, V W_i^V) with any f_sim / f_norm of ``attnlab.functional``;
    the default (scaled dot product and softmax) runs on the fused path. Parameters are laid out
    as in ``torch.nn.MultiheadAttention`` (``in_proj_weight`` or ``{q,k,v}_proj_weight``,
    ``out_proj``), masks mean what they mean there (``True`` = masked out), so it is a drop-in
    replacement; ``from_torch`` takes over such a module's weights.

    Args:
        embed_dim: d_model, the size of queries and of the output.
        num_heads: h; ``embed_dim`` must be divisible by it.
        kdim: size of the keys (``embed_dim`` when None).
        vdim: size of the values (``embed_dim`` when None).
        dropout: dropout on the attention weights.
        bias: learn biases in the input and output projections.
        batch_first: inputs are ``(B, L, E)``; otherwise ``(L, B, E)``.
        score: f_sim per head: a name (``scaled_dot``, ``dot``, ``cosine``, ``additive``,
            ``general``) or a callable / module ``(q, k) -> scores``.
        normalize: f_norm: a name (``softmax``, ``sparsemax``, ``weighted_softmax``,
            ``temperature_softmax``) or a callable / module ``(scores, mask) -> weights``.
        rope: rotate queries and keys by their positions (``True`` builds a ``RotaryEmbedding``).
        fused: force (True) or forbid (False) the fused kernel; None chooses per call.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = True,
        score: str | ScoreFn = "scaled_dot",
        normalize: str | NormalizeFn = "softmax",
        rope: bool | RotaryEmbedding = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim ({embed_dim}) and num_heads ({num_heads}) must be positive")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout, self.batch_first, self.fused = dropout, batch_first, fused
        self._build_projections(bias)
        self.score, self.normalize = build_score_and_normalizer(score, normalize, self.head_dim)
        self.rope = RotaryEmbedding(self.head_dim) if rope is True else (rope or None)
        self._reset_parameters()

    def _build_projections(self, bias: bool) -> None:
        e = self.embed_dim
        self._qkv_same_embed_dim = self.kdim == e and self.vdim == e
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * e, e))  # [W^Q; W^K; W^V]
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(e, e))
            self.k_proj_weight = nn.Parameter(torch.empty(e, self.kdim))
            self.v_proj_weight = nn.Parameter(torch.empty(e, self.vdim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * e)) if bias else None
        self.out_proj = Linear(e, e, bias=bias)  # W^O

    def _reset_parameters(self) -> None:
        """The initialisation of ``torch.nn.MultiheadAttention``."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
            nn.init.zeros_(self.out_proj.bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        average_attn_weights: bool = True,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` to ``key``/``value``.

        Args:
            query: ``(B, Lq, E)`` (``(Lq, B, E)`` unless batch_first; ``(Lq, E)`` unbatched).
            key: ``(B, Lk, kdim)``.
            value: ``(B, Lk, vdim)``.
            key_padding_mask: ``(B, Lk)``, bool ``True`` = padding (ignored) or a float bias.
            attn_mask: ``(Lq, Lk)``, ``(B * H, Lq, Lk)`` or ``(B, H, Lq, Lk)``, bool ``True`` =
                not allowed, or a float bias.
            is_causal: mask future keys; with a cache the queries are the newest positions.
            need_weights: also return the attention weights.
            average_attn_weights: average the weights over heads.
            cache: a ``KVCache`` for incremental decoding, updated in place. A static cache
                (source-target attention) projects ``key``/``value`` once and reuses them.

        Returns:
            ``(output, weights)``: output like ``query``; weights ``(B, Lq, Lk)`` averaged or
            ``(B, H, Lq, Lk)`` per head (no batch dim when unbatched), or None.
        """
        query, key, value, unbatched = self._to_batch_first(query, key, value)
        if unbatched:
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        self._check_inputs(query, key, value, cache)
        past = 0 if cache is None or cache.static else len(cache)
        q, k, v = self.project(query, key, value, cache=cache)  # (B, H, L, hd)
        if self.rope is not None and not (cache is not None and cache.static):
            q, k = self.rope(q, offset=past), self.rope(k, offset=past)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H, past + L, hd)
        mask = torch_masks_to_allowed(key_padding_mask, attn_mask, q.shape[0], self.num_heads, q.shape[2], k.shape[2])
        context, weights = attention(
            q,
            k,
            v,
            score=self.score,
            normalize=self.normalize,
            mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights,
            fused=self.fused,
            weights_average_dim=1 if average_attn_weights else None,
        )  # (B, H, Lq, hd)
        batch, _, lq, _ = context.shape
        output = self.out_proj(context.transpose(1, 2).reshape(batch, lq, self.embed_dim))  # (B, Lq, E)
        if unbatched:
            return output.squeeze(0), None if weights is None else weights.squeeze(0)
        return (output if self.batch_first else output.transpose(0, 1)), weights

    @property
    def is_plain(self) -> bool:
        """softmax(Q K^T / sqrt(d)) V on the fused kernel: the default score and normaliser, no
        rotary positions, one fused in-projection. ``step`` serves such modules only."""
        return not self._step_obstacles()

    def _step_obstacles(self) -> list[str]:
        """What ``step`` would ignore in this module, named for the error."""
        obstacles = []
        if not (isinstance(self.score, str) and self.score == "scaled_dot"):
            obstacles.append(f"score={_describe(self.score)}")
        if not (isinstance(self.normalize, str) and self.normalize == "softmax"):
            obstacles.append(f"normalize={_describe(self.normalize)}")
        if self.rope is not None:
            obstacles.append("rotary positions (rope)")
        if self.fused is False:
            obstacles.append("fused=False")
        if not self._qkv_same_embed_dim:
            obstacles.append(f"kdim={self.kdim}, vdim={self.vdim} (separate projections)")
        return obstacles

    def step(
        self,
        query: Tensor,
        cache: KVCache,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        linear: LinearFn = linear,
    ) -> Tensor:
        """``forward``'s output for the queries of one decoding step (evaluation: no dropout, no
        weights), without its checks and options, for scaled-dot softmax attention only.

        Args:
            query: ``(B, L, E)``, batch first.
            cache: self-attention (``memory`` None): the growing cache this step's keys and
                values are appended to; source-target attention: the static cache of ``memory``'s
                keys and values, filled by the first step.
            memory: ``(B, S, E)`` for source-target attention.
            mask: ``(B, 1, 1, S)``, bool ``True`` = may attend (SDPA's sense, not torch's
                ``key_padding_mask``), or None.
            linear: the products, ``F.linear``'s signature (the decoding engine passes products
                of packed weights).

        Returns:
            ``(B, L, E)``. Self-attention lets every query see every cached key (one new
            position per row); several new positions need ``forward``'s causal mask.

        Raises:
            ValueError: the module has a score, normaliser, rotary positions or projections that
                ``step`` would ignore (use ``forward`` with a ``KVCache``).
        """
        if obstacles := self._step_obstacles():
            raise ValueError(
                f"MultiHeadAttention.step computes softmax(Q K^T / sqrt(d)) V with one in-projection and "
                f"would ignore {', '.join(obstacles)}: call forward(..., cache=cache) instead"
            )
        batch, length, _ = query.shape
        source = query if memory is None else memory
        q, k, v = self.project(query, source, source, cache=cache, linear=linear)  # (B, H, L, hd); k, v None if cached
        context = cache.attend(q, k, v, mask)  # (B, H, L, hd)
        context = context.transpose(1, 2).reshape(batch, length, self.embed_dim)  # (B, L, E)
        return linear(context, self.out_proj.weight, self.out_proj.bias)

    def _to_batch_first(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
        if query.ndim == 2:
            return query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0), True
        if query.ndim != 3:
            raise ValueError(f"query must be 3-D (batched) or 2-D (unbatched), got shape {tuple(query.shape)}")
        if not self.batch_first:
            return query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), False
        return query, key, value, False

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor, cache: KVCache | None) -> None:
        for name, x, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if x.ndim != 3 or x.shape[-1] != dim:
                raise ValueError(f"{name} must be (B, L, {dim}), got shape {tuple(x.shape)} (batch first)")
        self._check_dtypes(query, key, value)
        if cache is not None and cache.is_filled:
            return
        if not query.shape[0] == key.shape[0] == value.shape[0]:
            raise ValueError(
                f"batch sizes differ: query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
            )
        if key.shape[1] != value.shape[1]:
            raise ValueError(f"key and value lengths differ: key {tuple(key.shape)}, value {tuple(value.shape)}")

    def _check_dtypes(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        """Raise naming both dtypes when an input's dtype is not the weights' and autocast does not bridge them."""
        weight = self.in_proj_weight if self._qkv_same_embed_dim else self.q_proj_weight
        if torch.is_autocast_enabled(query.device.type):
            return
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.dtype != weight.dtype:
                raise ValueError(
                    f"{name} is {x.dtype} but the weights of MultiHeadAttention are {weight.dtype}: run it under "
                    f"torch.autocast, or convert one side, e.g. module.to({x.dtype}) or {name}.to({weight.dtype})"
                )

    def project(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        cache: KVCache | None = None,
        linear: LinearFn = linear,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Q W^Q, K W^K, V W^V split into heads: ``(B, H, L, hd)`` each, from batch-first inputs.

        Keys and values are None when a filled static ``cache`` already holds them; ``linear``
        does the products (``attnlab.functional.kernels.linear.linear`` unless the decoding engine
        passes its own).
        """
        skip_kv = cache is not None and cache.is_filled
        if query is key and key is value and not skip_kv and self._qkv_same_embed_dim:
            batch, length, _ = query.shape
            qkv = linear(query, self.in_proj_weight, self.in_proj_bias)  # (B, L, 3E), one GEMM
            qkv = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
            return tuple(qkv)  # strided views; the attention kernel decides whether a copy pays
        w_q, w_k, w_v = self._weights()
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        q = linear(query, w_q, b_q)
        k = None if skip_kv else linear(key, w_k, b_k)
        v = None if skip_kv else linear(value, w_v, b_v)
        return tuple(None if x is None else self._split_heads(x) for x in (q, k, v))

    def _weights(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._qkv_same_embed_dim:
            return self.in_proj_weight.chunk(3)
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, hd)

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """A ``MultiHeadAttention`` with the weights (a copy) and settings of a torch module."""
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("from_torch does not support add_bias_kv=True or add_zero_attn=True")
        ours = cls(
            module.embed_dim,
            module.num_heads,
            kdim=module.kdim,
            vdim=module.vdim,
            dropout=module.dropout,
            bias=module.in_proj_bias is not None,
            batch_first=module.batch_first,
        )
        missing, unexpected = ours.load_state_dict(module.state_dict(), strict=False)
        if missing or unexpected:
            raise ValueError(f"weights do not map: missing {missing}, unexpected {unexpected}")
        ref = next(module.parameters())
        return ours.to(device=ref.device, dtype=ref.dtype)

    def extra_repr(self) -> str:
        score, norm = _describe(self.score), _describe(self.normalize)
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, score={score}, normalize={norm}"


def _describe(fn: object) -> str:
    return repr(fn) if isinstance(fn, str) else type(fn).__name__
