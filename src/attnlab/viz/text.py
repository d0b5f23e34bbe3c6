"""Attention weights as a plain-text table, aligned for Japanese (full-width) text too."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from torch import Tensor


def display_width(text: str) -> int:
    """Terminal columns of ``text``: wide and full-width characters (kanji, kana) take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def format_attention_table(
    weights: Tensor, query_tokens: Sequence[str], key_tokens: Sequence[str] | None = None, digits: int = 2
) -> str:
    """A table with one row per query and one column per key, holding the weights ``(Lq, Lk)``.

    Args:
        weights: ``(Lq, Lk)``, e.g. one head or the mean over heads.
        query_tokens: the Lq row labels.
        key_tokens: the Lk column labels (the query tokens when None: self-attention).
        digits: decimals shown.

    Returns:
        The table as lines of text; the largest weight of each row is marked with ``*``.
    """
    key_tokens = list(query_tokens if key_tokens is None else key_tokens)
    if weights.ndim != 2 or tuple(weights.shape) != (len(query_tokens), len(key_tokens)):
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} do not match {len(query_tokens)} query and "
            f"{len(key_tokens)} key tokens"
        )
    cell = max(digits + 3, *(display_width(t) for t in key_tokens))
    label = max(display_width(t) for t in query_tokens) if query_tokens else 0
    lines = [" " * label + " " + " ".join(_pad(t, cell, right=True) for t in key_tokens)]
    for token, row in zip(query_tokens, weights.tolist()):
        best = max(range(len(row)), key=row.__getitem__) if row else -1
        cells = [_pad(f"{w:.{digits}f}" + ("*" if j == best else " "), cell + 1, right=True) for j, w in enumerate(row)]
        lines.append(_pad(token, label) + "".join(cells))
    return "\n".join(lines)
