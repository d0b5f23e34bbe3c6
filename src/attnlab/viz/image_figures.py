"""Static figures of attention over images: patch maps, CNN spatial masks and SE channel gates.

Each function takes plain arrays or tensors (and a PIL image or an array for the picture) and returns a
matplotlib ``Figure`` on the Agg canvas, made without pyplot; save it with ``fig.savefig(path)`` as PNG
or SVG. Maps are upsampled bilinearly from their grid to the image's size (:func:`upsample_map`).
The token figures (heatmaps, head grids, the head view) are in :mod:`attnlab.viz.figures`, which
re-exports these.

Shapes: (H, W) the image, (gh, gw) a ViT's patch grid, (h, w) a CNN block's feature map, C channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from attnlab.viz.canvas import as_array, new_figure, set_title
from attnlab.viz.fonts import label_font

__all__ = ["gate_strip", "mask_overlays", "overlay", "overlay_grid", "upsample_map"]


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
    fig = new_figure(4 * width / max(height, width) + 1, 4 * height / max(height, width), scale=1.0)
    ax = fig.add_subplot()
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
    mapped = ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    fig.colorbar(mapped, ax=ax)
    ax.set_axis_off()
    set_title(ax, title)
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
    maps = [as_array(m).astype(np.float64) for m in patch_maps]
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
    fig = new_figure(min(width, 48) / 2 + 2, 2 * len(rows))
    ax = fig.add_subplot()
    blank = colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    image = ax.imshow(matrix, cmap=blank, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(rows)), [str(n) for n in names], fontproperties=label_font(), parse_math=False)
    ax.set_xlabel("channel")
    fig.colorbar(image, ax=ax)
    set_title(ax, title)
    return fig


def upsample_map(patch_map, size: tuple[int, int]) -> np.ndarray:
    """``(gh, gw) -> (H, W)`` float32 by bilinear interpolation between patch centres (Pillow), edges held."""
    grid = as_array(patch_map).astype(np.float32)
    if grid.ndim != 2:
        raise ValueError(f"patch_map must be (gh, gw), got shape {grid.shape}")
    height, width = size
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR))


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
    fig = new_figure(cols * (side * width + 0.8), rows * (side * height + 0.4), scale=1.0)
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
        set_title(ax, name)
    if shared and maps:
        fig.colorbar(mapped, ax=axes[: len(maps)])
    return fig


def _check_names(names: Sequence[str], count: int, what: str) -> None:
    """An error naming both counts when there is not one name per panel."""
    if len(names) != count:
        raise ValueError(f"{len(names)} names given for {count} {what}: one name per panel")


def _squeeze(values, what: str, ndim: int) -> np.ndarray:
    """``values`` as a float array of ``ndim`` dims, leading dims of size 1 dropped, or an error naming its shape."""
    array = as_array(values).astype(np.float64)
    while array.ndim > ndim and array.shape[0] == 1:
        array = array[0]
    if array.ndim != ndim:
        expected = "(h, w)" if ndim == 2 else "(C,)"
        raise ValueError(f"each {what} must be {expected}, got shape {as_array(values).shape}")
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
