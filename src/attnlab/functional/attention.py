"""The attention function: C = f_norm(f_sim(Q, K)) V.

Notation used in this package (shape comments read against it):
    B   batch           H   heads            Lq  queries          Lk  keys (= values)
    d_k query/key size  d_v value size       E   score-vector size (weighted softmax)
    ... any number of leading batch dims (B, or B and H)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional import kernels
from attnlab.functional.checks import (
    check_average_dim,
    check_inputs,
    check_no_nan,
    check_scale,
    nan_checks_enabled,
)
from attnlab.functional.masks import causal_mask, check_mask, merge_masks
from attnlab.functional.normalize import NormalizeFn, resolve_normalizer, softmax
from attnlab.functional.scores import ScoreFn, check_same_dim, resolve_score, scaled_dot_score


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
    Need", softmax(Q K^T / sqrt(d_k)) V, and a kernel of ``attnlab.functional.kernels`` computes
    it, chosen per call by ``kernels.choose_kernel`` (``fused=True``: SDPA, ``fused=False``: the
    explicit kernel). Any other score or normaliser runs step by step.

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
        fused: force (True) SDPA or forbid (False) every kernel but the explicit one; None chooses.
        weights_average_dim: average the returned weights over this dim (e.g. heads) while they
            are computed, so the full per-head map is never held.

    Returns:
        ``(context, weights)``: C ``(..., Lq, d_v)`` and A ``(..., Lq, Lk)`` (pre-dropout, the
        averaged dim removed) or None. Queries with no allowed key get zero weights and context.

    Raises:
        ValueError: shapes that do not fit (naming them), query, key and value of different
            dtypes or devices, ``dropout_p`` outside [0, 1), a ``scale`` that is not finite and
            > 0, a ``weights_average_dim`` outside the weights' dims, ``scale`` or ``fused=True``
            with another score or normaliser, and, inside ``nan_checks()``, an input holding NaN.
        TypeError: inputs that are not floating-point tensors, masks that are not tensors or
            neither bool nor float.
    """
    batch_shape = check_inputs(query, key, value)
    lq, lk = query.shape[-2], key.shape[-2]
    if mask is not None:
        check_mask(mask, (*batch_shape, lq, lk))
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    check_scale(scale)
    if need_weights and weights_average_dim is not None:
        check_average_dim(weights_average_dim, (*batch_shape, lq, lk))
    if lq == 0 or lk == 0:
        return _empty_result(query, value, batch_shape, lq, lk, need_weights, weights_average_dim)
    score_fn, norm_fn = resolve_score(score), resolve_normalizer(normalize)
    options = dict(is_causal=is_causal, dropout_p=dropout_p, need_weights=need_weights)
    if score_fn is scaled_dot_score and norm_fn is softmax:  # the one switch: Eq. 1 goes to a kernel
        check_same_dim(query, key, "scaled_dot_score")  # before a kernel that would name neither
        kernel = _kernel(query, key, value, mask, fused, is_causal, need_weights, weights_average_dim)
        context, weights = kernel(
            query, key, value, mask, scale=scale, weights_average_dim=weights_average_dim, **options
        )
    else:
        _check_general(score, normalize, score_fn, scale, fused)
        context, weights = _general_attention(query, key, value, batch_shape, score_fn, norm_fn, mask, scale, **options)
        if weights is not None and weights_average_dim is not None:
            weights = weights.mean(weights_average_dim)
    if nan_checks_enabled():
        check_no_nan(context, query, key, value)
    return context, weights


def _kernel(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    fused: bool | None,
    is_causal: bool,
    need_weights: bool,
    average_dim: int | None,
) -> kernels.Kernel:
    """The kernel ``fused`` forces, else the dispatcher's choice."""
    if fused is None:
        return kernels.choose_kernel(
            query, key, value, mask, is_causal=is_causal, need_weights=need_weights, weights_average_dim=average_dim
        )
    return kernels.sdpa if fused else kernels.explicit


def _general_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    batch_shape: torch.Size,
    score_fn: ScoreFn,
    norm_fn: NormalizeFn,
    mask: Tensor | None,
    scale: float | None,
    *,
    is_causal: bool,
    dropout_p: float,
    need_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """S = f_sim(Q, K), A = f_norm(S) under the mask, C = dropout(A) V; returns (C, A or None)."""
    lq, lk = query.shape[-2], key.shape[-2]
    if is_causal:
        mask = merge_masks(mask, causal_mask(lq, lk, device=query.device))
    scores = score_fn(query, key) if scale is None else scaled_dot_score(query, key, scale)  # (..., Lq, Lk[, E])
    _check_scores(scores, (*batch_shape, lq, lk))
    weights = norm_fn(scores, mask)  # (..., Lq, Lk)
    context = (F.dropout(weights, dropout_p) if dropout_p > 0 else weights) @ value  # (..., Lq, d_v)
    return context, weights if need_weights else None


def _check_general(
    score: str | ScoreFn, normalize: str | NormalizeFn, score_fn: ScoreFn, scale: float | None, fused: bool | None
) -> None:
    """Raise when a kernel-only option meets another score or normaliser."""
    if scale is not None and score_fn is not scaled_dot_score:
        raise ValueError(f"scale={scale} applies to the scaled_dot score only, got score={score!r}")
    if fused:
        raise ValueError(f"fused=True needs score='scaled_dot' and normalize='softmax', got {score!r}, {normalize!r}")


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


def _check_scores(scores: Tensor, expected: tuple[int, ...]) -> None:
    """Raise unless a score function returned ``(..., Lq, Lk)`` or ``(..., Lq, Lk, E)``."""
    if tuple(scores.shape[: len(expected)]) != expected or scores.ndim > len(expected) + 1:
        raise ValueError(
            f"the score function returned shape {tuple(scores.shape)}, expected (..., Lq, Lk) = {expected} "
            "or score vectors (..., Lq, Lk, E)"
        )
