"""English-X parallel paragraphs of the Debian Reference that Debian ships.

Debian packages ``debian-reference-en`` and ``debian-reference-LANG`` hold the same book as XHTML pages
``usr/share/debian-reference/PAGE.{en,LANG}.html``. The translation is made from the English DocBook
by po4a, which translates text but keeps the markup, so both pages have the same sections (keyed by
the ``id`` in each section's title) and, inside a section, the same sequence of block elements.

Pairing: a section's blocks are the leaf block elements (``p``, ``h1``-``h6``, ``td``, ``th``, ``dt``,
``dd``, ``li``, ``pre``; a block holding another block is not a leaf) that lie in it and not in a
nested section. A section pairs only if the other page has a section with the same id whose blocks
have the same tags and classes in the same order; its blocks then pair one to one, in order. Sections
that do not match are dropped whole, so a missing or extra paragraph can never shift a pair.
Navigation, tables of contents and lists of tables are not read.

Within a pair, code blocks (``pre``: screens and listings) are skipped; footnote markers are removed;
labels of titles (``Chapter 1.``, ``3.1.1.``, ``Table 1.2.``, ``第1章``, ``表1.2``) are stripped;
whitespace is normalised (a line break between two kana/kanji is removed, as Japanese has no spaces);
a pair is dropped when either side is empty, when it is untranslated (for Japanese: no kana or kanji,
as in :mod:`attnlab.data.libreoffice_help`) or when both sides are identical.
"""

from __future__ import annotations

import logging
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.debian import extract_debian_packages
from attnlab.data.libreoffice_help import keeps_translation
from attnlab.data.text import normalize_whitespace

__all__ = [
    "ReferencePairs",
    "build_debian_reference_pairs",
    "clean_reference_pair",
    "fetch_debian_reference",
    "pair_reference_pages",
    "pair_reference_sections",
    "read_reference_sections",
]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
Block = tuple[str, str | None]  # (tag.class, text; None for a code block)
DOC_SUBDIR = Path("usr/share/debian-reference")
_BLOCK_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "td", "th", "dt", "dd", "li", "pre"})
_CONTAINER_TAGS = frozenset({"div", "table", "tr", "ul", "ol", "dl", "blockquote"})
_CODE_TAGS = frozenset({"pre"})
_SECTION_CLASSES = frozenset({"section", "chapter", "preface", "appendix", "book", "article"})
_SKIPPED_CLASSES = frozenset({"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures"})
_MARKER_CLASSES = frozenset({"footnote", "para"})  # <sup> footnote markers in the text and the notes
_TITLE_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_LABEL = re.compile(
    r"^(?:(?:Chapter|Appendix|Table|Figure|Example)\s+)?[0-9A-Z]+(?:\.[0-9]+)*\.\s+"
    r"|^(?:第[0-9]+章|付録\s*[A-Z]|[表図例][0-9]+(?:\.[0-9]+)*)\s*"
)
_JAPANESE_CHAR = "[\u3001\u3002\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff01-\uff5e]"
_JAPANESE_LINE_BREAK = re.compile(f"(?<={_JAPANESE_CHAR})[ \t]*\n\\s*(?={_JAPANESE_CHAR})")


@dataclass
class ReferencePairs:
    """The pairs of the Debian Reference.

    Attributes:
        pairs: cleaned ``(english, other)`` pairs in page and section order, repeats kept.
        entries: English text blocks read (code blocks not counted), dropped sections included.
        sections: English sections read.
        misaligned: English sections dropped because the other page has no matching section.
    """

    pairs: list[Pair]
    entries: int
    sections: int
    misaligned: int


def _tag(element: ET.Element) -> str:
    return element.tag.rpartition("}")[2]  # XHTML elements carry the namespace


def _classes(element: ET.Element) -> set[str]:
    return set((element.get("class") or "").split())


