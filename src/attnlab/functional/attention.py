"""The attention function: C = f_norm(f_sim(Q, K)) V.

Notation used in this package (shape comments read against it):
    B   batch           H   heads            Lq  queries          Lk  keys (= values)
    d_k query/key size  d_v value size       E   score-vector size (weighted softmax)
    ... any number of leading batch dims (B, or B and H)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.masks import causal_mask, check_mask, merge_masks
from attnlab.functional.normalize import NormalizeFn, resolve_normalizer, softmax
from attnlab.functional.scores import ScoreFn, check_same_dim, resolve_score, scaled_dot_score

# On CPU, SDPA's flash kernel wins every forward pass and every fp32 backward (2026-11-22,
# torch 2.13: 1.03-1.67x at 32-197 keys, 3-8% of a whole fp32 ViT or Transformer training step),
# but its bf16 backward loses to a plain matmul-softmax-matmul below 512 keys (~0.3x).
# benchmarks/attention_kernels.py measures the crossover. CUDA always takes SDPA.
CPU_SDPA_MIN_KEYS_BACKWARD = {torch.float32: 0, torch.float64: 192}
CPU_SDPA_MIN_KEYS_BACKWARD_LOW_PRECISION = 512
# From this many keys on, SDPA's CPU kernel reads contiguous heads faster than strided views of a
# packed (B, L, 3, H, d) projection, enough to pay for the copy; below, the copy costs more.
SDPA_CONTIGUOUS_MIN_KEYS = 256
# SDPA's CPU kernel spends microseconds on every block of queries of every (batch, head): with
# 2 to 8 fp32 queries against at most 128 keys (a sentence's beam hypotheses asking together in
# a decoding step), two plain products and a softmax take 0.4-0.98x its time; with more of
# either they lose (python -m benchmarks.attention_kernels --decoding). One query stays fused.
CPU_PLAIN_MAX_QUERIES = 8
CPU_PLAIN_MAX_KEYS = 128
# Elements of one chunk of scores when weights are computed beside the fused kernel.
WEIGHTS_CHUNK_ELEMENTS = 1 << 22

_checks_enabled = True


def set_input_checks(enabled: bool) -> None:
    """Turn the check for NaN inputs on or off (on by default; it reads the context once per call)."""
    global _checks_enabled
    _checks_enabled = enabled


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    score: str | ScoreFn = "scaled_dot",
    normalize: str | NormalizeFn = "softmax",
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    scale: float | None = None,
    fused: bool | None = None,
    weights_average_dim: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Attention in the general form: S = f_sim(Q, K), A = f_norm(S), C = A V.

    With ``score="scaled_dot"`` and ``normalize="softmax"`` this is Eq. 1 of "Attention Is All You
    Need", softmax(Q K^T / sqrt(d_k)) V, and runs on the fused path, whose kernel is chosen per
    call (``_prefer_sdpa``; the table in docs/notation.md): ``F.scaled_dot_product_attention``
    on CUDA, for forward passes without gradients and for fp32 CPU training, one
    matmul-softmax-matmul for short bf16 CPU sequences that need gradients and for per-head
    weights, and, for head-averaged weights on CPU, a blockwise pass that never holds all
    heads' maps at once (without gradients).

    Args:
        query: Q, ``(..., Lq, d_k)``.
        key: K, ``(..., Lk, d_k)`` (``d_k`` may differ from the query's for parametric scores).
        value: V, ``(..., Lk, d_v)``.
        score: f_sim, a name in ``SCORES`` or a callable ``(query, key) -> (..., Lq, Lk)``
            (``(..., Lq, Lk, E)`` for vector-valued scores).
        normalize: f_norm, a name in ``NORMALIZERS`` or a callable ``(scores, mask) -> weights``.
        mask: broadcasting to ``(..., Lq, Lk)``; boolean with ``True`` = may attend (as in
            ``F.scaled_dot_product_attention``), or a float bias added to the scores.
        is_causal: also mask keys after each query, the last query aligned with the last key.
        dropout_p: dropout on the weights before they meet V (pass 0.0 at evaluation).
        need_weights: return A as well.
        scale: the factor of the scaled dot product, ``1 / sqrt(d_k)`` when None.
        fused: force (True) or forbid (False) the fused path; None chooses.
        weights_average_dim: average the returned weights over this dim (e.g. heads) while they
            are computed, so the full per-head map is never held.

    Returns:
        ``(context, weights)``: C ``(..., Lq, d_v)`` and A ``(..., Lq, Lk)`` (pre-dropout, the
        averaged dim removed) or None. Queries with no allowed key get zero weights and context.
    """
    batch_shape = _check_inputs(query, key, value)
    lq, lk = query.shape[-2], key.shape[-2]
    if mask is not None:
        check_mask(mask, (*batch_shape, lq, lk))
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if lq == 0 or lk == 0:
        return _empty_result(query, value, batch_shape, lq, lk, need_weights, weights_average_dim)

    score_fn, norm_fn = resolve_score(score), resolve_normalizer(normalize)
    if scale is not None and score_fn is not scaled_dot_score:
        raise ValueError(f"scale={scale} applies to the scaled_dot score only, got score={score!r}")
    is_fast = score_fn is scaled_dot_score and norm_fn is softmax
    if fused and not is_fast:
        raise ValueError(f"fused=True needs score='scaled_dot' and normalize='softmax', got {score!r}, {normalize!r}")
    if is_fast:
        check_same_dim(query, key, "scaled_dot_score")  # before a kernel that would name neither
    per_head_weights = need_weights and weights_average_dim is None
    hides_nan_queries = False
    averaged_weights_on_cpu = need_weights and weights_average_dim is not None and query.device.type == "cpu"
    if is_fast and fused is None and averaged_weights_on_cpu:
        context, weights = _blockwise_attention(
            query, key, value, mask, is_causal, dropout_p, scale, weights_average_dim
        )
    elif is_fast and fused is not False and _prefer_sdpa(query, key, value, fused, per_head_weights):
        context, weights = _sdpa_attention(
            query, key, value, batch_shape, mask, is_causal, dropout_p, need_weights, scale, weights_average_dim
        )
        hides_nan_queries = query.device.type == "cpu"  # its CPU kernel gives a NaN query a zero row
    else:
        context, weights = _explicit_attention(
            query, key, value, batch_shape, score_fn, norm_fn, mask, is_causal, dropout_p, scale if is_fast else None
        )
        if not need_weights:
            weights = None
        elif weights_average_dim is not None:
            weights = weights.mean(weights_average_dim)
    _check_no_nan(context, query, key, value, also_query=hides_nan_queries)
    return context, weights


