"""A report's figures hold the maps they name (checked against torch and the papers' formulas), and its files
are what they say: PNGs of the figures' size, SVGs that parse, one page inlining every figure."""

from __future__ import annotations

import base64
import re
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.viz.figures import upsample_map
from attnlab.viz.maps import AttentionMap, AttentionMaps
from attnlab.viz.report import cnn_figures, report_figures, text_figures, vit_figures, write_report

SOURCE = ["▁un", "believ", "able", "▁cat", "</s>"]
TARGET = ["▁信じ", "られない", "猫", "</s>"]
TARGET_IN = ["<s>", "▁信じ", "られない", "猫"]


def softmax(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).softmax(dim=-1)


def translation_maps(heads: int = 2) -> AttentionMaps:
    """One item's encoder, decoder and cross maps of a 1+2-layer Transformer, labelled as the Translator does."""
    s, t = len(SOURCE), len(TARGET)
    maps = [
        AttentionMap("encoder_self", 0, tuple(range(heads)), softmax(1, heads, s, s, seed=1)),
        AttentionMap("decoder_self", 0, tuple(range(heads)), softmax(1, heads, t, t, seed=2)),
        AttentionMap("cross", 0, tuple(range(heads)), softmax(1, heads, t, s, seed=3)),
        AttentionMap("decoder_self", 1, tuple(range(heads)), softmax(1, heads, t, t, seed=4)),
        AttentionMap("cross", 1, tuple(range(heads)), softmax(1, heads, t, s, seed=5)),
    ]
    return AttentionMaps(maps, {"source": [SOURCE], "target": [TARGET], "target_in": [TARGET_IN]})


def cross_only() -> AttentionMaps:
    maps = translation_maps()
    return AttentionMaps(maps.select("cross", 1), maps.labels)


def vit_maps(layers: int = 3, heads: int = 2, grid: tuple[int, int] = (2, 3)) -> AttentionMaps:
    n = 1 + grid[0] * grid[1]
    maps = [AttentionMap("vit", i, tuple(range(heads)), softmax(1, heads, n, n, seed=10 + i)) for i in range(layers)]
    return AttentionMaps(maps, grid=grid, prefix_tokens=1)


def cnn_maps() -> AttentionMaps:
    gen = torch.Generator().manual_seed(7)
    maps = [
        AttentionMap("se_gate", 0, None, torch.rand(1, 8, generator=gen)),
        AttentionMap("spatial_mask", 0, None, torch.rand(1, 1, 8, 8, generator=gen)),
        AttentionMap("se_gate", 1, None, torch.rand(1, 16, generator=gen)),
        AttentionMap("spatial_mask", 1, None, torch.rand(1, 1, 4, 4, generator=gen)),
    ]
    return AttentionMaps(maps)


IMAGE = np.random.default_rng(0).integers(0, 255, (12, 18, 3)).astype(np.uint8)


def by_stem(figures) -> dict:
    return {f.stem: f for f in figures}


def heat(fig, panel: int = 0) -> np.ndarray:
    """The map drawn last on a panel (over the image on overlays), as an array."""
    return np.asarray(fig.axes[panel].images[-1].get_array(), dtype=np.float64)


def test_text_figures_are_the_head_means_grids_and_last_layer_head_views():
    maps = translation_maps()
    figures = by_stem(text_figures(maps))
    expected = {f"{kind}_{layer}_{what}" for kind, layer in [("encoder_self", 0), ("decoder_self", 0),
                ("decoder_self", 1), ("cross", 0), ("cross", 1)] for what in ("mean", "heads")}  # fmt: skip
    expected |= {"encoder_self_0_head_view", "decoder_self_1_head_view", "cross_1_head_view"}
    assert set(figures) == expected
    for m in maps:
        mean = figures[f"{m.kind}_{m.layer}_mean"].figure
        np.testing.assert_allclose(heat(mean), m.weights[0].double().mean(0).numpy(), rtol=1e-6)
        grid = figures[f"{m.kind}_{m.layer}_heads"].figure
        panels = [ax for ax in grid.axes if ax.images]
        assert [ax.get_title() for ax in panels] == ["head 0", "head 1", "mean", "max"]
        np.testing.assert_allclose(heat(grid, 3), m.weights[0].double().amax(0).numpy(), rtol=1e-6)
    cross = figures["cross_1_mean"].figure.axes[0]
    assert [t.get_text() for t in cross.get_xticklabels()] == SOURCE
    assert [t.get_text() for t in cross.get_yticklabels()] == TARGET
    assert "alignment" in figures["cross_1_mean"].title


