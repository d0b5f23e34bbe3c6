"""MkDocs hook: a line break between two Japanese characters is no space.

Markdown turns the line breaks inside a paragraph into spaces, which is right for English and
wrong for Japanese: 「最初の\\n層では」 would show as 「最初の 層では」. This hook joins such lines
before the page is rendered, so the Japanese pages can be wrapped like the English ones. Fenced
code blocks are left as they are; a break next to a Latin letter, a digit or punctuation of
ASCII stays a space.
"""

from __future__ import annotations

import re
from typing import Any

# Kana, CJK ideographs, CJK punctuation and full-width forms.
_CJK = "\u3000-\u303f\u3040-\u309f\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef"
_BREAK = re.compile(rf"(?<=[{_CJK}])\n[ \t]*(?=[{_CJK}])")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")


def join_cjk_lines(markdown: str) -> str:
    """``markdown`` with every line break between two CJK characters removed, outside code fences."""
    parts, chunk, fenced = [], [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            parts.append(_BREAK.sub("", "".join(chunk)) if not fenced else "".join(chunk))
            chunk, fenced = [], not fenced
            parts.append(line)
            continue
        chunk.append(line)
    parts.append("".join(chunk) if fenced else _BREAK.sub("", "".join(chunk)))
    return "".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: join the Japanese lines of every page."""
    return join_cjk_lines(markdown)
