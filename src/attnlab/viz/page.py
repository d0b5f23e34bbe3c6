"""One self-contained HTML page of figures: a file that opens anywhere, offline, and can be mailed alone.

Every figure is inlined as a PNG ``data:`` URI, the style sheet is inline, and the page names no
script, external style sheet, web font or remote address: it loads nothing. Text is UTF-8 (declared by
``<meta charset="utf-8">`` and the ``lang`` attribute) and HTML-escaped, so Japanese reads as written
and a ``<script>`` in a token or title shows as text. Fonts are the reader's own: the style sheet lists
common Japanese system fonts before the generic ``sans-serif``.

A figure may also be saved beside the page as ``STEM.png`` (the very bytes inlined) and ``STEM.svg``,
and the page links to both by relative name.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from attnlab.data.cache import atomic_write_bytes, atomic_write_text

LANG_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
STYLE = """
body { font-family: system-ui, "Hiragino Sans", "Hiragino Kaku Gothic ProN", "Noto Sans CJK JP", "Yu Gothic",
       Meiryo, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.6; }
figure { margin: 1.5rem 0; }
img { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.9rem; }
"""


@dataclass(frozen=True)
class PageFigure:
    """A figure of a section, with what is written of it besides the inlined PNG.

    Attributes:
        figure: the matplotlib figure, drawn at its own size and dpi.
        stem: when given, the figure is also saved as ``STEM.png`` and ``STEM.svg`` beside the page;
            a plain file name, unique within the page.
        caption: text under the figure (also its ``alt`` text).
    """

    figure: Figure
    stem: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class Section:
    """A part of the page: a heading, an optional paragraph (blank lines split it), then figures.

    Attributes:
        heading: the section's ``<h2>``.
        text: paragraphs of plain text, or None.
        figures: each a ``PageFigure`` or a bare ``Figure`` (inlined only).
    """

    heading: str
    text: str | None = None
    figures: Sequence[Figure | PageFigure] = field(default_factory=tuple)


def write_page(path, title: str, sections: Sequence[Section], *, lang: str = "ja") -> list[Path]:
    """Write one self-contained HTML page of ``sections`` to ``path``, and the figure files asked for.

    Args:
        path: the ``.html`` file to write; its folder is created, and figure files go beside it.
        title: the page's ``<title>`` and ``<h1>``.
        sections: the sections in order.
        lang: the page's language tag (BCP 47, e.g. ``"ja"``, ``"en"``).

    Returns:
        The files written: the page, then ``STEM.png`` and ``STEM.svg`` of each figure with a stem, in order.
    """
    path = Path(path)
    if not LANG_TAG.fullmatch(lang):
        raise ValueError(f"lang must be a language tag such as 'ja' or 'en-GB', got {lang!r}")
    figures = [_page_figure(item) for section in sections for item in section.figures]
    _check_stems(figures)
    pngs = [_render(item.figure, "png") for item in figures]
    written = [path]
    for item, png in zip(figures, pngs):
        if item.stem is not None:
            written += [path.parent / f"{item.stem}.png", path.parent / f"{item.stem}.svg"]
            atomic_write_bytes(written[-2], png)
            atomic_write_bytes(written[-1], _render(item.figure, "svg"))
    atomic_write_text(path, _document(title, sections, iter(pngs), lang))
    return written


def _document(title: str, sections: Sequence[Section], pngs, lang: str) -> str:
    """The whole HTML text; ``pngs`` yields the PNG bytes of the figures in page order."""
    body = "\n".join(_section(section, pngs) for section in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _section(section: Section, pngs) -> str:
    """One ``<section>``: heading, paragraphs, figures."""
    parts = [f"<h2>{html.escape(section.heading)}</h2>"]
    paragraphs = re.split(r"\n\s*\n", section.text.strip()) if section.text else []
    parts += [f"<p>{html.escape(paragraph)}</p>" for paragraph in paragraphs]
    parts += [_figure(_page_figure(item), next(pngs), section.heading) for item in section.figures]
    return "<section>\n" + "\n".join(parts) + "\n</section>"


def _figure(item: PageFigure, png: bytes, heading: str) -> str:
    """One ``<figure>``: the inlined PNG at its pixel size, the caption, links to the saved files."""
    width, height = _png_size(png)
    alt = html.escape(item.caption or heading)
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    lines = [f'<figure>\n<img src="{source}" alt="{alt}" width="{width}" height="{height}">']
    caption = html.escape(item.caption) if item.caption else ""
    if item.stem is not None:
        stem = html.escape(item.stem)
        caption += f' (<a href="{stem}.png">PNG</a>, <a href="{stem}.svg">SVG</a>)'
    if caption:
        lines.append(f"<figcaption>{caption.strip()}</figcaption>")
    return "\n".join(lines) + "\n</figure>"


def _page_figure(item) -> PageFigure:
    """A section's figure entry as a ``PageFigure``, or an error naming what was given."""
    if isinstance(item, PageFigure):
        return item
    if isinstance(item, Figure):
        return PageFigure(item)
    raise TypeError(f"a section's figures must be matplotlib Figures or PageFigures, got {type(item).__name__}")


def _check_stems(figures: Sequence[PageFigure]) -> None:
    """An error naming a stem that is not a plain file name, or that two figures share."""
    seen: set[str] = set()
    for stem in (item.stem for item in figures if item.stem is not None):
        if not stem or Path(stem).name != stem or stem in (".", "..") or "\\" in stem:
            raise ValueError(f"figure stem {stem!r} must be a plain file name, without folders")
        if stem in seen:
            raise ValueError(f"figure stem {stem!r} is given to two figures; stems must be unique")
        seen.add(stem)


def _render(fig: Figure, fmt: str) -> bytes:
    """The figure drawn as ``fmt`` (``"png"`` or ``"svg"``) at its own size and dpi."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=fig.dpi)
    return buffer.getvalue()


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (bytes 16 to 24)."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
