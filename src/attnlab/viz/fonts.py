"""Fonts for token labels in Japanese, Chinese and Korean as well as Latin script.

matplotlib draws each glyph with the first font of the family list that has it (per-glyph fallback).
The list is: DejaVu Sans (matplotlib's own, for Latin), IPAexGothic (bundled by ``matplotlib-fontja``,
a project dependency: kana, kanji and the Han characters that Chinese shares with Japanese), then
Noto Sans CJK where the system has it (Debian's ``fonts-noto-cjk``: Hangul and simplified-only Han,
which IPAexGothic lacks). Fonts are registered with matplotlib's font manager; no rcParams change.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from matplotlib import font_manager
from matplotlib.font_manager import FontProperties
from matplotlib.ft2font import FT2Font

LATIN_FAMILY = "DejaVu Sans"
SYSTEM_CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJKjp-Regular.otf",
)


def _fontja_file() -> Path:
    """IPAexGothic inside ``matplotlib-fontja``, found without importing it (its import sets rcParams)."""
    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("matplotlib-fontja (a dependency of attnlab) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "fonts" / "ipaexg.ttf"


@functools.cache
def label_font_files() -> tuple[str, ...]:
    """The font files tried in order for each glyph of a label; registers the CJK ones with matplotlib."""
    latin = font_manager.findfont(FontProperties(family=LATIN_FAMILY), fallback_to_default=False)
    cjk = [str(_fontja_file())] + [path for path in SYSTEM_CJK_FONTS if Path(path).is_file()]
    for path in cjk:
        font_manager.fontManager.addfont(path)
    return (latin, *cjk)


@functools.cache
def label_families() -> tuple[str, ...]:
    """Family names of ``label_font_files()``, in the same order."""
    return tuple(FT2Font(path).family_name for path in label_font_files())


def label_font(size: float | None = None) -> FontProperties:
    """Font properties for token labels: the fallback list of ``label_families()``."""
    return FontProperties(family=list(label_families()), size=size)


def missing_glyphs(text: str) -> str:
    """The characters of ``text`` (blanks aside) that none of the label fonts can draw, in order, once each."""
    charmaps = [_charmap(path) for path in label_font_files()]
    missing = dict.fromkeys(ch for ch in text if not ch.isspace() and all(ord(ch) not in cm for cm in charmaps))
    return "".join(missing)


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    """The code points that the font at ``path`` maps to glyphs."""
    return frozenset(FT2Font(path).get_charmap())