def test_words_merge_pieces_as_clark_et_al_sum_to_and_mean_from():
    maps = translation_maps()
    figures = by_stem(text_figures(maps, words=True))
    weights = maps["encoder_self", 0][0].double().mean(0)  # (S, S) over pieces
    groups = [[0, 1, 2], [3], [4]]  # ▁un believ able | ▁cat | </s>
    expected = torch.stack([torch.stack([weights[q][:, k].sum(-1).mean() for k in groups]) for q in groups])
    ax = figures["encoder_self_0_mean"].figure.axes[0]
    np.testing.assert_allclose(heat(figures["encoder_self_0_mean"].figure), expected.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["unbelievable", "cat", "</s>"]


def test_a_single_head_map_has_no_grid_and_bert_merges_wordpieces():
    pieces = ["[CLS]", "un", "##believ", "##able", "[SEP]"]
    one_head = AttentionMap("rnn_source", 0, None, softmax(1, 1, 3, 5, seed=3))
    rnn = text_figures(AttentionMaps([one_head], {"target": [["a", "b", "</s>"]], "source": [SOURCE]}))
    assert [f.stem for f in rnn] == ["rnn_source_0_mean", "rnn_source_0_head_view"]
    bert = AttentionMaps([AttentionMap("bert", 0, (0, 1), softmax(1, 2, 5, 5))], {"tokens": [pieces]})
    ax = by_stem(text_figures(bert, words=True))["bert_0_mean"].figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["[CLS]", "unbelievable", "[SEP]"]


def rollout_by_hand(layers: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema 2020: A(l) = 0.5 mean_h W + 0.5 I, rolled as A(L) ... A(1)."""
    rolled = torch.eye(layers[0].shape[-1], dtype=torch.float64)
    for weights in layers:
        rolled = (0.5 * weights[0].double().mean(0) + 0.5 * torch.eye(weights.shape[-1], dtype=torch.float64)) @ rolled
    return rolled


def test_vit_figures_overlay_class_token_query_patch_and_rollout():
    maps = vit_maps()
    figures = by_stem(vit_figures(maps, IMAGE, query_patch=(-1, 0)))
    assert set(figures) == {"vit_2_class_token", "vit_2_patch_1_0", "vit_rollout"}
    last = maps["vit", -1][0].double()  # (H, N, N)
    size = IMAGE.shape[:2]
    cls = figures["vit_2_class_token"].figure
    assert [ax.get_title() for ax in cls.axes if ax.images] == ["head 0", "head 1", "mean"]
    np.testing.assert_allclose(heat(cls, 1), upsample_map(last[1, 0, 1:].reshape(2, 3), size), rtol=1e-5)
    np.testing.assert_allclose(heat(cls, 2), upsample_map(last[:, 0, 1:].mean(0).reshape(2, 3), size), rtol=1e-5)
    query = figures["vit_2_patch_1_0"].figure
    np.testing.assert_allclose(heat(query, 0), upsample_map(last[0, 1 + 3, 1:].reshape(2, 3), size), rtol=1e-5)
    rolled = rollout_by_hand([m.weights for m in maps])
    expected = upsample_map(rolled[0, 1:].reshape(2, 3), size)
    np.testing.assert_allclose(heat(figures["vit_rollout"].figure), expected, rtol=1e-5)


def test_vit_fusion_and_discard_reach_the_figures_and_bad_options_name_the_values():
    maps = vit_maps(layers=1)
    figures = by_stem(vit_figures(maps, IMAGE, fusion="max", discard_ratio=0.5))
    last = maps["vit", 0][0].double()
    assert "patch_1_1" in " ".join(figures)  # the centre of a 2x3 grid
    cls = figures["vit_0_class_token"].figure
    assert cls.axes[2].get_title() == "max"
    np.testing.assert_allclose(heat(cls, 2), upsample_map(last[:, 0, 1:].amax(0).reshape(2, 3), IMAGE.shape[:2]))
    assert "discard ratio 0.5" in figures["vit_rollout"].title
    with pytest.raises(ValueError, match=r"query patch \(2, 0\) does not exist: the patch grid is 2x3"):
        vit_figures(maps, IMAGE, query_patch=(2, 0))
    with pytest.raises(ValueError, match=r"fusion must be one of .*, got 'median'"):
        vit_figures(maps, IMAGE, fusion="median")
    with pytest.raises(ValueError, match=r"drawn over the input image; none was given"):
        report_figures(maps)
    with pytest.raises(ValueError, match="no attention maps"):
        report_figures(AttentionMaps())


def test_cnn_figures_show_each_blocks_mask_over_the_image_and_its_gates():
    maps = cnn_maps()
    figures = by_stem(cnn_figures(maps, IMAGE))
    assert set(figures) == {"spatial_masks", "se_gates"}
    masks = figures["spatial_masks"].figure
    assert [ax.get_title() for ax in masks.axes if ax.images] == ["block 0", "block 1"]
    for panel, layer in enumerate((0, 1)):
        expected = upsample_map(maps["spatial_mask", layer][0, 0], IMAGE.shape[:2])
        np.testing.assert_allclose(heat(masks, panel), expected, rtol=1e-6)
    strip = heat(figures["se_gates"].figure)  # (blocks, max C), NaN-padded
    np.testing.assert_allclose(strip[0, :8], maps["se_gate", 0][0].double().numpy())
    np.testing.assert_allclose(strip[1], maps["se_gate", 1][0].double().numpy())


def test_write_report_writes_pngs_of_the_figures_size_svgs_and_a_page_inlining_each(tmp_path):
    figures = report_figures(vit_maps(layers=1), IMAGE) + text_figures(cross_only())
    sizes = {f.stem: f.figure.get_size_inches() * f.figure.dpi for f in figures}  # pixels, before rounding
    written = write_report(tmp_path / "out" / "index.html", "a report", figures)
    assert written[0] == tmp_path / "out" / "index.html"
    assert sorted(p.name for p in written[1:]) == sorted(f"{s}.{e}" for s in sizes for e in ("png", "svg"))
    page = written[0].read_text(encoding="utf-8")
    inlined = [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    for figure in figures:
        png = tmp_path / "out" / f"{figure.stem}.png"
        with Image.open(png) as image:
            assert image.format == "PNG"
            np.testing.assert_allclose(image.size, sizes[figure.stem], atol=1)
        assert png.read_bytes() in inlined
        assert ET.parse(tmp_path / "out" / f"{figure.stem}.svg").getroot().tag.endswith("svg")
        assert f'href="{figure.stem}.png"' in page and f'href="{figure.stem}.svg"' in page
    assert len(inlined) == len(figures)


def test_japanese_tokens_draw_without_a_missing_glyph_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = text_figures(cross_only(), words=True)
        write_report(tmp_path / "index.html", "小説の注意", figures, lang="ja")
