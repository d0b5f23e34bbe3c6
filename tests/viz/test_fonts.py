"""Japanese and Chinese labels draw with real glyphs; whatever no font has is reported, as matplotlib reports it."""

from __future__ import annotations

import io
import re
import warnings

import matplotlib
import torch

from attnlab.viz.figures import head_grid, head_view, heatmap
from attnlab.viz.fonts import label_families, missing_glyphs

JAPANESE = ["私", "は", "小説", "を", "読む", "。"]
CHINESE = ["我們", "喜歡", "注意力", "机制", "很", "重要"]
KOREAN = ["나는", "소설을", "읽는다"]


def glyph_warnings(draw) -> set[str]:
    """The characters that matplotlib warned it has no glyph for while drawing and saving ``draw()``'s figure."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        draw().savefig(io.BytesIO(), format="png")
    messages = [str(w.message) for w in caught]
    assert all("missing from font" not in m or m.startswith("Glyph") for m in messages), messages
    return {chr(int(code)) for m in messages for code in re.findall(r"Glyph (\d+) .* missing from font", m)}


def test_japanese_and_chinese_labels_raise_no_missing_glyph_warning():
    weights = torch.rand(len(JAPANESE), len(CHINESE))
    assert glyph_warnings(lambda: heatmap(weights, JAPANESE, CHINESE, title="注意の重み")) == set()
    assert glyph_warnings(lambda: head_view(weights, JAPANESE, CHINESE)) == set()
    assert glyph_warnings(lambda: head_grid(weights[None], JAPANESE, CHINESE)) == set()
    assert missing_glyphs("".join(JAPANESE + CHINESE)) == ""
    assert "IPAexGothic" in label_families()


def test_korean_draws_exactly_when_a_label_font_covers_hangul():
    # Hangul is drawn where the system has a CJK font with it (Debian's fonts-noto-cjk), and reported
    # missing otherwise: either way matplotlib's own warnings agree with missing_glyphs.
    weights = torch.rand(len(KOREAN), len(KOREAN))
    warned = glyph_warnings(lambda: heatmap(weights, KOREAN))
    assert warned == set(missing_glyphs("".join(KOREAN)))


def test_a_character_no_font_has_is_reported_as_matplotlib_warns():
    private_use = "\ue000"
    assert missing_glyphs(f"a {private_use}b{private_use}") == private_use
    assert glyph_warnings(lambda: heatmap(torch.ones(1, 1), [private_use])) == {private_use}


def test_drawing_leaves_the_global_font_settings_alone():
    before = list(matplotlib.rcParams["font.family"])
    heatmap(torch.rand(2, 2), JAPANESE[:2]).savefig(io.BytesIO(), format="png")
    assert list(matplotlib.rcParams["font.family"]) == before
