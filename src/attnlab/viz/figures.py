"""Static figures of attention maps over tokens: heatmaps, all heads of a layer, the head view.

Each function takes plain arrays or tensors and returns a matplotlib ``Figure`` on the Agg canvas, made
without pyplot (no global figure list, no rcParams change); save it with ``fig.savefig(path)`` as PNG or
SVG. Token labels use ``viz.fonts.label_font``, so Japanese and Chinese (and Korean, where a Hangul font
is installed) draw as text, not boxes, and are never read as mathtext (``$`` stays a dollar sign).

Long inputs: every token is labelled up to ``max_labels`` (default 40) tokens; above that only every
k-th token is, ``k = ceil(L / max_labels)``, starting at the first, while the map itself keeps every
token. The label size shrinks from 10 pt (up to 20 labels shown) to 6 pt (from 34 on), and the figure
grows with the number of tokens up to 16 inches a side.

The figures over images (patch-map overlays, CNN spatial masks, SE gates) are in
:mod:`attnlab.viz.image_figures` and re-exported here, so ``from attnlab.viz.figures import overlay``
keeps working.

Shapes: Lq queries (rows), Lk keys (columns), H heads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from attnlab.viz.canvas import as_array, new_figure, set_title
from attnlab.viz.fonts import label_font
from attnlab.viz.image_figures import gate_strip, mask_overlays, overlay, overlay_grid, upsample_map

__all__ = [
    "LINE_WIDTH",
    "MAX_LABELS",
    "gate_strip",
    "head_grid",
    "head_view",
    "heatmap",
    "label_size",
    "mask_overlays",
    "overlay",
    "overlay_grid",
    "thin_labels",
    "upsample_map",
]

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
    fig = new_figure(len(col_labels) + 2, len(row_labels))
    ax = fig.add_subplot()
    image = ax.imshow(array, cmap=cmap, vmin=0.0, vmax=max(float(array.max()), 1e-12), aspect="auto")
    _label_axes(ax, row_labels, col_labels, max_labels)
    fig.colorbar(image, ax=ax)
    set_title(ax, title)
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
    fig = new_figure(cols * side, rows * side, scale=1.0)
    vmax = max(float(heads.max()), 1e-12)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[len(panels) :]:
        ax.remove()
    for index, (ax, panel) in enumerate(zip(axes, panels)):
        image = ax.imshow(panel, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
        outer_left, outer_bottom = index % cols == 0, index + cols >= len(panels)
        _label_axes(ax, row_labels if outer_left else (), col_labels if outer_bottom else (), max_labels)
        set_title(ax, names[index])
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
    fig = new_figure(6, max(len(left_labels), len(right_labels)))
    ax = fig.add_subplot()
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=LINE_WIDTH * strength))
    _column_labels(ax, left_labels, 0.0, "right", max_labels)
    _column_labels(ax, right_labels, 1.0, "left", max_labels)
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(-max(len(left_labels), len(right_labels)) + 0.5, 0.5)
    ax.set_axis_off()
    set_title(ax, title)
    return fig


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


def _matrix(weights, rows: int, cols: int) -> np.ndarray:
    """``weights`` as an ``(rows, cols)`` float array, or an error naming both shapes."""
    array = as_array(weights).astype(np.float64)
    if array.shape != (rows, cols):
        raise ValueError(f"weights of shape {array.shape} do not match {rows} row and {cols} column labels")
    return array


def _stack(weights, rows: int, cols: int) -> np.ndarray:
    """``weights`` as an ``(H, rows, cols)`` float array, or an error naming both shapes."""
    array = as_array(weights).astype(np.float64)
    if array.ndim != 3 or array.shape[1:] != (rows, cols):
        raise ValueError(f"weights of shape {array.shape} are not (H, {rows}, {cols}) for the labels given")
    return array