def _explicit_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    batch_shape: torch.Size,
    score_fn: ScoreFn,
    norm_fn: NormalizeFn,
    mask: Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float | None,
) -> tuple[Tensor, Tensor]:
    """C = dropout(f_norm(f_sim(Q, K), mask)) V, step by step; returns (C, A)."""
    lq, lk = query.shape[-2], key.shape[-2]
    if is_causal:
        mask = merge_masks(mask, causal_mask(lq, lk, device=query.device))
    scores = scaled_dot_score(query, key, scale) if score_fn is scaled_dot_score else score_fn(query, key)
    _check_scores(scores, (*batch_shape, lq, lk))
    weights = norm_fn(scores, mask)  # (..., Lq, Lk)
    context = (F.dropout(weights, dropout_p) if dropout_p > 0 else weights) @ value  # (..., Lq, d_v)
    return context, weights


def attention_weights(
    query: Tensor,
    key: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    average_dim: int | None = None,
    chunk_elements: int = WEIGHTS_CHUNK_ELEMENTS,
) -> Tensor:
    """Softmax(Q K^T * scale) under the mask, computed a chunk of queries at a time.

    Peak memory is the result plus one chunk of about ``chunk_elements`` scores: with
    ``average_dim`` set (e.g. over heads) the per-head map is never held whole.

    Returns:
        ``(..., Lq, Lk)``, the averaged dim removed.
    """
    chunks = [
        weights if average_dim is None else weights.mean(average_dim)
        for _, weights in _softmax_blocks(query, key, mask, is_causal, scale, chunk_elements)
    ]
    return torch.cat(chunks, dim=-2)


