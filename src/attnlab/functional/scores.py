"""Similarity functions f_sim(Q, K): one score for every (query, key) pair.

Every score maps ``query (..., Lq, d_q)`` and ``key (..., Lk, d_k)`` to ``scores (..., Lq, Lk)``;
a *feature* score (``AdditiveScore(reduce=False)``) returns one vector per pair,
``(..., Lq, Lk, E)``, for a normaliser that reduces it (``WeightedSoftmax``).
Parameter-free scores live here as functions; scores with parameters are modules in
``attnlab.layers.scores``. Any callable with the same signature can stand in for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from attnlab.functional._lookup import resolve_by_name

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def check_feature_dim(x: Tensor, expected: int, name: str, owner: str) -> None:
    """Raise a ``ValueError`` naming the shape unless ``x`` has ``expected`` features."""
    if x.shape[-1] != expected:
        raise ValueError(f"{owner} expects {name} with last dim {expected}, got shape {tuple(x.shape)}")


def check_same_dim(query: Tensor, key: Tensor, name: str) -> None:
    """Raise a ``ValueError`` naming both shapes unless query and key share their feature size."""
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"{name} needs query and key of one feature size, got query {tuple(query.shape)} "
            f"and key {tuple(key.shape)}; use GeneralScore or AdditiveScore for different sizes"
        )


def dot_score(query: Tensor, key: Tensor) -> Tensor:
    """Dot-product score, s_ij = q_i . k_j (Luong et al., 2015, "dot").

    Args:
        query: ``(..., Lq, d)``.
        key: ``(..., Lk, d)``.

    Returns:
        ``(..., Lq, Lk)``.
    """
    check_same_dim(query, key, "dot_score")
    return query @ key.transpose(-2, -1)


def scaled_dot_score(query: Tensor, key: Tensor, scale: float | None = None) -> Tensor:
    """Scaled dot-product score, s_ij = q_i . k_j / sqrt(d_k) (Vaswani et al., 2017, Eq. 1).

    Args:
        query: ``(..., Lq, d_k)``.
        key: ``(..., Lk, d_k)``.
        scale: factor applied to the dot products; ``1 / sqrt(d_k)`` when None.

    Returns:
        ``(..., Lq, Lk)``.
    """
    check_same_dim(query, key, "scaled_dot_score")
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    # Scaling q before the product costs Lq*d multiplies instead of Lq*Lk.
    return (query * scale) @ key.transpose(-2, -1)


def cosine_score(query: Tensor, key: Tensor, scale: float = 10.0, eps: float = 1e-6) -> Tensor:
    """Scaled cosine similarity, s_ij = scale * cos(q_i, k_j) (as in QK-norm and Swin V2).

    Cosines lie in [-1, 1], too flat for a softmax, hence the scale (a temperature of 1/scale).

    Args:
        query: ``(..., Lq, d)``.
        key: ``(..., Lk, d)``.
        scale: multiplier of the cosines.
        eps: floor of the vector norms, so zero vectors give zero scores.

    Returns:
        ``(..., Lq, Lk)``.
    """
    check_same_dim(query, key, "cosine_score")
    q = F.normalize(query, dim=-1, eps=eps)
    k = F.normalize(key, dim=-1, eps=eps)
    return scale * (q @ k.transpose(-2, -1))


SCORES: dict[str, ScoreFn] = {
    "dot": dot_score,
    "scaled_dot": scaled_dot_score,
    "cosine": cosine_score,
}
"""Parameter-free scores by name; ``additive`` and ``general`` need a module (they have weights)."""

PARAMETRIC_SCORES: dict[str, str] = {"additive": "AdditiveScore", "general": "GeneralScore"}
"""Scores with learned weights: modules in ``attnlab.layers.scores``."""


def resolve_score(score: str | ScoreFn) -> ScoreFn:
    """The score function for a name in ``SCORES`` or a callable, which is returned as is.

    Raises:
        ValueError: a name of ``PARAMETRIC_SCORES`` (naming the module to build) or an unknown name.
    """
    return resolve_by_name(score, "score", "score", SCORES, PARAMETRIC_SCORES, "(query, key) -> scores")
