"""The numbers of the site's pages, generated from the experiments' ``results.json``.

A page quotes an experiment's numbers in a block between two markers::

    <!-- results:scaling -->
    | d_k | ... |
    <!-- /results:scaling -->

``update_pages`` rewrites every such block from ``table(results, lang)`` of the experiment's
module (``lang`` is ``"ja"`` for ``*.ja.md`` pages, else ``"en"``), so a page never quotes a
number that its experiment did not produce; ``stale_blocks`` lists the blocks that differ. A
second table of the same experiment is ``results:NAME:PART``, from ``table(results, lang, PART)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["BLOCK", "page_lang", "render_block", "stale_blocks", "table_head", "update_pages"]

BLOCK = re.compile(
    r"(<!-- results:(?P<name>[a-z0-9_]+(?::[a-z0-9_]+)?) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S
)


def table_head(lang: str, en: list[str], ja: list[str]) -> list[str]:
    """The header and rule lines of a Markdown table, with the column names of ``lang``."""
    names = ja if lang == "ja" else en
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def page_lang(page: Path) -> str:
    """``"ja"`` for ``name.ja.md``, ``"en"`` otherwise (mkdocs-static-i18n's suffix layout)."""
    return "ja" if page.name.endswith(".ja.md") else "en"


def render_block(block: str, figures_root: Path, lang: str) -> str:
    """The body of block ``NAME`` or ``NAME:PART`` from ``figures_root/NAME/results.json``."""
    from attnlab.experiments import get

    name, _, part = block.partition(":")
    results = json.loads((Path(figures_root) / name / "results.json").read_text(encoding="utf-8"))
    text = get(name).table(results, lang, part) if part else get(name).table(results, lang)
    return text.rstrip("\n") + "\n"


def _rewrite(text: str, figures_root: Path, lang: str) -> str:
    def body(match: re.Match) -> str:
        return match.group(1) + render_block(match.group("name"), figures_root, lang) + match.group(4)

    return BLOCK.sub(body, text)


def stale_blocks(site: Path, figures_root: Path) -> list[str]:
    """``page: name`` for every block whose text differs from what its results render."""
    stale = []
    for page in sorted(Path(site).glob("*.md")):
        lang = page_lang(page)
        for match in BLOCK.finditer(page.read_text(encoding="utf-8")):
            if match.group("body") != render_block(match.group("name"), figures_root, lang):
                stale.append(f"{page.name}: {match.group('name')}")
    return stale


def update_pages(site: Path, figures_root: Path) -> list[Path]:
    """Rewrite the result blocks of the pages in ``site`` whose experiment has a ``results.json``;
    returns the pages changed."""
    changed = []
    for page in sorted(Path(site).glob("*.md")):
        text = page.read_text(encoding="utf-8")
        names = {m.group("name").partition(":")[0] for m in BLOCK.finditer(text)}
        if not names or not all((Path(figures_root) / n / "results.json").exists() for n in names):
            continue
        new = _rewrite(text, figures_root, page_lang(page))
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed
