"""Small text helpers shared by the corpora and their statistics: whitespace and script."""

from __future__ import annotations

import re

__all__ = ["contains_japanese", "is_japanese_char", "japanese_char_fraction", "normalize_whitespace"]

# Hiragana, katakana (incl. phonetic extensions and half-width forms), CJK ideographs (incl. ext. A
# and compatibility ideographs) and the iteration mark 々. Latin, digits and CJK punctuation are not
# counted: an untranslated page keeps its English letters and its full-width brackets alike.
_JAPANESE = re.compile(
    "[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3005]"
)
_WHITESPACE = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace (incl. newlines and NBSP) to one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def is_japanese_char(char: str) -> bool:
    """Whether one character is kana or kanji."""
    return _JAPANESE.match(char) is not None


def contains_japanese(text: str) -> bool:
    """Whether ``text`` holds at least one kana or kanji character."""
    return _JAPANESE.search(text) is not None


def japanese_char_fraction(text: str) -> float:
    """Fraction of the non-space characters of ``text`` that are kana or kanji (0.0 for blank text)."""
    visible = _WHITESPACE.sub("", text)
    if not visible:
        return 0.0
    return len(_JAPANESE.findall(visible)) / len(visible)
