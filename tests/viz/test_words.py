"""Word-level attention equals a hand computation of Clark et al. (2019): sum over key pieces, mean over query ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.viz.words import merge_pieces, word_groups

SP_PIECES = ["<s>", "▁The", "▁un", "believ", "able", "▁cat", "</s>"]
SP_WORDS = ["<s>", "The", "unbelievable", "cat", "</s>"]
SP_GROUPS = [[0], [1], [2, 3, 4], [5], [6]]
WP_PIECES = ["[CLS]", "play", "##ing", "chess", "##board", "##s", "[SEP]", "[PAD]"]
WP_WORDS = ["[CLS]", "playing", "chessboards", "[SEP]", "[PAD]"]
WP_GROUPS = [[0], [1, 2], [3, 4, 5], [6], [7]]


def by_hand(weights: np.ndarray, query_groups, key_groups) -> np.ndarray:
    """Clark et al. (2019) section 2 as loops: mean over a query word's pieces of the sum over a key word's."""
    out = np.zeros((len(query_groups), len(key_groups)))
    for i, rows in enumerate(query_groups):
        for j, cols in enumerate(key_groups):
            out[i, j] = sum(weights[r, c] for r in rows for c in cols) / len(rows)
    return out


def test_a_three_piece_example_computed_on_paper():
    weights = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    merged, queries, keys = merge_pieces(weights, ["▁a", "b", "▁c"], ["▁a", "b", "▁c"])
    # key words: ab = col 0 + col 1, c = col 2; query word ab = mean of rows 0 and 1.
    np.testing.assert_allclose(merged, [[(0.8 + 0.2) / 2, (0.2 + 0.8) / 2], [0.8, 0.2]])
    assert queries == keys == ["ab", "c"]


@pytest.mark.parametrize(
    ("pieces", "scheme", "words", "groups"),
    [(SP_PIECES, "sentencepiece", SP_WORDS, SP_GROUPS), (WP_PIECES, "wordpiece", WP_WORDS, WP_GROUPS)],
    ids=["sentencepiece", "wordpiece"],
)
def test_self_attention_merges_as_computed_by_hand_and_rows_still_sum_to_one(pieces, scheme, words, groups):
    weights = torch.rand(2, 3, len(pieces), len(pieces), dtype=torch.float64).softmax(-1)  # (B, H, L, L)
    merged, queries, keys = merge_pieces(weights, pieces, pieces, scheme=scheme)
    assert queries == keys == words
    assert word_groups(pieces, scheme=scheme)[0] == groups
    assert merged.shape == (2, 3, len(words), len(words))
    for b in range(2):
        for h in range(3):
            np.testing.assert_allclose(merged[b, h].numpy(), by_hand(weights[b, h].numpy(), groups, groups))
    torch.testing.assert_close(merged.sum(-1), torch.ones(2, 3, len(words), dtype=torch.float64))


def test_cross_attention_merges_queries_and_keys_by_their_own_pieces():
    source, target = ["▁le", "▁chat", "on", "</s>"], ["<s>", "▁the", "▁ca", "t", "▁sat"]
    weights = np.random.default_rng(0).dirichlet(np.ones(len(source)), size=len(target))  # (T, S)
    merged, queries, keys = merge_pieces(weights, target, source)
    assert queries == ["<s>", "the", "cat", "sat"] and keys == ["le", "chaton", "</s>"]
    expected = by_hand(weights, [[0], [1], [2, 3], [4]], [[0], [1, 2], [3]])
    np.testing.assert_allclose(merged, expected)
    np.testing.assert_allclose(merged.sum(-1), np.ones(4))
    assert isinstance(merged, np.ndarray) and merged.dtype == np.float64


def test_japanese_sentencepiece_with_one_space_at_the_start_is_one_word():
    pieces = ["<s>", "▁吾輩", "は", "猫", "で", "ある", "。", "</s>"]
    weights = torch.rand(len(pieces), len(pieces), dtype=torch.float64).softmax(-1)
    merged, queries, keys = merge_pieces(weights, pieces, pieces)
    assert queries == keys == ["<s>", "吾輩は猫である。", "</s>"]
    np.testing.assert_allclose(
        merged.numpy(), by_hand(weights.numpy(), [[0], [1, 2, 3, 4, 5, 6], [7]], [[0], [1, 2, 3, 4, 5, 6], [7]])
    )


def test_a_special_token_stands_alone_and_the_piece_after_it_starts_a_word():
    groups, words = word_groups(["[CLS]", "##x", "a", "[SEP]", "##y"], scheme="wordpiece")
    assert groups == [[0], [1], [2], [3], [4]] and words == ["[CLS]", "x", "a", "[SEP]", "y"]
    groups, words = word_groups(["ab", "cd", "</s>", "ef"])  # sentencepiece without any ▁
    assert groups == [[0, 1], [2], [3]] and words == ["abcd", "</s>", "ef"]


def test_the_tensor_keeps_dtype_and_gradients_flow():
    pieces = ["▁a", "b", "▁c", "d", "e"]
    weights = torch.rand(2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: merge_pieces(w, pieces, pieces)[0], (weights,))
    merged = merge_pieces(weights.float().detach(), pieces, pieces)[0]
    assert merged.dtype == torch.float32 and merged.device == weights.device


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"weights of shape \(3, 4\) are not \(\.\.\., 3, 3\) for 3 query and 3 key"):
        merge_pieces(torch.rand(3, 4), ["▁a", "▁b", "▁c"], ["▁a", "▁b", "▁c"])
    with pytest.raises(ValueError, match=r"scheme must be one of \('sentencepiece', 'wordpiece'\), got 'bpe'"):
        merge_pieces(torch.rand(1, 1), ["a"], ["a"], scheme="bpe")
