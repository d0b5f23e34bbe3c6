"""English-X parallel text from the LibreOffice help pages that Debian ships.

Debian packages ``libreoffice-help-en-us`` and ``libreoffice-help-LANG`` hold the same HTML help
pages in two languages under ``usr/share/libreoffice/help/{en-US,LANG}/``. A translated page keeps
the ``id`` attributes of its source (``par_id...``, ``hd_id...``, ``bm_id...``), so paragraphs pair
up by id on the same page. Some pages or paragraphs are left untranslated; for Japanese they are
recognised by holding no kana or kanji and are dropped.

Text inside a ``switchinline`` (platform- or module-specific variants such as "Command" on macOS vs
"Ctrl") is reduced to its ``default`` case, the way the help viewer shows it on Linux.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from attnlab.data.debian import extract_debian_packages
from attnlab.data.text import contains_japanese, normalize_whitespace

__all__ = [
    "build_libreoffice_help_pairs",
    "extract_help_paragraphs",
    "fetch_libreoffice_help",
    "keeps_translation",
    "libreoffice_lang_dir",
    "pair_help_pages",
]

logger = logging.getLogger(__name__)

HELP_SUBDIR = Path("usr/share/libreoffice/help")
_PARAGRAPH_ID = re.compile(r"^(?:par|hd|bm)_id")
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
)
_BLOCK_TAGS = frozenset({"p", "div", "li", "td", "th", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table"})


class _HelpPageParser(HTMLParser):
    """Collects the text of every element whose id is a paragraph id; the first occurrence wins."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._stack: list[tuple[str, bool]] = []  # (tag, hides its text)
        self._hidden_depth = 0
        self._captures: list[tuple[str, int, list[str]]] = []  # (id, stack depth when opened, text parts)
        self.paragraphs: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            if tag == "br":
                self._emit(" ")
            return
        attributes = dict(attrs)
        ident = attributes.get("id") or ""
        # A hidden element is a non-default case of a switch; the default case is what Linux shows.
        hides = "hidden" in attributes and not ident.startswith("default")
        self._stack.append((tag, hides))
        self._hidden_depth += hides
        if _PARAGRAPH_ID.match(ident):
            self._captures.append((ident, len(self._stack), []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._emit(" ")

    def handle_endtag(self, tag: str) -> None:
        if all(open_tag != tag for open_tag, _ in self._stack):
            return  # a stray end tag closes nothing
        while self._stack:
            open_tag, hides = self._stack.pop()
            self._hidden_depth -= hides
            self._close_captures(len(self._stack))
            if open_tag == tag:
                break
        if tag in _BLOCK_TAGS:
            self._emit(" ")

    def handle_data(self, data: str) -> None:
        if self._hidden_depth == 0:
            self._emit(data)

    def close(self) -> None:
        super().close()
        self._close_captures(0)

    def _emit(self, text: str) -> None:
        for _, _, parts in self._captures:
            parts.append(text)

    def _close_captures(self, depth: int) -> None:
        while self._captures and self._captures[-1][1] > depth:
            ident, _, parts = self._captures.pop()
            self.paragraphs.setdefault(ident, normalize_whitespace("".join(parts)))


def extract_help_paragraphs(html: str) -> dict[str, str]:
    """Map each paragraph id of a help page to its plain text.

    Args:
        html: one help page.

    Returns:
        ``{id: text}`` for elements whose ``id`` starts with ``par_id``, ``hd_id`` or ``bm_id``,
        in page order, markup stripped and whitespace normalised. Empty paragraphs are kept
        (as ``""``); a repeated id keeps its first text.
    """
    parser = _HelpPageParser()
    parser.feed(html)
    parser.close()
    return parser.paragraphs


def _help_pages(lang_dir: Path) -> Iterator[Path]:
    return iter(sorted(path.relative_to(lang_dir) for path in lang_dir.rglob("*.html")))


def keeps_translation(lang: str, english: str, translation: str) -> bool:
    """Whether a pair is translated: both sides non-empty and, for ``ja``, kana or kanji in the translation,
    otherwise a translation that differs from the English."""
    if not english or not translation:
        return False
    if lang == "ja":
        return contains_japanese(translation)
    return translation != english


def pair_help_pages(english_dir: Path, other_dir: Path, lang: str = "ja") -> list[tuple[str, str]]:
    """Pair the paragraphs of two language folders of the help by page and id.

    Args:
        english_dir: the ``en-US`` folder.
        other_dir: the folder of the other language (e.g. ``ja``).
        lang: the other language's code, to recognise untranslated paragraphs: for ``ja`` a
            paragraph must hold kana or kanji; otherwise it must differ from the English.

    Returns:
        Unique ``(english, other)`` pairs in a deterministic order (sorted page paths, then page
        order). Pages missing on the other side are skipped.
    """
    pairs: dict[tuple[str, str], None] = {}
    missing = 0
    for relative in _help_pages(english_dir):
        other_page = other_dir / relative
        if not other_page.is_file():
            missing += 1
            continue
        english = extract_help_paragraphs((english_dir / relative).read_text(encoding="utf-8"))
        other = extract_help_paragraphs(other_page.read_text(encoding="utf-8"))
        for ident, english_text in english.items():
            other_text = other.get(ident, "")
            if keeps_translation(lang, english_text, other_text):
                pairs.setdefault((english_text, other_text), None)
    if missing:
        logger.warning("%d help pages of %s have no counterpart in %s", missing, english_dir, other_dir)
    return list(pairs)


def libreoffice_lang_dir(lang: str) -> str:
    """LibreOffice's folder (help and UI) of a Debian language suffix: ``ja`` -> ``ja``, ``pt-br`` -> ``pt-BR``."""
    base, _, region = lang.partition("-")
    return f"{base}-{region.upper()}" if region else base


def fetch_libreoffice_help(lang: str, workdir: Path) -> Path:
    """Download and unpack the English and ``lang`` help packages; no root needed.

    Args:
        lang: Debian's language suffix, e.g. ``ja`` for ``libreoffice-help-ja``.
        workdir: an empty folder for the ``.deb`` files and the unpacked tree.

    Returns:
        The unpacked help root (``workdir/root/usr/share/libreoffice/help``).

    Raises:
        RuntimeError: ``apt-get download`` or ``dpkg -x`` failed (see
            :func:`attnlab.data.debian.extract_debian_packages`), or the help folders are missing.
    """
    packages = ["libreoffice-help-en-us", f"libreoffice-help-{lang}"]
    help_root = extract_debian_packages(packages, workdir) / HELP_SUBDIR
    for sub in ("en-US", libreoffice_lang_dir(lang)):
        if not (help_root / sub).is_dir():
            raise RuntimeError(f"expected help folder {help_root / sub} after unpacking {packages}; not found")
    return help_root


def build_libreoffice_help_pairs(lang: str = "ja") -> list[tuple[str, str]]:
    """Fetch the help packages into a temporary folder and return the unique ``(english, lang)`` pairs.

    Takes a few seconds and ~6 MB of downloads for Japanese; callers cache the result
    (see :func:`attnlab.data.corpora.prepare_corpus`).
    """
    with tempfile.TemporaryDirectory(prefix="attnlab-lohelp-") as tmp:
        help_root = fetch_libreoffice_help(lang, Path(tmp))
        pairs = pair_help_pages(help_root / "en-US", help_root / libreoffice_lang_dir(lang), lang)
    logger.info("libreoffice-help en-%s: %d unique pairs", lang, len(pairs))
    return pairs
