"""The page, parsed as a browser would: inlined PNGs of the figures' size and pixels, escaped text, nothing remote."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from attnlab.viz.figures import heatmap
from attnlab.viz.page import PageFigure, Section, write_page

PNG_URI = "data:image/png;base64,"


class Page(HTMLParser):
    """Every start tag with its attributes, and the text inside each tag name."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "meta"):
            self._open.append(tag)

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._open and data.strip():
            self.text.setdefault(self._open[-1], []).append(data.strip())

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def small_figure(width: float, height: float, dpi: int = 50) -> Figure:
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def drawn(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


def decoded(src: str) -> Image.Image:
    assert src.startswith(PNG_URI)
    image = Image.open(io.BytesIO(base64.b64decode(src.removeprefix(PNG_URI), validate=True)))
    assert image.format == "PNG"
    return image


def test_every_image_is_an_inlined_png_of_its_figure(tmp_path):
    figures = [small_figure(4, 3), small_figure(2, 5, dpi=40), heatmap(torch.rand(3, 3), ["猫", "が", "寝る"])]
    sections = [
        Section("自己注意", "「小説」がどの語に注目するか。", [figures[0], PageFigure(figures[1], caption="二番目")]),
        Section("heatmap", None, [figures[2]]),
    ]
    written = write_page(tmp_path / "page.html", "注意の可視化", sections)
    assert written == [tmp_path / "page.html"]
    page = Page((tmp_path / "page.html").read_text(encoding="utf-8"))
    images = page.all("img")
    assert len(images) == len(figures)
    for attrs, fig in zip(images, figures):
        image = decoded(attrs["src"])
        width, height = (round(v) for v in fig.get_size_inches() * fig.dpi)
        assert image.size == (width, height) == (int(attrs["width"]), int(attrs["height"]))
        differ = np.any(np.asarray(image.convert("RGBA")) != drawn(fig), axis=-1)
        assert differ.mean() < 0.01  # the same picture; constrained layout may move text by a subpixel per draw
    assert page.text["h2"] == ["自己注意", "heatmap"]
    assert page.text["p"] == ["「小説」がどの語に注目するか。"]
    assert page.text["figcaption"] == ["二番目"]


def test_the_page_is_utf8_japanese_and_loads_nothing(tmp_path):
    path = tmp_path / "out" / "index.html"
    write_page(path, "注意の可視化", [Section("文", "吾輩は猫である。", [small_figure(2, 2)])])
    raw = path.read_bytes()
    assert "注意の可視化".encode() in raw and "吾輩は猫である。".encode() in raw  # as characters, not entities
    page = Page(raw.decode("utf-8"))
    assert page.all("html") == [{"lang": "ja"}]
    assert {"charset": "utf-8"} in page.all("meta")
    assert page.text["title"] == page.text["h1"] == ["注意の可視化"]
    assert not page.all("script") and not page.all("link") and not page.all("iframe")
    for _, attrs in page.tags:
        for name, value in attrs.items():
            if name in ("src", "href") or "url(" in (value or ""):
                assert value.startswith(PNG_URI), f"{name}={value[:40]!r} would load from elsewhere"
    style = "".join(page.text["style"])
    assert "url(" not in style and "@import" not in style and "@font-face" not in style


def test_text_is_escaped(tmp_path):
    title = "<script>alert('x')</script> & co"
    path = tmp_path / "page.html"
    write_page(path, title, [Section("<b>head</b>", "a < b > c", [PageFigure(small_figure(2, 2), caption='"<i>')])])
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert not page.all("script") and not page.all("b") and not page.all("i")
    assert "&lt;script&gt;" in text
    assert page.text["title"] == page.text["h1"] == [title]
    assert page.text["h2"] == ["<b>head</b>"] and page.text["p"] == ["a < b > c"]
    assert page.all("img")[0]["alt"] == '"<i>'


def test_stems_save_the_inlined_png_and_an_svg_beside_the_page(tmp_path):
    first, second = small_figure(3, 2), small_figure(2, 2)
    path = tmp_path / "index.html"
    sections = [Section("one", None, [PageFigure(first, stem="alignment"), second, PageFigure(second, stem="grid")])]
    written = write_page(path, "figures", sections, lang="en")
    assert written == [path, *(tmp_path / name for name in ("alignment.png", "alignment.svg", "grid.png", "grid.svg"))]
    page = Page(path.read_text(encoding="utf-8"))
    sources = [attrs["src"] for attrs in page.all("img")]
    assert base64.b64decode(sources[0].removeprefix(PNG_URI)) == (tmp_path / "alignment.png").read_bytes()
    assert base64.b64decode(sources[2].removeprefix(PNG_URI)) == (tmp_path / "grid.png").read_bytes()
    for name in ("alignment.svg", "grid.svg"):
        assert ElementTree.parse(tmp_path / name).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert [attrs["href"] for attrs in page.all("a")] == ["alignment.png", "alignment.svg", "grid.png", "grid.svg"]
    assert page.all("html") == [{"lang": "en"}]


def test_bad_arguments_are_named(tmp_path):
    fig = small_figure(2, 2)
    path = tmp_path / "page.html"
    with pytest.raises(ValueError, match=r"figure stem '\.\./x' must be a plain file name"):
        write_page(path, "t", [Section("s", None, [PageFigure(fig, stem="../x")])])
    with pytest.raises(ValueError, match=r"figure stem 'a' is given to two figures"):
        write_page(
            path,
            "t",
            [Section("s", None, [PageFigure(fig, stem="a")]), Section("u", None, [PageFigure(fig, stem="a")])],
        )
    with pytest.raises(ValueError, match=r"lang must be a language tag .* got 'ja\"><script>'"):
        write_page(path, "t", [], lang='ja"><script>')
    with pytest.raises(TypeError, match=r"must be matplotlib Figures or PageFigures, got ndarray"):
        write_page(path, "t", [Section("s", None, [np.zeros((2, 2))])])
    assert not any(tmp_path.iterdir())
