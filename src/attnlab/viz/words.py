"""Attention between subword pieces merged into attention between words.

Clark, Khandelwal, Levy & Manning, "What Does BERT Look At? An Analysis of BERT's Attention"
(BlackboxNLP 2019), section 2: for word-level attention, the attention *to* a split-up word is the
sum of the attentions to its pieces, and the attention *from* a split-up word is the mean of the
attentions from its pieces. Each word-level row is thus a mean of rows that sum to 1, and sums to 1.

As matrices, with ``S_q`` the ``(Wq, Lq)`` piece-to-word indicator of the queries and ``S_k`` that of
the keys::

    A_words = D_q^{-1} S_q A S_kᵀ,    D_q = diag(pieces per query word)

Where words start:

- ``"sentencepiece"``: a piece starting with ``▁`` (U+2581, SentencePiece's space) starts a word; any
  other piece continues the word before it. Japanese (and Chinese) text has no spaces, so SentencePiece
  output often holds one ``▁`` only, at the sentence start (``▁吾輩は``, ``猫``, ``である``): the whole
  sentence then merges into ONE "word". For such text keep the pieces, or split words with a
  morphological analyser first.
- ``"wordpiece"``: a piece starting with ``##`` continues the word before it; any other starts one.

Special tokens (``SPECIAL_TOKENS``: ``<s>``, ``</s>``, ``[CLS]``, ``[SEP]``, ``[PAD]`` …) stay words of
their own, and the piece after one starts a new word. A word's text is its pieces joined, the ``▁`` or
``##`` markers dropped.

Shapes: Lq, Lk query and key pieces; Wq, Wk query and key words; ``...`` any leading dims (batch, heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SCHEMES = ("sentencepiece", "wordpiece")
SENTENCEPIECE_SPACE = "\u2581"
WORDPIECE_CONTINUATION = "##"
SPECIAL_TOKENS = frozenset(
    {"<s>", "</s>", "<pad>", "<unk>", "<mask>", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "<bos>", "<eos>"}
)


def merge_pieces(
    weights,
    query_pieces: Sequence[str],
    key_pieces: Sequence[str],
    *,
    scheme: str = "sentencepiece",
    special_tokens: frozenset[str] = SPECIAL_TOKENS,
):
    """Merge piece-level attention into word-level attention (Clark et al., 2019, section 2).

    Args:
        weights: ``(..., Lq, Lk)`` tensor or array of attention weights, rows over the keys.
        query_pieces: the Lq query pieces, e.g. ``["▁The", "▁un", "believ", "able"]``.
        key_pieces: the Lk key pieces (pass the query pieces again for self-attention).
        scheme: ``"sentencepiece"`` (``▁`` starts a word) or ``"wordpiece"`` (``##`` continues one).
        special_tokens: pieces that always stand alone as words.

    Returns:
        ``(word_weights, query_words, key_words)``: ``(..., Wq, Wk)`` of the type, dtype and device of
        ``weights`` (a tensor keeps its autograd graph), column ``j`` the sum over the pieces of key
        word ``j``, row ``i`` the mean over the pieces of query word ``i``; then the words' texts.
    """
    query_groups, query_words = word_groups(query_pieces, scheme=scheme, special_tokens=special_tokens)
    key_groups, key_words = word_groups(key_pieces, scheme=scheme, special_tokens=special_tokens)
    shape = tuple(weights.shape)
    if len(shape) < 2 or shape[-2:] != (len(query_pieces), len(key_pieces)):
        raise ValueError(
            f"weights of shape {shape} are not (..., {len(query_pieces)}, {len(key_pieces)}) "
            f"for {len(query_pieces)} query and {len(key_pieces)} key pieces"
        )
    to_words = _indicator(key_groups, len(key_pieces))  # (Wk, Lk)
    from_words = _indicator(query_groups, len(query_pieces))  # (Wq, Lq)
    from_words /= from_words.sum(axis=1, keepdims=True)  # rows: mean over the word's pieces
    if isinstance(weights, torch.Tensor):
        to_words = torch.from_numpy(to_words).to(weights.device, weights.dtype)
        from_words = torch.from_numpy(from_words).to(weights.device, weights.dtype)
        return from_words @ weights @ to_words.T, query_words, key_words  # (..., Wq, Wk)
    array = np.asarray(weights)
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.float64
    merged = from_words.astype(dtype) @ array.astype(dtype) @ to_words.T.astype(dtype)  # (..., Wq, Wk)
    return merged, query_words, key_words


def word_groups(
    pieces: Sequence[str], *, scheme: str = "sentencepiece", special_tokens: frozenset[str] = SPECIAL_TOKENS
) -> tuple[list[list[int]], list[str]]:
    """The piece indices of each word, in order, and each word's text (see the module docstring)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    groups: list[list[int]] = []
    after_special = True
    for index, piece in enumerate(pieces):
        special = piece in special_tokens
        if special or after_special or _starts_word(piece, scheme):
            groups.append([index])
        else:
            groups[-1].append(index)
        after_special = special
    words = ["".join(_strip_marker(pieces[i], scheme) for i in group) for group in groups]
    return groups, words


def _starts_word(piece: str, scheme: str) -> bool:
    """Whether a (non-special) piece begins a new word under ``scheme``."""
    if scheme == "sentencepiece":
        return piece.startswith(SENTENCEPIECE_SPACE)
    return not piece.startswith(WORDPIECE_CONTINUATION)


def _strip_marker(piece: str, scheme: str) -> str:
    """The piece's text without its word-boundary marker."""
    marker = SENTENCEPIECE_SPACE if scheme == "sentencepiece" else WORDPIECE_CONTINUATION
    return piece.removeprefix(marker)


def _indicator(groups: list[list[int]], pieces: int) -> np.ndarray:
    """``(W, L)`` float64 matrix with a 1 where piece ``l`` belongs to word ``w``."""
    matrix = np.zeros((len(groups), pieces))
    for word, group in enumerate(groups):
        matrix[word, group] = 1.0
    return matrix
