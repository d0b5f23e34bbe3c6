"""Static figures of attention maps: heatmaps, all heads of a layer, the head view, maps over images.

Each function takes plain arrays or tensors and returns a matplotlib ``Figure`` on the Agg canvas, made
without pyplot (no global figure list, no rcParams change); save it with ``fig.savefig(path)`` as PNG or
SVG. Token labels use ``viz.fonts.label_font``, so Japanese and Chinese (and Korean, where a Hangul font
is installed) draw as text, not boxes, and are never read as mathtext (``$`` stays a dollar sign).

Long inputs: every token is labelled up to ``max_labels`` (default 40) tokens; above that only every
k-th token is, ``k = ceil(L / max_labels)``, starting at the first, while the map itself keeps every
token. The label size shrinks from 10 pt (up to 20 labels shown) to 6 pt (from 34 on), and the figure
grows with the number of tokens up to 16 inches a side.

Shapes: Lq queries (rows), Lk keys (columns), H heads, (gh, gw) a ViT's patch grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from attnlab.viz.fonts import label_font

MAX_LABELS = 40
LINE_WIDTH = 4.0


def heatmap(
    weights,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    max_labels: int = MAX_LABELS,
    cmap: str = "viridis",
) -> Figure:
    """One attention map as a heatmap: an alignment (source × target) or a self-attention map.

    Args:
        weights: ``(Lq, Lk)`` array or tensor, e.g. one head or the head mean.
        row_labels: the Lq query tokens, top to bottom.
        col_labels: the Lk key tokens, left to right (the row labels when None: self-attention).
        title: drawn above the map.
        max_labels: most tokens labelled per axis before labels thin out (module docstring).
        cmap: matplotlib colormap name.

    Returns:
        The figure: one axes whose image holds ``weights`` as given, and a colour bar.
    """
    col_labels = row_labels if col_labels is None else col_labels
    array = _matrix(weights, len(row_labels), len(col_labels))
    fig = _figure(len(col_labels) + 2, len(row_labels))
    ax = fig.add_subplot()
    image = ax.imshow(array, cmap=cmap, vmin=0.0, vmax=max(float(array.max()), 1e-12), aspect="auto")
    _label_axes(ax, row_labels, col_labels, max_labels)
    fig.colorbar(image, ax=ax)
    _title(ax, title)
    return fig


def head_grid(
    weights,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    max_labels: int = MAX_LABELS,
    cmap: str = "viridis",
) -> Figure:
    """All heads of one layer side by side, then their mean and their max, on one colour scale.

    Args:
        weights: ``(H, Lq, Lk)`` array or tensor.
        row_labels, col_labels, max_labels, cmap: as for ``heatmap``; labels sit on the outer panels.
        title: drawn above the grid.

    Returns:
        The figure: H + 2 panels titled "head 0" … "head H-1", "mean", "max", in rows of up to four.
    """
    col_labels = row_labels if col_labels is None else col_labels
    heads = _stack(weights, len(row_labels), len(col_labels))  # (H, Lq, Lk)
    panels = [*heads, heads.mean(axis=0), heads.max(axis=0)]
    names = [f"head {h}" for h in range(len(heads))] + ["mean", "max"]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    side = min(16.0, 0.25 * max(len(row_labels), len(col_labels)) + 2.5)
    fig = _figure(cols * side, rows * side, scale=1.0)
    vmax = max(float(heads.max()), 1e-12)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[len(panels) :]:
        ax.remove()
    for index, (ax, panel) in enumerate(zip(axes, panels)):
        image = ax.imshow(panel, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
        outer_left, outer_bottom = index % cols == 0, index + cols >= len(panels)
        _label_axes(ax, row_labels if outer_left else (), col_labels if outer_bottom else (), max_labels)
        _title(ax, names[index])
    fig.colorbar(image, ax=axes[: len(panels)])
    if title:
        fig.suptitle(title, fontproperties=label_font(), parse_math=False)
    return fig


def head_view(
    weights,
    left_labels: Sequence[str],
    right_labels: Sequence[str] | None = None,
    *,
    threshold: float = 0.05,
    title: str | None = None,
    max_labels: int = MAX_LABELS,
    color: str = "tab:blue",
) -> Figure:
    """BertViz's head view as a static figure: queries on the left, keys on the right, joined by lines.

    Args:
        weights: ``(Lq, Lk)``: one head, or a fusion of heads.
        left_labels: the Lq query tokens, top to bottom.
        right_labels: the Lk key tokens (the left labels when None: self-attention).
        threshold: pairs with a weight at or below it get no line.
        title: drawn above the columns.
        max_labels: most tokens labelled per column before labels thin out; every line is drawn.
        color: the lines' colour; width and opacity grow with the weight, up to the map's largest.

    Returns:
        The figure: one axes holding one ``LineCollection`` with a segment from ``(0, -i)`` to
        ``(1, -j)`` per pair ``(i, j)`` whose weight exceeds ``threshold``.
    """
    right_labels = left_labels if right_labels is None else right_labels
    array = _matrix(weights, len(left_labels), len(right_labels))
    queries, keys = np.nonzero(array > threshold)
    strength = array[queries, keys] / max(float(array.max()), 1e-12)  # (pairs,) in (0, 1]
    segments = [[(0.0, -float(i)), (1.0, -float(j))] for i, j in zip(queries, keys)]
    colors = [to_rgba(color, alpha=float(s)) for s in strength]
    fig = _figure(6, max(len(left_labels), len(right_labels)))
    ax = fig.add_subplot()
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=LINE_WIDTH * strength))
    _column_labels(ax, left_labels, 0.0, "right", max_labels)
    _column_labels(ax, right_labels, 1.0, "left", max_labels)
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(-max(len(left_labels), len(right_labels)) + 0.5, 0.5)
    ax.set_axis_off()
    _title(ax, title)
    return fig


def overlay(image, patch_map, *, alpha: float = 0.5, cmap: str = "turbo", title: str | None = None) -> Figure:
    """A patch map (e.g. ``rollout.class_token_map``) upsampled to an image and drawn over it.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array (C in 1, 3, 4) or a PIL image.
        patch_map: ``(gh, gw)`` array or tensor, one value per patch.
        alpha: opacity of the map over the image.
        cmap: colormap of the map.
        title: drawn above the image.

    Returns:
        The figure: one axes with the image, then the map upsampled bilinearly to ``(H, W)``.
    """
    pixels = _image_array(image)
    heat = upsample_map(patch_map, pixels.shape[:2])  # (H, W)
    height, width = pixels.shape[:2]
    fig = _figure(4 * width / max(height, width) + 1, 4 * height / max(height, width), scale=1.0)
    ax = fig.add_subplot()
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
    mapped = ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    fig.colorbar(mapped, ax=ax)
    ax.set_axis_off()
    _title(ax, title)
    return fig


def overlay_grid(
    image, patch_maps, names: Sequence[str], *, cols: int | None = None, alpha: float = 0.5, cmap: str = "turbo"
) -> Figure:
    """Several patch maps of one image (per head, then fused) overlaid on it, one panel each, in one figure.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array (C in 1, 3, 4) or a PIL image.
        patch_maps: a sequence of ``(gh, gw)`` maps, or one ``(N, gh, gw)`` array or tensor.
        names: one panel title per map, e.g. ``["head 0", …, "mean"]``.
        cols: panels per row (up to four when None).
        alpha: opacity of the maps over the image.
        cmap: colormap of the maps.

    Returns:
        The figure: one axes per map, in order, holding the image and then the map upsampled bilinearly
        to ``(H, W)``; each map's colours span its own range, from its minimum to its maximum.
    """
    maps = [_as_array(m).astype(np.float64) for m in patch_maps]
    limits = [(float(m.min()), float(m.max())) if m.size else (0.0, 1.0) for m in maps]
    return _overlay_panels(image, maps, names, limits, cols=cols, alpha=alpha, cmap=cmap)


def mask_overlays(
    image, masks, names: Sequence[str], *, cols: int | None = None, alpha: float = 0.5, cmap: str = "turbo"
) -> Figure:
    """The spatial attention masks of a CNN's blocks over the input image, one panel per block.

    Woo et al., "CBAM" (ECCV 2018), eq. 3: a block's mask ``M = sigmoid(...)`` weighs each position of its
    ``(h, w)`` feature map; blocks deeper in the network have coarser maps, all drawn at the image's size.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array (C in 1, 3, 4) or a PIL image.
        masks: one mask per block, each ``(h, w)`` (leading dims of size 1, as in a captured
            ``(1, 1, h, w)``, are dropped); sizes may differ between blocks.
        names: one panel title per block.
        cols, alpha, cmap: as for ``overlay_grid``.

    Returns:
        The figure: one axes per block holding the image and then its mask upsampled bilinearly to
        ``(H, W)``, all on the sigmoid's fixed scale 0 to 1, with one colour bar.
    """
    maps = [_squeeze(mask, "mask", 2) for mask in masks]
    return _overlay_panels(image, maps, names, [(0.0, 1.0)] * len(maps), cols=cols, alpha=alpha, cmap=cmap)


def gate_strip(gates, names: Sequence[str], *, cmap: str = "viridis", title: str | None = None) -> Figure:
    """The SE channel gates of each block as one heat strip per block.

    Hu et al., "Squeeze-and-Excitation Networks" (CVPR 2018), eq. 3: ``s = sigmoid(W_2 ReLU(W_1 z))``,
    one gate in 0 to 1 per channel. Blocks may have different channel counts: shorter rows are padded on
    the right with NaN, which the colormap draws fully transparent, so padding shows blank (the figure's
    background), never as a gate value.

    Args:
        gates: one gate vector per block, each ``(C,)`` (leading dims of size 1, as in a captured
            ``(1, C)``, are dropped).
        names: one row label per block, top to bottom.
        cmap: colormap of the gates, on the fixed scale 0 to 1.
        title: drawn above the strips.

    Returns:
        The figure: one axes whose image is the ``(blocks, max C)`` matrix of the gates, NaN-padded, rows
        labelled with ``names``, and a colour bar.
    """
    rows = [_squeeze(gate, "gate", 1) for gate in gates]
    _check_names(names, len(rows), "gates")
    width = max((len(row) for row in rows), default=0)
    matrix = np.full((len(rows), width), np.nan)  # (blocks, max C)
    for index, row in enumerate(rows):
        matrix[index, : len(row)] = row
    fig = _figure(min(width, 48) / 2 + 2, 2 * len(rows))
    ax = fig.add_subplot()
    blank = colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    image = ax.imshow(matrix, cmap=blank, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(rows)), [str(n) for n in names], fontproperties=label_font(), parse_math=False)
    ax.set_xlabel("channel")
    fig.colorbar(image, ax=ax)
    _title(ax, title)
    return fig


def upsample_map(patch_map, size: tuple[int, int]) -> np.ndarray:
    """``(gh, gw) -> (H, W)`` float32 by bilinear interpolation between patch centres (Pillow), edges held."""
    grid = _as_array(patch_map).astype(np.float32)
    if grid.ndim != 2:
        raise ValueError(f"patch_map must be (gh, gw), got shape {grid.shape}")
    height, width = size
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))


def thin_labels(labels: Sequence[str], max_labels: int = MAX_LABELS) -> tuple[list[int], list[str]]:
    """Positions and texts of the labels shown: all of them, or every k-th, ``k = ceil(L / max_labels)``."""
    if max_labels < 1:
        raise ValueError(f"max_labels must be at least 1, got {max_labels}")
    step = max(1, math.ceil(len(labels) / max_labels))
    positions = list(range(0, len(labels), step))
    return positions, [str(labels[i]) for i in positions]


def label_size(shown: int) -> float:
    """Label size in points for ``shown`` labels along one axis: 10 pt up to 20, down to 6 pt from 34."""
    return float(np.clip(200.0 / max(shown, 1), 6.0, 10.0))


def _figure(width_tokens: float, height_tokens: float, scale: float = 0.25) -> Figure:
    """A constrained-layout figure on the Agg canvas, sized by tokens (``scale`` inches each)."""
    width = float(np.clip(scale * width_tokens + 2.0, 4.0, 16.0))
    height = float(np.clip(scale * height_tokens + 1.5, 3.0, 16.0))
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _overlay_panels(
    image,
    maps: Sequence[np.ndarray],
    names: Sequence[str],
    limits: Sequence[tuple[float, float]],
    *,
    cols: int | None,
    alpha: float,
    cmap: str,
) -> Figure:
    """One panel per map: the image, then the map upsampled over it on its colour limits."""
    _check_names(names, len(maps), "maps")
    pixels = _image_array(image)
    height, width = pixels.shape[:2]
    cols = min(4, max(len(maps), 1)) if cols is None else cols
    if cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}")
    rows = max(1, math.ceil(len(maps) / cols))
    side = 3.0 / max(height, width)
    fig = _figure(cols * (side * width + 0.8), rows * (side * height + 0.4), scale=1.0)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[len(maps) :]:
        ax.remove()
    shared = len(set(limits)) == 1
    for ax, patch_map, name, (low, high) in zip(axes, maps, names, limits):
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
        heat = upsample_map(patch_map, (height, width))  # (H, W)
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
        mapped = ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=low, vmax=high, extent=extent)
        if not shared:
            fig.colorbar(mapped, ax=ax)
        ax.set_axis_off()
        _title(ax, name)
    if shared and maps:
        fig.colorbar(mapped, ax=axes[: len(maps)])
    return fig


def _check_names(names: Sequence[str], count: int, what: str) -> None:
    """An error naming both counts when there is not one name per panel."""
    if len(names) != count:
        raise ValueError(f"{len(names)} names given for {count} {what}: one name per panel")


def _squeeze(values, what: str, ndim: int) -> np.ndarray:
    """``values`` as a float array of ``ndim`` dims, leading dims of size 1 dropped, or an error naming its shape."""
    array = _as_array(values).astype(np.float64)
    while array.ndim > ndim and array.shape[0] == 1:
        array = array[0]
    if array.ndim != ndim:
        expected = "(h, w)" if ndim == 2 else "(C,)"
        raise ValueError(f"each {what} must be {expected}, got shape {_as_array(values).shape}")
    return array


def _label_axes(ax: Axes, row_labels: Sequence[str], col_labels: Sequence[str], max_labels: int) -> None:
    """Key labels under the map (vertical), query labels to its left, thinned above ``max_labels``."""
    cols, col_text = thin_labels(col_labels, max_labels)
    rows, row_text = thin_labels(row_labels, max_labels)
    ax.set_xticks(cols, col_text, rotation=90, fontproperties=label_font(label_size(len(cols))), parse_math=False)
    ax.set_yticks(rows, row_text, fontproperties=label_font(label_size(len(rows))), parse_math=False)


def _column_labels(ax: Axes, labels: Sequence[str], x: float, align: str, max_labels: int) -> None:
    """One column of the head view's token labels at ``x``, aligned towards the lines."""
    positions, texts = thin_labels(labels, max_labels)
    font = label_font(label_size(len(positions)))
    offset = -0.05 if align == "right" else 0.05
    for position, text in zip(positions, texts):
        ax.text(x + offset, -position, text, ha=align, va="center", fontproperties=font, parse_math=False)


