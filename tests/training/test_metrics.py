"""Translation metrics against sacrebleu itself, and what they say when BLEU's 4-grams are undefined."""

from __future__ import annotations

import pytest
from sacrebleu.metrics import BLEU, CHRF

from attnlab.training.metrics import is_repetitive, repetition_rate, translation_metrics

SHORT = ["3 May", "12", "the 4th", "ninety nine"]  # no reference has 4 tokens
LONG = ["the cat sat on the mat today", "a long sentence with many words in it"]


def test_scores_are_sacrebleus_corpus_scores():
    hypotheses = ["the cat sat on a mat today", "a long sentence with some words in it"]
    metrics = translation_metrics(hypotheses, LONG, "en")
    assert metrics["bleu"] == pytest.approx(BLEU(tokenize="13a").corpus_score(hypotheses, [LONG]).score)
    assert metrics["chrf"] == pytest.approx(CHRF().corpus_score(hypotheses, [LONG]).score)
    assert metrics["exact_match"] == 0.0
    assert "bleu_note" not in metrics and "bleu_effective_order" not in metrics


def test_references_shorter_than_4_tokens_explain_a_zero_bleu():
    metrics = translation_metrics(SHORT, SHORT, "en")
    assert metrics["exact_match"] == 1.0
    assert metrics["bleu"] == BLEU(tokenize="13a").corpus_score(SHORT, [SHORT]).score == 0.0
    effective = BLEU(tokenize="13a", effective_order=True).corpus_score(SHORT, [SHORT]).score
    assert metrics["bleu_effective_order"] == pytest.approx(effective) == pytest.approx(100.0)
    assert "4-gram precision is undefined" in metrics["bleu_note"] and "eff:yes" in metrics["bleu_note"]


def test_a_wrong_short_output_scores_below_a_right_one():
    wrong = ["4 May", "13", "the 5th", "ninety eight"]
    assert 0 < translation_metrics(wrong, SHORT, "en")["bleu_effective_order"] < 100


@pytest.mark.parametrize(
    "text, repetitive",
    [
        ("a b a b a b", False),  # each 3-gram twice
        ("a b a b a b a b", True),  # "a b a" 3 times (overlapping)
        ("the the the the end", True),  # a token 4 times in a row
        ("the the the end", False),  # 3 times in a row is allowed
        ("x y z w x y z v x y z", True),  # the 3-gram "x y z" 3 times, apart
        ("x y z w x y z", False),  # twice
        ("", False),
    ],
)
def test_repetitive_outputs_by_hand(text, repetitive):
    assert is_repetitive(text.split()) is repetitive


def test_repetition_rate_counts_outputs_in_bleus_own_tokens():
    hypotheses = ["ややややfosanvvv", "表を挿入します。", "the cat sat on the mat", "go go go go"]
    char = BLEU(tokenize="char").tokenizer
    assert repetition_rate(hypotheses, char) == 2 / 4  # "や" 4 times in a row; "go" 4 times
    assert repetition_rate([], char) == 0.0
    metrics = translation_metrics(hypotheses, hypotheses, "en")
    expected = sum(is_repetitive(BLEU(tokenize="13a").tokenizer(h).split()) for h in hypotheses) / 4
    assert metrics["repetition_rate"] == expected == 0.25  # 13a keeps "ややややfosanvvv" one token
