"""English-X parallel text from the LibreOffice UI message catalogues that Debian ships.

Debian package ``libreoffice-l10n-LANG`` holds gettext ``.mo`` catalogues under
``usr/lib/libreoffice/program/resource/LANG/LC_MESSAGES/``; each ``msgid`` is the English UI string
and its ``msgstr`` the translation. Message contexts are ignored; plural entries and the header are
left out; an entry is dropped when either side is empty, when it is untranslated (for Japanese: no
kana or kanji, as in :mod:`attnlab.data.libreoffice_help`) or when both sides are identical.

Accelerator (mnemonic) markers are stripped, the way the UI shows the label: LibreOffice marks the
mnemonic letter with ``~`` (older dialogs) or ``_`` (``.ui`` files) in English, e.g. ``~Save`` or
``Hori_zontal ruler:``, and the Japanese translation appends it in parentheses, ``保存(~S)``. A marker
is a ``~`` or ``_`` before a letter or digit, in a word that holds no other ``~``/``_`` and does not
start with ``%``, ``$``, ``<`` or ``&`` (so placeholders such as ``%FILE_NAME`` and identifiers such as
``OPT_PROB_HIT`` stay). The English marker is removed only when it is the string's one marker; on
the other side a parenthesised ``(_X)``/``(~X)`` (ASCII or full-width brackets) is removed with the
space before it, or else the same marker as in English, once.
"""

from __future__ import annotations

import gettext
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.debian import extract_debian_packages
from attnlab.data.libreoffice_help import keeps_translation, libreoffice_lang_dir
from attnlab.data.text import normalize_whitespace

__all__ = [
    "UICatalogues",
    "build_libreoffice_ui_pairs",
    "clean_ui_pair",
    "fetch_libreoffice_ui",
    "pair_ui_catalogues",
    "read_catalogue",
    "strip_accelerators",
]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
RESOURCE_SUBDIR = Path("usr/lib/libreoffice/program/resource")
_MARKER = re.compile(r"[~_](?=[^\W_])")
_PLACEHOLDER_START = ("%", "$", "<", "&")
_PARENTHESISED_MARKER = re.compile(r"\s*[(（][~_][^\W_][)）]")
_CONTEXT_SEPARATOR = "\x04"


@dataclass
class UICatalogues:
    """The pairs of a set of catalogues.

    Attributes:
        pairs: cleaned ``(english, other)`` pairs in catalogue order, repeats kept.
        entries: singular entries read (header and plural entries not counted).
    """

    pairs: list[Pair]
    entries: int


def read_catalogue(path: str | Path) -> list[Pair]:
    """The singular ``(msgid, msgstr)`` entries of one ``.mo`` file, message contexts removed.

    Python's :class:`gettext.GNUTranslations` parses the file and decodes it by its header charset;
    it has no public way to list its messages, so its ``_catalog`` dict (stable since Python 2) is
    read. The header (empty ``msgid``) and plural entries (keyed by ``(msgid, index)``) are left out.
    """
    with open(path, "rb") as handle:
        catalogue = gettext.GNUTranslations(handle)._catalog
    return [
        (key.rpartition(_CONTEXT_SEPARATOR)[2], value)
        for key, value in catalogue.items()
        if isinstance(key, str) and key
    ]


def _marker_positions(text: str) -> list[int]:
    """Positions of the accelerator markers of ``text`` (see the module docstring)."""
    positions = []
    for match in _MARKER.finditer(text):
        start = text.rfind(" ", 0, match.start()) + 1
        end = text.find(" ", match.start())
        word = text[start : len(text) if end < 0 else end]
        if word.count("~") + word.count("_") == 1 and not word.startswith(_PLACEHOLDER_START):
            positions.append(match.start())
    return positions


def strip_accelerators(english: str, translation: str) -> Pair:
    """Remove the mnemonic marker of an English UI string and its counterpart in the translation.

    ``("~Save", "保存(~S)")`` -> ``("Save", "保存")``; ``("HT_ML Source", "HT_ML ソース")`` -> ``("HTML Source",
    "HTML ソース")``; placeholders (``%FILE_NAME``) and strings with several markers are returned as given.
    """
    positions = _marker_positions(english)
    if len(positions) != 1:
        return english, translation
    marker = english[positions[0] : positions[0] + 2]
    english = english[: positions[0]] + english[positions[0] + 1 :]
    stripped, count = _PARENTHESISED_MARKER.subn("", translation, count=1)
    if count:
        return english, stripped
    if marker in translation and translation.find(marker) in _marker_positions(translation):
        return english, translation.replace(marker, marker[1], 1)
    return english, translation


def clean_ui_pair(english: str, translation: str, lang: str = "ja") -> Pair | None:
    """One catalogue entry as a training pair, or ``None`` if it is empty, untranslated or identical.

    Accelerators are stripped (:func:`strip_accelerators`) and whitespace normalised before the checks.
    """
    english, translation = strip_accelerators(english, translation)
    english, translation = normalize_whitespace(english), normalize_whitespace(translation)
    if not keeps_translation(lang, english, translation) or english == translation:
        return None
    return english, translation


def pair_ui_catalogues(catalogue_dir: Path, lang: str = "ja") -> UICatalogues:
    """Read every ``*.mo`` file of a folder (sorted by name) into cleaned pairs.

    Args:
        catalogue_dir: an ``LC_MESSAGES`` folder.
        lang: the catalogues' language, to recognise untranslated entries.

    Returns:
        The cleaned pairs (repeats kept, so a caller can count them) and the number of entries read.

    Raises:
        FileNotFoundError: the folder holds no ``.mo`` file.
    """
    files = sorted(catalogue_dir.glob("*.mo"))
    if not files:
        raise FileNotFoundError(f"no .mo catalogue in {catalogue_dir}; expected the files of libreoffice-l10n-{lang}")
    pairs, entries = [], 0
    for path in files:
        for english, translation in read_catalogue(path):
            entries += 1
            pair = clean_ui_pair(english, translation, lang)
            if pair is not None:
                pairs.append(pair)
    return UICatalogues(pairs, entries)


def fetch_libreoffice_ui(lang: str, workdir: Path) -> Path:
    """Download and unpack ``libreoffice-l10n-LANG``; no root needed.

    Returns:
        The unpacked ``LC_MESSAGES`` folder of ``lang``.

    Raises:
        RuntimeError: the download or unpacking failed, or the catalogue folder is missing.
    """
    package = f"libreoffice-l10n-{lang}"
    catalogue_dir = extract_debian_packages([package], workdir) / RESOURCE_SUBDIR / libreoffice_lang_dir(lang)
    catalogue_dir = catalogue_dir / "LC_MESSAGES"
    if not catalogue_dir.is_dir():
        raise RuntimeError(f"expected catalogue folder {catalogue_dir} after unpacking {package}; not found")
    return catalogue_dir


def build_libreoffice_ui_pairs(lang: str = "ja") -> UICatalogues:
    """Fetch ``libreoffice-l10n-LANG`` into a temporary folder and read its catalogues."""
    with tempfile.TemporaryDirectory(prefix="attnlab-loui-") as tmp:
        catalogues = pair_ui_catalogues(fetch_libreoffice_ui(lang, Path(tmp)), lang)
    logger.info("libreoffice-ui en-%s: %d pairs from %d entries", lang, len(catalogues.pairs), catalogues.entries)
    return catalogues
