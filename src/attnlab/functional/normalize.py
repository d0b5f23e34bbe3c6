"""Normalisers f_norm: turn scores into attention weights A = f_norm(S) along the keys.

A normaliser is called as ``normalize(scores, mask)``: ``scores (..., Lq, Lk)`` (or
``(..., Lq, Lk, E)`` for ``attnlab.layers.WeightedSoftmax``), ``mask`` None, boolean (``True`` = may attend) or a
float bias broadcasting to ``(..., Lq, Lk)``. Each returns weights ``(..., Lq, Lk)`` whose rows sum
to one, except rows with no allowed key, which are all zeros (in forward and backward, never NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.functional._lookup import resolve_by_name
from attnlab.functional.masks import apply_mask

NormalizeFn = Callable[[Tensor, Tensor | None], Tensor]


def softmax(scores: Tensor, mask: Tensor | None = None, *, temperature: float = 1.0) -> Tensor:
    """Masked softmax over the keys, a_ij = exp(s_ij / T) / sum_j' exp(s_ij' / T).

    Args:
        scores: ``(..., Lq, Lk)``.
        mask: None, boolean (``True`` = may attend) or float bias, broadcasting to the scores.
        temperature: T; below 1 sharpens, above 1 flattens the distribution.

    Returns:
        Weights ``(..., Lq, Lk)``; rows with no allowed key are zeros.
    """
    if temperature != 1.0:
        scores = scores / temperature
    scores, keep = apply_mask(scores, mask)
    weights = torch.softmax(scores, dim=-1)
    return weights if keep is None else weights.masked_fill(~keep, 0.0)


class _Sparsemax(torch.autograd.Function):
    """Sparsemax with its closed-form Jacobian (Martins & Astudillo, 2016, Alg. 1 and Eq. 14).

    Computed in at least float32 on the scores minus their row maximum, so the largest score
    is always in the support and no magnitude or dtype leaves the support empty.
    """

    @staticmethod
    def forward(ctx, scores: Tensor) -> Tensor:
        z = _shifted(scores.to(_compute_dtype(scores.dtype)))
        out = torch.clamp(z - _threshold(z), min=0)
        ctx.save_for_backward(out > 0)
        return out.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (support,) = ctx.saved_tensors
        g = grad_out.to(_compute_dtype(grad_out.dtype)).masked_fill(~support, 0)
        mean = g.sum(dim=-1, keepdim=True) / support.sum(dim=-1, keepdim=True)
        return (g - mean).masked_fill(~support, 0).to(grad_out.dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision scores, the scores' own dtype otherwise."""
    return torch.promote_types(dtype, torch.float32)


def _shifted(scores: Tensor) -> Tensor:
    """The scores minus their row maximum; a row holding +inf keeps 0 at its +inf entries and -inf
    elsewhere, the limit in which those entries share the weight."""
    top = scores.amax(dim=-1, keepdim=True)  # (..., 1)
    at_infinity = torch.where(torch.isposinf(scores), 0.0, float("-inf")).to(scores.dtype)
    return torch.where(torch.isposinf(top), at_infinity, scores - top)


def _threshold(z: Tensor) -> Tensor:
    """tau(z) of Martins & Astudillo (2016), Eq. 3 / Alg. 1, for rows whose maximum is 0: ``(..., 1)``."""
    z_sorted, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumulative = z_sorted.cumsum(dim=-1)
    # k = 1 always qualifies (1 + 0 > 0); only a NaN row has none, and it stays NaN rather than crash.
    support_size = (1 + k * z_sorted > cumulative).sum(dim=-1, keepdim=True).clamp(min=1)
    return (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)


def sparsemax(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sparsemax: the Euclidean projection of the scores onto the simplex (Martins & Astudillo, 2016).

    a_i = max(s_i - tau, 0) with tau chosen so the weights sum to one; unlike softmax, weak keys
    get exactly zero weight.

    Args:
        scores: ``(..., Lq, Lk)``.
        mask: None, boolean (``True`` = may attend) or float bias, broadcasting to the scores.

    Returns:
        Weights ``(..., Lq, Lk)`` in the scores' dtype, for scores of any magnitude; a row holding
        +inf shares the weight equally among its +inf scores; rows with no allowed key are zeros.
    """
    scores, keep = apply_mask(scores, mask)
    if scores.shape[-1] == 0:
        return scores
    weights = _Sparsemax.apply(scores)
    return weights if keep is None else weights.masked_fill(~keep, 0.0)


NORMALIZERS: dict[str, NormalizeFn] = {"softmax": softmax, "sparsemax": sparsemax}
"""Parameter-free normalisers by name; ``weighted_softmax`` and ``temperature_softmax`` are modules."""

PARAMETRIC_NORMALIZERS: dict[str, str] = {
    "weighted_softmax": "WeightedSoftmax",
    "temperature_softmax": "TemperatureSoftmax",
}
"""Normalisers with learned weights: modules in ``attnlab.layers.scores``."""


def resolve_normalizer(normalize: str | NormalizeFn) -> NormalizeFn:
    """The normaliser for a name in ``NORMALIZERS`` or a callable, which is returned as is.

    Raises:
        ValueError: a name of ``PARAMETRIC_NORMALIZERS`` (naming the module to build) or an unknown name.
    """
    return resolve_by_name(
        normalize, "normalizer", "normalize", NORMALIZERS, PARAMETRIC_NORMALIZERS, "(scores, mask) -> weights"
    )
