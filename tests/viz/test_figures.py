"""The figures hold what they were given: image arrays, lines, panels and labels, checked against the inputs."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.viz.figures import (
    MAX_LABELS,
    gate_strip,
    head_grid,
    head_view,
    heatmap,
    label_size,
    mask_overlays,
    overlay,
    overlay_grid,
    thin_labels,
    upsample_map,
)

TOKENS = ["the", "cat", "sat", "on", "the", "mat"]
SOURCE = ["le", "chat", "s'est", "assis"]


def tick_texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def saves(fig) -> None:
    for fmt in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt)
        assert buffer.tell() > 0


def test_heatmap_image_equals_the_weights_and_ticks_name_the_tokens():
    weights = torch.rand(len(TOKENS), len(SOURCE))
    fig = heatmap(weights, TOKENS, SOURCE, title="alignment")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), weights.numpy(), rtol=0, atol=1e-7)
    assert tick_texts(ax.get_yticklabels()) == TOKENS
    assert tick_texts(ax.get_xticklabels()) == SOURCE
    assert ax.get_title() == "alignment"
    assert ax.images[0].get_clim() == (0.0, pytest.approx(weights.max().item()))
    saves(fig)


def test_heatmap_of_self_attention_labels_both_axes_with_the_same_tokens():
    weights = np.random.default_rng(0).random((len(TOKENS), len(TOKENS)))
    ax = heatmap(weights, TOKENS).axes[0]
    assert tick_texts(ax.get_xticklabels()) == tick_texts(ax.get_yticklabels()) == TOKENS
    np.testing.assert_array_equal(ax.images[0].get_array(), weights)


def test_labels_thin_out_above_max_labels_and_the_map_keeps_every_token():
    tokens = [f"t{i}" for i in range(100)]
    weights = torch.rand(100, 100)
    ax = heatmap(weights, tokens).axes[0]
    shown = tick_texts(ax.get_xticklabels())
    step = -(-100 // MAX_LABELS)
    assert shown == tokens[::step] and len(shown) <= MAX_LABELS
    assert ax.images[0].get_array().shape == (100, 100)
    assert ax.get_xticklabels()[0].get_fontsize() == label_size(len(shown)) < label_size(len(TOKENS))


def test_thin_labels_keeps_all_up_to_the_limit():
    assert thin_labels(TOKENS, max_labels=6) == (list(range(6)), TOKENS)
    assert thin_labels(TOKENS, max_labels=4) == ([0, 2, 4], ["the", "sat", "the"])
    with pytest.raises(ValueError, match="max_labels must be at least 1, got 0"):
        thin_labels(TOKENS, max_labels=0)


def test_head_grid_panels_are_the_heads_then_their_mean_and_max():
    heads = torch.rand(3, len(TOKENS), len(SOURCE), dtype=torch.float64)
    fig = head_grid(heads, TOKENS, SOURCE, title="layer 2")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["head 0", "head 1", "head 2", "mean", "max"]
    expected = [*heads.numpy(), heads.mean(0).numpy(), heads.amax(0).numpy()]
    for ax, want in zip(panels, expected):
        np.testing.assert_allclose(ax.images[0].get_array(), want)
        assert ax.images[0].get_clim() == (0.0, pytest.approx(heads.max().item()))
    assert fig.get_suptitle() == "layer 2"
    assert tick_texts(panels[0].get_yticklabels()) == TOKENS  # outer column labelled
    assert tick_texts(panels[1].get_yticklabels()) == []
    saves(fig)


def test_head_view_draws_one_line_per_pair_above_the_threshold():
    weights = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.04, 0.06, 0.5, 0.4], [0.25, 0.25, 0.25, 0.25]])
    fig = head_view(weights, ["a", "b", "c"], SOURCE, threshold=0.05)
    ax = fig.axes[0]
    (lines,) = ax.collections
    pairs = (weights > 0.05).nonzero().tolist()
    assert len(lines.get_segments()) == len(pairs) == 10
    ends = {((s[0][0], -s[0][1]), (s[1][0], -s[1][1])) for s in (seg.tolist() for seg in lines.get_segments())}
    assert ends == {((0.0, i), (1.0, j)) for i, j in pairs}
    strength = np.array([weights[i, j].item() for i, j in pairs]) / 0.7
    np.testing.assert_allclose(lines.get_linewidths(), 4.0 * strength, rtol=1e-6)
    np.testing.assert_allclose(lines.get_colors()[:, 3], strength, rtol=1e-6)
    assert [t.get_text() for t in ax.texts] == ["a", "b", "c", *SOURCE]
    saves(fig)


def test_head_view_of_self_attention_uses_the_tokens_on_both_sides():
    weights = torch.eye(len(TOKENS))
    ax = head_view(weights, TOKENS).axes[0]
    assert len(ax.collections[0].get_segments()) == len(TOKENS)
    assert [t.get_text() for t in ax.texts] == TOKENS + TOKENS


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(1).integers(0, 256, (28, 42, 3), dtype=np.uint8),
        np.random.default_rng(2).random((28, 42)),
        Image.new("RGB", (42, 28), (200, 30, 30)),
        Image.new("P", (42, 28)),
    ],
    ids=["rgb-array", "gray-array", "pil-rgb", "pil-palette"],
)
def test_overlay_draws_the_image_and_the_map_upsampled_to_its_size(image):
    patch_map = torch.rand(4, 6)
    fig = overlay(image, patch_map, title="rollout")
    ax = fig.axes[0]
    shown, heat = ax.images
    assert shown.get_array().shape[:2] == (28, 42)
    assert heat.get_array().shape == (28, 42)
    np.testing.assert_allclose(heat.get_array(), upsample_map(patch_map, (28, 42)))
    assert heat.get_extent() == [-0.5, 41.5, 27.5, -0.5] == list(shown.get_extent())
    saves(fig)


@pytest.mark.parametrize("size", [(28, 42), (37, 50), (4, 6)])
def test_upsample_map_is_bilinear_between_patch_centres_as_torch_interpolates(size):
    grid = torch.rand(4, 6)
    reference = torch.nn.functional.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(upsample_map(grid, size), reference[0, 0].numpy(), atol=1e-6)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"weights of shape \(3, 4\) do not match 6 row and 6 column labels"):
        heatmap(torch.rand(3, 4), TOKENS)
    with pytest.raises(ValueError, match=r"weights of shape \(6, 4\) are not \(H, 6, 6\)"):
        head_grid(torch.rand(6, 4), TOKENS)
    with pytest.raises(ValueError, match=r"weights of shape \(2, 2\) do not match 6 row and 4 column labels"):
        head_view(torch.rand(2, 2), TOKENS, SOURCE)
    with pytest.raises(ValueError, match=r"image must be .* got shape \(5, 5, 2\)"):
        overlay(np.zeros((5, 5, 2)), torch.rand(2, 2))
    with pytest.raises(ValueError, match=r"patch_map must be \(gh, gw\), got shape \(1, 2, 2\)"):
        overlay(np.zeros((5, 5)), torch.rand(1, 2, 2))


def panels_of(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def grid_place(ax) -> tuple[int, int]:
    spec = ax.get_subplotspec()
    return spec.rowspan.start, spec.colspan.start


def test_overlay_grid_draws_one_panel_per_map_each_over_the_image():
    image = np.random.default_rng(3).integers(0, 256, (28, 42, 3), dtype=np.uint8)
    heads = torch.rand(3, 4, 6)
    maps = [*heads, heads.mean(0)]
    names = ["head 0", "head 1", "head 2", "mean"]
    fig = overlay_grid(image, maps, names, cols=3, alpha=0.4)
    panels = panels_of(fig)
    assert [ax.get_title() for ax in panels] == names
    assert [grid_place(ax) for ax in panels] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    for ax, patch_map in zip(panels, maps):
        shown, heat = ax.images
        np.testing.assert_array_equal(shown.get_array(), image)
        np.testing.assert_allclose(heat.get_array(), upsample_map(patch_map, (28, 42)))
        assert heat.get_clim() == pytest.approx((patch_map.min().item(), patch_map.max().item()))
        assert heat.get_alpha() == 0.4
    saves(fig)


def test_overlay_grid_takes_a_stack_of_maps_and_defaults_to_rows_of_four():
    maps = np.random.default_rng(4).random((6, 2, 3))
    fig = overlay_grid(np.zeros((10, 15)), maps, [f"head {h}" for h in range(6)])
    panels = panels_of(fig)
    assert len(panels) == 6
    assert [grid_place(ax) for ax in panels] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    for ax, patch_map in zip(panels, maps):
        np.testing.assert_allclose(ax.images[1].get_array(), upsample_map(patch_map, (10, 15)))


def test_mask_overlays_upsample_each_block_mask_to_the_image_on_one_scale():
    image = Image.new("RGB", (32, 24), (10, 200, 10))
    masks = [torch.rand(1, 1, 12, 16), torch.rand(6, 8), np.random.default_rng(5).random((3, 4))]
    names = ["block 0", "block 1", "block 2"]
    fig = mask_overlays(image, masks, names)
    panels = panels_of(fig)
    assert [ax.get_title() for ax in panels] == names
    for ax, mask in zip(panels, masks):
        shown, heat = ax.images
        np.testing.assert_array_equal(shown.get_array(), np.asarray(image))
        np.testing.assert_allclose(heat.get_array(), upsample_map(np.squeeze(np.asarray(mask)), (24, 32)))
        assert heat.get_clim() == (0.0, 1.0)
    assert len(fig.axes) == len(masks) + 1  # the panels and one shared colour bar
    saves(fig)


def test_gate_strip_rows_are_the_blocks_padded_with_blanks():
    gates = [torch.rand(1, 4), torch.rand(8), np.random.default_rng(6).random(6)]
    names = ["block 0", "block 1", "block 2"]
    fig = gate_strip(gates, names, title="SE gates")
    ax = fig.axes[0]
    (image,) = ax.images
    expected = np.full((3, 8), np.nan)
    for row, gate in enumerate(gates):
        flat = np.asarray(gate).reshape(-1)
        expected[row, : len(flat)] = flat
    np.testing.assert_allclose(np.ma.filled(image.get_array().astype(np.float64), np.nan), expected, rtol=1e-7)
    assert tick_texts(ax.get_yticklabels()) == names
    assert ax.get_title() == "SE gates"
    assert image.get_clim() == (0.0, 1.0)
    saves(fig)


def test_gate_strip_draws_the_padding_as_the_background_and_a_gate_in_its_colour():
    fig = gate_strip([[0.25, 0.75], [0.5]], ["a", "b"])
    ax = fig.axes[0]
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())  # (rows, cols, 4), row 0 at the top

    def pixel_at(col: float, row: float) -> np.ndarray:
        x, y = ax.transData.transform((col, row))
        return pixels[pixels.shape[0] - 1 - round(y), round(x)]

    np.testing.assert_array_equal(pixel_at(1, 1), [255, 255, 255, 255])  # padding: the white background
    gate = np.round(np.array(ax.images[0].cmap(0.5)) * 255)
    np.testing.assert_allclose(pixel_at(0, 1), gate, atol=1)


def test_bad_panels_are_named():
    with pytest.raises(ValueError, match=r"1 names given for 2 maps: one name per panel"):
        overlay_grid(np.zeros((4, 4)), torch.rand(2, 2, 2), ["head 0"])
    with pytest.raises(ValueError, match=r"cols must be at least 1, got 0"):
        overlay_grid(np.zeros((4, 4)), torch.rand(2, 2, 2), ["a", "b"], cols=0)
    with pytest.raises(ValueError, match=r"each mask must be \(h, w\), got shape \(2, 3, 3\)"):
        mask_overlays(np.zeros((4, 4)), [torch.rand(2, 3, 3)], ["block 0"])
    with pytest.raises(ValueError, match=r"each gate must be \(C,\), got shape \(2, 3\)"):
        gate_strip([torch.rand(2, 3)], ["block 0"])
    with pytest.raises(ValueError, match=r"2 names given for 1 gates"):
        gate_strip([torch.rand(3)], ["a", "b"])


def test_japanese_panel_names_draw_without_a_missing_glyph_warning():
    names = ["第一層", "第二層"]
    figures = [
        overlay_grid(np.zeros((8, 8)), torch.rand(2, 2, 2), names),
        mask_overlays(np.zeros((8, 8)), [torch.rand(4, 4), torch.rand(2, 2)], names),
        gate_strip([torch.rand(4), torch.rand(2)], names, title="チャネル注意"),
    ]
    for fig in figures:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.savefig(io.BytesIO(), format="png")
        assert not [w for w in caught if "missing from font" in str(w.message)]
