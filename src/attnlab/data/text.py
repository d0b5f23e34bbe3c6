"""Small text helpers shared by the corpora and their statistics: whitespace, script and encoding."""

from __future__ import annotations

import os
import re

__all__ = [
    "NotUTF8Error",
    "contains_japanese",
    "decode_utf8",
    "is_japanese_char",
    "japanese_char_fraction",
    "normalize_whitespace",
]

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


class NotUTF8Error(ValueError):
    """A text file that is not UTF-8; the message names the file, the line and the conversion."""


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
    """``data`` (the bytes of file ``path``) as UTF-8 text, a leading BOM dropped.

    Raises:
        NotUTF8Error: UTF-16 (a NUL byte or a UTF-16 BOM), binary data or another encoding such as
            Latin-1; one line naming the file, the line and byte, and an ``iconv`` command.
    """
    nul = data.find(b"\x00")
    try:
        text = data.decode("utf-8-sig")
        position = nul
    except UnicodeDecodeError as error:
        position = error.start if nul < 0 else min(nul, error.start)
    if position < 0:
        return text
    if nul >= 0 or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        kind, encoding = "UTF-16 or binary data (it holds NUL bytes)", "UTF-16"
    else:
        kind, encoding = f"not UTF-8 (byte 0x{data[position]:02x})", "LATIN1"
    line = data.count(b"\n", 0, position) + 1
    raise NotUTF8Error(
        f"{path}:{line}: {kind}; text files must be UTF-8: convert it, "
        f"e.g. iconv -f {encoding} -t UTF-8 {path} > {path}.utf8"
    )
