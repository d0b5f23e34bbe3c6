"""Choosing among an n-best list: by score, skipping rejected hypotheses, and minimum Bayes risk
against the formula of Kumar & Byrne (2004) computed by hand."""

from __future__ import annotations

import math

import pytest

from attnlab.decoding.nbest import expected_utilities, select_hypothesis


def same(a: str, b: str) -> float:
    """Exact-match utility: MBR then picks the hypothesis with the most probability mass behind its text."""
    return float(a == b)


def test_without_options_the_best_score_wins_and_empty_slots_never_do():
    assert select_hypothesis(["a", "b", "c"], [-3.0, -1.0, -2.0]) == 1
    assert select_hypothesis(["a", "b"], [-math.inf, -5.0]) == 1
    with pytest.raises(ValueError, match="no hypothesis has a finite score"):
        select_hypothesis(["a"], [-math.inf])


def test_rejected_hypotheses_are_skipped_unless_all_are():
    loops = {"x x x x", "y y y y"}.__contains__
    assert select_hypothesis(["x x x x", "b", "c"], [-1.0, -2.0, -3.0], reject=loops) == 1
    assert select_hypothesis(["x x x x", "y y y y"], [-2.0, -1.0], reject=loops) == 1  # all rejected: by score
    assert select_hypothesis(["x x x x", "b"], [-1.0, -math.inf], reject=loops) == 0  # an empty slot is no escape


def test_expected_utilities_follow_the_softmax_of_the_scores():
    hypotheses, scores = ["a", "ab", "b"], [-1.0, -2.0, -0.5]
    overlap = lambda h, r: len(set(h) & set(r)) / len(set(h) | set(r))
    for temperature in (1.0, 2.0):
        z = sum(math.exp(s / temperature) for s in scores)
        p = [math.exp(s / temperature) / z for s in scores]
        expected = [sum(pj * overlap(h, r) for pj, r in zip(p, hypotheses)) for h in hypotheses]
        assert expected_utilities(hypotheses, scores, overlap, temperature) == pytest.approx(expected, rel=1e-12)
    # Scores far below zero do not underflow: only their differences matter.
    assert expected_utilities(hypotheses, [s - 1e4 for s in scores], overlap) == pytest.approx(
        expected_utilities(hypotheses, scores, overlap), rel=1e-12
    )


def test_mbr_prefers_the_text_the_mass_agrees_on_over_the_best_score():
    # p = softmax([0, 0, 0.5]) = (0.274, 0.274, 0.452): "a" holds 0.548 of the mass, "b" 0.452.
    hypotheses, scores = ["a", "a", "b"], [0.0, 0.0, 0.5]
    assert select_hypothesis(hypotheses, scores) == 2
    assert select_hypothesis(hypotheses, scores, utility=same) == 0
    # With the rejected ones dropped first, MBR runs over what is left.
    assert select_hypothesis(hypotheses, scores, utility=same, reject={"a"}.__contains__) == 2


def test_bad_arguments_name_their_values():
    with pytest.raises(ValueError, match="2 hypotheses but 1 scores"):
        select_hypothesis(["a", "b"], [0.0])
    with pytest.raises(ValueError, match=r"temperature \(0\) must be > 0"):
        expected_utilities(["a"], [0.0], same, temperature=0)
