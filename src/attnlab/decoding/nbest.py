"""Choosing one translation among beam search's finished hypotheses.

Beam search ranks its n-best by score; two other choices are common in MT toolkits:

- skip degenerate hypotheses (a loop the n-gram rules on pieces did not catch) when a clean one
  is in the n-best;
- minimum Bayes risk (MBR) decoding (Kumar & Byrne, 2004): the hypothesis with the highest expected
  utility against the others, the model's distribution over the n-best as the evidence,

      y* = argmax_{y in H} sum_{y' in H} p(y' | x) u(y, y'),   p = softmax(score / T) over H.

Both work on the decoded text, so the caller gives the rule (``reject``) and the utility (e.g.
sentence chrF); nothing here knows a tokenizer or a metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["expected_utilities", "select_hypothesis"]


def expected_utilities(
    hypotheses: Sequence[str],
    scores: Sequence[float],
    utility: Callable[[str, str], float],
    temperature: float = 1.0,
) -> list[float]:
    """``sum_j p_j u(h_i, h_j)`` for each hypothesis ``h_i``, with ``p = softmax(scores / temperature)``.

    Args:
        hypotheses: n candidate texts.
        scores: their search scores (log-probabilities, length-penalised for beams), finite.
        utility: ``u(hypothesis, pseudo_reference)``, higher is better (e.g. sentence chrF).
        temperature: > 0; higher flattens the evidence towards uniform.
    """
    if len(hypotheses) != len(scores):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(scores)} scores")
    if not temperature > 0:
        raise ValueError(f"temperature ({temperature}) must be > 0")
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]  # shifted: no overflow
    total = sum(weights)
    return [sum(w / total * utility(h, reference) for w, reference in zip(weights, hypotheses)) for h in hypotheses]


def select_hypothesis(
    hypotheses: Sequence[str],
    scores: Sequence[float],
    *,
    reject: Callable[[str], bool] | None = None,
    utility: Callable[[str, str], float] | None = None,
) -> int:
    """The index of the chosen hypothesis among an n-best list.

    Hypotheses scored ``-inf`` (slots a search left empty) are never chosen. With ``reject``, the
    hypotheses it rejects are dropped unless it rejects all of them. Of what is left, the highest
    score wins, or with ``utility`` the highest expected utility (:func:`expected_utilities`).

    Args:
        hypotheses: the n-best texts, in any order.
        scores: their search scores.
        reject: e.g. "is degenerate"; None keeps all.
        utility: MBR's ``u(hypothesis, pseudo_reference)``; None ranks by score.
    """
    if len(hypotheses) != len(scores):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(scores)} scores")
    candidates = [i for i, s in enumerate(scores) if s > -math.inf]
    if not candidates:
        raise ValueError("no hypothesis has a finite score")
    if reject is not None:
        candidates = [i for i in candidates if not reject(hypotheses[i])] or candidates
    if utility is None:
        return max(candidates, key=lambda i: scores[i])
    gains = expected_utilities([hypotheses[i] for i in candidates], [scores[i] for i in candidates], utility)
    return candidates[max(range(len(candidates)), key=gains.__getitem__)]