def _text(element: ET.Element) -> str:
    """The text of an element, footnote markers left out and ``<br>`` read as a space."""
    parts = [element.text or ""]
    for child in element:
        if _tag(child) == "br":
            parts.append(" ")
        elif not (_tag(child) == "sup" and _classes(child) & _MARKER_CLASSES):
            parts.append(_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _section_id(section: ET.Element) -> str | None:
    """The id of the first element of the section's title page, else the section's own id."""
    for child in section:
        if "titlepage" in _classes(child):
            for element in child.iter():
                if element.get("id"):
                    return element.get("id")
    return section.get("id")


def _is_leaf_block(element: ET.Element) -> bool:
    blocks = _BLOCK_TAGS | _CONTAINER_TAGS
    return _tag(element) in _BLOCK_TAGS and not any(
        _tag(inner) in blocks for inner in element.iter() if inner is not element
    )


def read_reference_sections(page: str) -> dict[str, list[Block]]:
    """The blocks of each section of one XHTML page, by section id (see the module docstring).

    Blocks outside any section, and sections without an id, are keyed ``""``: they never pair.
    """
    sections: dict[str, list[Block]] = {}

    def walk(element: ET.Element, section: str) -> None:
        classes = _classes(element)
        if _tag(element) == "div" and classes & _SKIPPED_CLASSES:
            return
        if _tag(element) == "div" and classes & _SECTION_CLASSES:
            section = _section_id(element) or ""
            sections.setdefault(section, [])
        if _is_leaf_block(element):
            kind = f"{_tag(element)}.{element.get('class') or ''}"
            sections.setdefault(section, []).append((kind, None if _tag(element) in _CODE_TAGS else _text(element)))
            return
        for child in element:
            walk(child, section)

    walk(ET.fromstring(page), "")
    return sections


def _normalized(text: str) -> str:
    return normalize_whitespace(_JAPANESE_LINE_BREAK.sub("", text))


def clean_reference_pair(kind: str, english: str, translation: str, lang: str = "ja") -> Pair | None:
    """One pair of blocks as a training pair, or ``None`` if it is empty, untranslated or identical.

    ``kind`` is the block's ``tag.class``; titles (``h1``-``h6``, ``p.title``) lose their labels.
    """
    english, translation = _normalized(english), _normalized(translation)
    if kind.partition(".")[0] in _TITLE_TAGS or kind == "p.title":
        english, translation = _LABEL.sub("", english), _LABEL.sub("", translation)
    if not keeps_translation(lang, english, translation) or english == translation:
        return None
    return english, translation


def pair_reference_sections(
    english: dict[str, list[Block]], other: dict[str, list[Block]], lang: str = "ja"
) -> ReferencePairs:
    """Pair the blocks of the sections two pages share, section by section (see the module docstring)."""
    pairs, entries, misaligned = [], 0, 0
    for section, blocks in english.items():
        entries += sum(text is not None for _, text in blocks)
        counterpart = other.get(section)
        if not section or counterpart is None or [kind for kind, _ in blocks] != [kind for kind, _ in counterpart]:
            misaligned += 1
            continue
        for (kind, english_text), (_, other_text) in zip(blocks, counterpart):
            if english_text is None or other_text is None:
                continue
            pair = clean_reference_pair(kind, english_text, other_text, lang)
            if pair is not None:
                pairs.append(pair)
    return ReferencePairs(pairs, entries, len(english), misaligned)


def pair_reference_pages(doc_dir: Path, lang: str = "ja") -> ReferencePairs:
    """Pair every ``PAGE.en.html`` of a folder (sorted by name) with its ``PAGE.LANG.html``.

    A page without a counterpart counts as read, all its sections misaligned.

    Raises:
        FileNotFoundError: the folder holds no English page.
    """
    pages = sorted(doc_dir.glob("*.en.html"))
    if not pages:
        raise FileNotFoundError(f"no *.en.html page in {doc_dir}; expected the files of debian-reference-en")
    total = ReferencePairs([], 0, 0, 0)
    for english_page in pages:
        other_page = english_page.with_name(english_page.name.removesuffix(".en.html") + f".{lang}.html")
        other = read_reference_sections(other_page.read_text(encoding="utf-8")) if other_page.is_file() else {}
        page = pair_reference_sections(read_reference_sections(english_page.read_text(encoding="utf-8")), other, lang)
        total.pairs += page.pairs
        total.entries += page.entries
        total.sections += page.sections
        total.misaligned += page.misaligned
    return total


def fetch_debian_reference(lang: str, workdir: Path) -> Path:
    """Download and unpack ``debian-reference-en`` and ``debian-reference-LANG``; no root needed.

    Returns:
        The unpacked folder of the pages (``workdir/root/usr/share/debian-reference``).

    Raises:
        RuntimeError: the download or unpacking failed, or the folder is missing.
    """
    packages = ["debian-reference-en", f"debian-reference-{lang}"]
    doc_dir = extract_debian_packages(packages, workdir) / DOC_SUBDIR
    if not doc_dir.is_dir():
        raise RuntimeError(f"expected folder {doc_dir} after unpacking {packages}; not found")
    return doc_dir


def build_debian_reference_pairs(lang: str = "ja") -> ReferencePairs:
    """Fetch the two packages into a temporary folder and pair their pages (~4 MB of downloads for ``ja``)."""
    with tempfile.TemporaryDirectory(prefix="attnlab-debref-") as tmp:
        reference = pair_reference_pages(fetch_debian_reference(lang, Path(tmp)), lang)
    logger.info(
        "debian-reference en-%s: %d pairs from %d blocks; %d of %d sections misaligned and dropped",
        lang,
        len(reference.pairs),
        reference.entries,
        reference.misaligned,
        reference.sections,
    )
    return reference