def _softmax_blocks(
    query: Tensor, key: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None, chunk_elements: int
) -> Iterator[tuple[slice, Tensor]]:
    """``(rows, softmax(Q[rows] K^T * scale))`` for blocks of about ``chunk_elements`` scores."""
    lq, lk = query.shape[-2], key.shape[-2]
    key = key.contiguous()  # read by every block: one copy here, not one per block inside matmul
    rows_per_chunk = max(1, chunk_elements // max(1, lk * math.prod(query.shape[:-2])))
    full_mask = merge_masks(mask, causal_mask(lq, lk, device=query.device)) if is_causal else mask
    for start in range(0, lq, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, lq))
        chunk_mask = None if full_mask is None else _rows_of(full_mask, rows)
        yield rows, softmax(scaled_dot_score(query[..., rows, :], key, scale), chunk_mask)  # (..., rows, Lk)


def _blockwise_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float | None,
    average_dim: int,
) -> tuple[Tensor, Tensor]:
    """Context and head-averaged weights, a block of queries at a time (one softmax per block).

    Computes what ``nn.MultiheadAttention(need_weights=True)`` does, but without evaluation-time
    memory for all heads' maps at once and with each block of scores still in cache when V meets it.
    """
    contexts, weights = [], []
    value = value.contiguous()  # read by every block
    for _, block in _softmax_blocks(query, key, mask, is_causal, scale, WEIGHTS_CHUNK_ELEMENTS):
        contexts.append((F.dropout(block, dropout_p) if dropout_p > 0 else block) @ value)  # (..., rows, d_v)
        weights.append(block.mean(average_dim))
    return torch.cat(contexts, dim=-2), torch.cat(weights, dim=-2)


def _rows_of(mask: Tensor, rows: slice) -> Tensor:
    """The mask's slice for a block of query rows (a mask broadcasting over queries is kept whole)."""
    return mask if mask.ndim < 2 or mask.shape[-2] == 1 else mask[..., rows, :]


def _prefer_sdpa(query: Tensor, key: Tensor, value: Tensor, fused: bool | None, per_head_weights: bool) -> bool:
    """The kernel the measurements favour: SDPA, except for short bf16 (or float64) CPU sequences that need gradients.

    Per-head weights are a full (..., Lq, Lk) map either way; the explicit path makes them once,
    where SDPA would need a second pass.
    """
    if fused:
        return True
    if per_head_weights:
        return False
    if query.device.type != "cpu":
        return True
    if not (torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)):
        return True
    min_keys = CPU_SDPA_MIN_KEYS_BACKWARD.get(query.dtype, CPU_SDPA_MIN_KEYS_BACKWARD_LOW_PRECISION)
    return key.shape[-2] >= min_keys


def _sdpa_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    batch_shape: torch.Size,
    mask: Tensor | None,
    is_causal: bool,
    dropout_p: float,
    need_weights: bool,
    scale: float | None,
    weights_average_dim: int | None,
) -> tuple[Tensor, Tensor | None]:
    lq, lk = query.shape[-2], key.shape[-2]
    sdpa_mask, sdpa_causal = mask, is_causal
    if is_causal and (mask is not None or lq != lk):
        # SDPA's is_causal aligns the first query with the first key and takes no extra mask.
        sdpa_mask, sdpa_causal = merge_masks(mask, causal_mask(lq, lk, device=query.device)), False
    q, k, v, m = _as_4d(query, key, value, batch_shape, sdpa_mask)
    context = fused_attention(q, k, v, m, dropout_p=dropout_p, is_causal=sdpa_causal, scale=scale)
    context = context.reshape(*batch_shape, lq, value.shape[-1])
    if not need_weights:
        return context, None
    weights = attention_weights(
        query, key, mask=mask, is_causal=is_causal, scale=scale, average_dim=weights_average_dim
    )
    return context, weights


def fused_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """``F.scaled_dot_product_attention`` on ``(B, H, L, d)`` inputs, made contiguous where that
    pays, and without ``attention``'s checks: for callers that have checked their inputs
    (``MultiHeadAttention.step``). ``mask`` as SDPA's: bool ``True`` = may attend, or a float
    bias."""
    if key.shape[-2] >= SDPA_CONTIGUOUS_MIN_KEYS and query.device.type == "cpu":
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


def step_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
    """SDPA for the queries of a decoding step against the keys of a cache (no dropout, no causal
    mask, no gradients needed): on CPU, 2 to ``CPU_PLAIN_MAX_QUERIES`` fp32 queries per row against at most
    ``CPU_PLAIN_MAX_KEYS`` keys take plain products, faster than SDPA's kernel there. Queries that
    a bool mask allows no key get zeros, as from SDPA; a float mask must leave every query a
    finite score (there the check would cost a pass over the weights)."""
    plain = (
        query.device.type == "cpu"
        and query.dtype == torch.float32
        and 1 < query.shape[-2] <= CPU_PLAIN_MAX_QUERIES
        and key.shape[-2] <= CPU_PLAIN_MAX_KEYS
    )
    if not plain:  # caches hold contiguous heads: no copy to pay for, unlike fused_attention's callers
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    scores = torch.matmul(query, key.transpose(-2, -1)).mul_(query.shape[-1] ** -0.5)  # (B, H, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill_(~mask, -math.inf) if mask.dtype == torch.bool else scores.add_(mask)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None and mask.dtype == torch.bool:
        weights = weights.nan_to_num(0.0)
    return torch.matmul(weights, value)


def _as_4d(query: Tensor, key: Tensor, value: Tensor, batch: torch.Size, mask: Tensor | None) -> tuple[Tensor, ...]:
    """(B, H, L, d) views for SDPA's kernels; leading dims beyond two are flattened into B."""
    if query.ndim <= 4 and query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        pad = (1,) * (4 - query.ndim)
        q, k, v = (x.reshape(*pad, *x.shape) for x in (query, key, value))
        if mask is not None and mask.ndim < 4:  # SDPA wants a mask of the inputs' rank
            mask = mask.reshape(*(1,) * (4 - mask.ndim), *mask.shape)
        return q, k, v, mask
    q, k, v = (x.expand(*batch, *x.shape[-2:]).reshape(-1, 1, *x.shape[-2:]) for x in (query, key, value))
    if mask is not None:
        lq, lk = query.shape[-2], key.shape[-2]
        mask = mask.expand(*batch, lq, lk).reshape(-1, 1, lq, lk)
    return q, k, v, mask


def _empty_result(
    query: Tensor,
    value: Tensor,
    batch_shape: torch.Size,
    lq: int,
    lk: int,
    need_weights: bool,
    weights_average_dim: int | None,
) -> tuple[Tensor, Tensor | None]:
    """Empty queries give an empty context; no keys at all gives zero context, like masked rows."""
    context = query.new_zeros(*batch_shape, lq, value.shape[-1])
    if not need_weights:
        return context, None
    weights = query.new_zeros(*batch_shape, lq, lk)
    return context, weights if weights_average_dim is None else weights.mean(weights_average_dim)


def _check_inputs(query: Tensor, key: Tensor, value: Tensor) -> torch.Size:
    """Raise on bad ranks, dtypes or lengths; return the broadcast batch shape."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (..., L, d), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if not query.ndim == key.ndim == value.ndim:
        raise ValueError(
            f"query, key and value must have the same rank, got query {tuple(query.shape)}, "
            f"key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same length Lk, got key {tuple(key.shape)} and value {tuple(value.shape)}"
        )
    if query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        return query.shape[:-2]  # the usual case; torch.broadcast_shapes costs more than a decoding step's math
    try:
        return torch.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"batch dims of query {tuple(query.shape)}, key {tuple(key.shape)} and value "
            f"{tuple(value.shape)} do not match"
        ) from None


def _check_no_nan(context: Tensor, query: Tensor, key: Tensor, value: Tensor, *, also_query: bool = False) -> None:
    """Name the input that holds NaN, when the context shows one (a NaN that can't reach it is harmless).

    A NaN anywhere makes the sum NaN: one reduction over the context (13x cheaper than
    ``isnan(context).any()`` here) instead of reading three inputs on every call. The inputs are
    searched only once a NaN has shown up (or inf - inf, which then finds nothing). SDPA's CPU
    kernel turns a query row holding NaN into zeros, so after it (``also_query``) the query's sum
    is checked too.
    """
    if not _checks_enabled or torch.compiler.is_compiling():
        return
    total = context.sum() + query.sum() if also_query else context.sum()  # SDPA on CPU: a NaN query leaves no NaN
    if not torch.isnan(total):
        return
    for name, x in (("query", query), ("key", key), ("value", value)):
        if torch.isnan(x).any():
            raise ValueError(f"{name} of shape {tuple(x.shape)} contains NaN")


def _check_scores(scores: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(scores.shape[: len(expected)]) != expected or scores.ndim > len(expected) + 1:
        raise ValueError(
            f"the score function returned shape {tuple(scores.shape)}, expected (..., Lq, Lk) = {expected} "
            "or score vectors (..., Lq, Lk, E)"
        )