def _title(ax: Axes, title: str | None) -> None:
    """Set the title in the label font, when there is one."""
    if title:
        ax.set_title(title, fontproperties=label_font(), parse_math=False)


def _as_array(values) -> np.ndarray:
    """A NumPy array of a tensor (detached, on the CPU) or of anything ``np.asarray`` takes."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().float().numpy()
    return np.asarray(values)


def _matrix(weights, rows: int, cols: int) -> np.ndarray:
    """``weights`` as an ``(rows, cols)`` float array, or an error naming both shapes."""
    array = _as_array(weights).astype(np.float64)
    if array.shape != (rows, cols):
        raise ValueError(f"weights of shape {array.shape} do not match {rows} row and {cols} column labels")
    return array


def _stack(weights, rows: int, cols: int) -> np.ndarray:
    """``weights`` as an ``(H, rows, cols)`` float array, or an error naming both shapes."""
    array = _as_array(weights).astype(np.float64)
    if array.ndim != 3 or array.shape[1:] != (rows, cols):
        raise ValueError(f"weights of shape {array.shape} are not (H, {rows}, {cols}) for the labels given")
    return array


def _image_array(image) -> np.ndarray:
    """An ``(H, W)`` or ``(H, W, C)`` array of a PIL image or an array, or an error naming the shape."""
    if isinstance(image, Image.Image) and image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1, 3, 4, got shape {pixels.shape}")
    return pixels
