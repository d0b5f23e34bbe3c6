"""Source attention of RNN encoder-decoders: a score from the core, then ``attention()``.

Bahdanau et al. (2015) query with the previous decoder state s_{t-1}; Luong et al. (2015) with the
current one h_t. Either way the keys and values are the encoder states h_1..h_S (the "annotations")
and the module returns the context vector c_t and the alignment a_t. No state is kept between
calls: the key projection U_a h_j of the additive score comes from ``project_keys`` once per source
and travels with the encoder output, never stashed on the module.

Shapes: B batch, Lq decoder positions queried at once (1 while decoding step by step),
S source positions, d_q decoder state size, d_k encoder state size.
"""

from __future__ import annotations

import functools

from torch import Tensor, nn

from attnlab.functional.attention import attention
from attnlab.layers.scores import AdditiveScore, GeneralScore

RNN_SCORES = ("dot", "general", "concat")
"""Luong et al.'s names: ``dot`` h_t^T h_s, ``general`` h_t^T W_a h_s, ``concat`` v_a^T tanh(W_a[h_t; h_s])."""


class RNNSourceAttention(nn.Module):
    """Context of one decoder state over the encoder states: c = sum_j a_j h_j, a = softmax(score(q, h_j)).

    Bahdanau et al. (2015), Eq. 5-6: e_tj = v_a^T tanh(W_a s_{t-1} + U_a h_j),
    a_tj = exp(e_tj) / sum_k exp(e_tk), c_t = sum_j a_tj h_j (``score="concat"``, the additive score).
    Luong et al. (2015), Eq. 7-8: a_t(s) = softmax(score(h_t, h_s)) with ``dot``, ``general`` or
    ``concat``; c_t = sum_s a_t(s) h_s.

    Args:
        query_dim: d_q, the decoder state size.
        key_dim: d_k, the encoder state size (must equal ``query_dim`` for ``dot``).
        score: ``dot``, ``general`` or ``concat`` (additive).
        hidden_dim: size of the additive score's hidden layer (``concat`` only); ``key_dim`` when None.
    """

    def __init__(self, query_dim: int, key_dim: int, score: str = "concat", hidden_dim: int | None = None) -> None:
        super().__init__()
        if score not in RNN_SCORES:
            raise ValueError(f"score {score!r} is not one of {list(RNN_SCORES)}")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(f"the dot score needs query_dim ({query_dim}) == key_dim ({key_dim})")
        if score == "concat":
            self.score = AdditiveScore(query_dim, key_dim, hidden_dim)
        elif score == "general":
            self.score = GeneralScore(query_dim, key_dim)
        else:
            self.score = None
        self.score_name = score

    def project_keys(self, memory: Tensor) -> Tensor | None:
        """The additive score's U_a h_j + b ``(B, S, hidden)``, made once per source; None for other scores."""
        return self.score.project_keys(memory) if isinstance(self.score, AdditiveScore) else None

    def forward(
        self, query: Tensor, memory: Tensor, mask: Tensor | None = None, keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attend from decoder states over encoder states.

        Args:
            query: decoder states ``(B, Lq, d_q)``: s_{t-1} (Bahdanau) or h_t (Luong).
            memory: encoder states h_1..h_S ``(B, S, d_k)``, the keys and the values.
            mask: ``(B, 1, S)`` or ``(B, Lq, S)``, ``True`` where a source position may be attended.
            keys: ``project_keys(memory)``, so the additive score does not project the memory again.

        Returns:
            ``(context, weights)``: c ``(B, Lq, d_k)`` and a ``(B, Lq, S)``, zero on masked positions.
        """
        score = "dot" if self.score is None else self.score
        if keys is not None:
            score = functools.partial(self.score, projected_keys=keys)
        context, weights = attention(query, memory, memory, score=score, mask=mask, need_weights=True)
        return context, weights
