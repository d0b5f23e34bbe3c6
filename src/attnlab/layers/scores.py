"""Scores and normalisers with learned weights: the modules beside ``attnlab.functional``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.functional.normalize import NormalizeFn, resolve_normalizer, softmax
from attnlab.functional.scores import ScoreFn, check_feature_dim, resolve_score


class GeneralScore(nn.Module):
    """Bilinear ("general") score, s_ij = q_i^T W k_j (Luong et al., 2015, Eq. 8).

    Args:
        query_dim: d_q, the feature size of the queries.
        key_dim: d_k, the feature size of the keys.
    """

    def __init__(self, query_dim: int, key_dim: int | None = None) -> None:
        super().__init__()
        key_dim = query_dim if key_dim is None else key_dim
        self.weight = nn.Parameter(torch.empty(query_dim, key_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        """Scores ``(..., Lq, Lk)`` of ``query (..., Lq, d_q)`` against ``key (..., Lk, d_k)``."""
        check_feature_dim(query, self.weight.shape[0], "query", "GeneralScore")
        check_feature_dim(key, self.weight.shape[1], "key", "GeneralScore")
        # Project the shorter side: (q W) k^T and q (W k^T)^T are the same numbers.
        if query.shape[-2] <= key.shape[-2]:
            return (query @ self.weight) @ key.transpose(-2, -1)
        return query @ (key @ self.weight.T).transpose(-2, -1)


class AdditiveScore(nn.Module):
    """Additive (concat) score, s_ij = w^T tanh(W_1 q_i + W_2 k_j + b) (Bahdanau et al., 2015, Eq. 6).

    With ``reduce=False`` the ``w^T`` is left out and each pair keeps its feature vector
    e_ij = tanh(W_1 q_i + W_2 k_j + b) of size ``hidden_dim``, for ``WeightedSoftmax``.

    Args:
        query_dim: d_q, the feature size of the queries.
        key_dim: d_k, the feature size of the keys.
        hidden_dim: size of the hidden layer; ``key_dim`` when None.
        reduce: apply ``w^T`` and return scalar scores.
    """

    def __init__(
        self, query_dim: int, key_dim: int | None = None, hidden_dim: int | None = None, *, reduce: bool = True
    ) -> None:
        super().__init__()
        key_dim = query_dim if key_dim is None else key_dim
        hidden_dim = key_dim if hidden_dim is None else hidden_dim
        self.query_proj = nn.Linear(query_dim, hidden_dim, bias=False)  # W_1
        self.key_proj = nn.Linear(key_dim, hidden_dim, bias=True)  # W_2 and b
        self.v = nn.Linear(hidden_dim, 1, bias=False) if reduce else None  # w
        self.hidden_dim = hidden_dim

    def project_keys(self, key: Tensor) -> Tensor:
        """W_2 k_j + b ``(..., Lk, hidden_dim)``: the keys' half of the score, to compute once per source.

        A decoder that scores the same encoder states at every step passes the result back as
        ``projected_keys`` instead of re-projecting them each time.
        """
        check_feature_dim(key, self.key_proj.in_features, "key", "AdditiveScore")
        return self.key_proj(key)

    def forward(self, query: Tensor, key: Tensor, *, projected_keys: Tensor | None = None) -> Tensor:
        """Scores ``(..., Lq, Lk)`` (or features ``(..., Lq, Lk, hidden_dim)`` when not reducing).

        ``projected_keys``, from ``project_keys(key)``, skips that projection.
        """
        check_feature_dim(query, self.query_proj.in_features, "query", "AdditiveScore")
        q = self.query_proj(query).unsqueeze(-2)  # (..., Lq, 1, h)
        k = (self.project_keys(key) if projected_keys is None else projected_keys).unsqueeze(-3)  # (..., 1, Lk, h)
        features = torch.tanh(q + k)  # (..., Lq, Lk, h)
        if self.v is None:
            return features
        return self.v(features).squeeze(-1)  # (..., Lq, Lk)


class TemperatureSoftmax(nn.Module):
    """Softmax with a temperature T, fixed or learned (as log T, so it stays positive).

    Args:
        temperature: the initial T.
        learnable: learn T with the rest of the model.
    """

    def __init__(self, temperature: float = 1.0, *, learnable: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_t = torch.tensor(float(temperature)).log()
        self.log_temperature = nn.Parameter(log_t) if learnable else None
        self.register_buffer("_fixed_log_temperature", log_t, persistent=False)

    @property
    def temperature(self) -> Tensor:
        log_t = self._fixed_log_temperature if self.log_temperature is None else self.log_temperature
        return log_t.exp()

    def forward(self, scores: Tensor, mask: Tensor | None = None) -> Tensor:
        """Weights ``(..., Lq, Lk)`` = softmax(scores / T) under the mask."""
        return softmax(scores / self.temperature.to(scores.dtype), mask)


class WeightedSoftmax(nn.Module):
    """Weighted softmax over score vectors, a_ij = exp(w^T e_ij) / sum_j' exp(w^T e_ij').

    Each (query, key) pair carries a vector e_ij of ``num_features`` scores (for example
    ``AdditiveScore(reduce=False)``); a learned ``w`` reduces it inside the exponent.

    Args:
        num_features: E, the size of each score vector.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_features))
        nn.init.normal_(self.weight, std=num_features**-0.5)

    def forward(self, scores: Tensor, mask: Tensor | None = None) -> Tensor:
        """Weights ``(..., Lq, Lk)`` from score vectors ``(..., Lq, Lk, E)``."""
        if scores.ndim < 3 or scores.shape[-1] != self.weight.shape[0]:
            raise ValueError(
                f"WeightedSoftmax expects score vectors (..., Lq, Lk, {self.weight.shape[0]}), got shape "
                f"{tuple(scores.shape)}; pair it with a feature score such as AdditiveScore(reduce=False)"
            )
        return softmax(scores @ self.weight, mask)


def check_attention_choice(score: str, normalize: str) -> None:
    """Raise ``ValueError`` naming an unknown score or normaliser, or a pair that does not fit."""
    build_score_and_normalizer(score, normalize, head_dim=1)


def build_score_and_normalizer(
    score: str | ScoreFn, normalize: str | NormalizeFn, head_dim: int
) -> tuple[str | ScoreFn, str | NormalizeFn]:
    """Instantiate named scores/normalisers that carry weights, sized for one head."""
    if normalize == "weighted_softmax":
        if score != "additive" and not isinstance(score, AdditiveScore):
            raise ValueError(f"normalize='weighted_softmax' reduces score vectors; use score='additive', got {score!r}")
        if score == "additive":
            score = AdditiveScore(head_dim, head_dim, head_dim, reduce=False)
        normalize = WeightedSoftmax(score.hidden_dim)
    elif normalize == "temperature_softmax":
        normalize = TemperatureSoftmax(learnable=True)
    elif isinstance(normalize, str):
        resolve_normalizer(normalize)  # an unknown name raises, listing the known ones
    if score == "additive":
        score = AdditiveScore(head_dim, head_dim, head_dim)
    elif score == "general":
        score = GeneralScore(head_dim, head_dim)
    elif isinstance(score, str):
        resolve_score(score)
    return score, normalize
