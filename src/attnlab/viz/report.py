"""The figures a user wants of one item's ``AttentionMaps``, and one page that holds them all.

``report_figures`` chooses by the kinds captured:

- text (``encoder_self``, ``decoder_self``, ``cross``, ``rnn_source``, ``bert``): per map, the head-mean
  heatmap (an alignment for ``cross`` / ``rnn_source``, a self-attention map for the others) and the grid of
  its heads with their mean and max (maps of more than one head); per kind, the head view of its last layer.
  Tokens are the pieces, or words (``words=True``: Clark et al. 2019, ``viz.words.merge_pieces``).
- ViT (``vit``): of the last layer captured, the class token's attention to the patches per head and fused,
  and the attention of one query patch per head and fused; then the rollout of all layers captured (Abnar &
  Zuidema 2020, ``viz.rollout``); each overlaid on the image.
- CNN (``spatial_mask``, ``se_gate``): the spatial mask of each block over the image and the SE gates of
  each block as one strip.

Each figure comes as a ``ReportFigure(stem, title, figure)``; ``write_report`` writes them as ``STEM.png``,
``STEM.svg`` and one self-contained ``index.html`` (``viz.page.write_page``).

Shapes: H heads, Lq / Lk query / key tokens, N tokens of a ViT (prefix then gh x gw patches).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from matplotlib.figure import Figure
from torch import Tensor

from attnlab.viz.figures import gate_strip, head_grid, head_view, heatmap, mask_overlays, overlay, overlay_grid
from attnlab.viz.maps import AttentionMap, AttentionMaps
from attnlab.viz.page import PageFigure, Section, write_page
from attnlab.viz.rollout import HEAD_FUSIONS, attention_rollout, class_token_map
from attnlab.viz.words import merge_pieces

__all__ = ["ReportFigure", "cnn_figures", "report_figures", "text_figures", "vit_figures", "write_report"]

TEXT_KINDS = ("encoder_self", "decoder_self", "cross", "rnn_source", "bert")
IMAGE_KINDS = ("vit", "spatial_mask", "se_gate")
TITLES = {
    "encoder_self": "encoder self-attention",
    "decoder_self": "decoder self-attention",
    "cross": "source-target alignment (cross-attention)",
    "rnn_source": "source-target alignment (RNN attention)",
    "bert": "self-attention",
}


class ReportFigure(NamedTuple):
    """One figure of a report: its file stem (``STEM.png``, ``STEM.svg``), its title, the figure."""

    stem: str
    title: str
    figure: Figure


def report_figures(
    maps: AttentionMaps,
    image=None,
    *,
    words: bool = False,
    fusion: str = "mean",
    discard_ratio: float = 0.0,
    query_patch: tuple[int, int] | None = None,
) -> list[ReportFigure]:
    """The figures of one item's maps, chosen by the kinds captured (module docstring).

    Args:
        maps: the maps of one item (batch dim 1), e.g. ``Translation.attention`` or ``Classification.attention``.
        image: the input image, needed for a ViT's or CNN's maps: ``(H, W[, C])`` array or Pillow image.
        words: text maps over words rather than pieces.
        fusion: how a ViT's heads fuse, ``"mean"``, ``"max"`` or ``"min"``.
        discard_ratio: rollout's discard ratio, in [0, 1).
        query_patch: ``(row, col)`` of the ViT query patch shown (negative from the end); None: the centre.

    Returns:
        The figures, text ones first, in capture order of their kinds.

    Raises:
        ValueError: no maps, image maps without an image, or an option out of range (named).
    """
    if not len(maps):
        raise ValueError("there are no attention maps to draw (nothing was captured)")
    figures = text_figures(maps, words=words) if set(maps.kinds) & set(TEXT_KINDS) else []
    if set(maps.kinds) & set(IMAGE_KINDS) and image is None:
        raise ValueError(f"maps of kinds {maps.kinds} are drawn over the input image; none was given")
    if "vit" in maps.kinds:
        figures += vit_figures(maps, image, fusion=fusion, discard_ratio=discard_ratio, query_patch=query_patch)
    if {"spatial_mask", "se_gate"} & set(maps.kinds):
        figures += cnn_figures(maps, image)
    return figures


def text_figures(maps: AttentionMaps, *, words: bool = False) -> list[ReportFigure]:
    """Per text map its head-mean heatmap and head grid, per text kind the head view of its last layer."""
    figures = []
    for kind in (k for k in maps.kinds if k in TEXT_KINDS):
        for layer in maps.layers(kind):
            found = maps.get(kind, layer)
            weights, rows, cols = _text_map(maps, found, words)  # (H, Lq, Lk)
            name = f"{TITLES[kind]}, layer {layer}"
            figures.append(ReportFigure(f"{kind}_{layer}_mean", f"{name}, {_heads(found)}", _mean(weights, rows, cols)))
            if weights.shape[0] > 1:
                grid = head_grid(weights, rows, cols, title=name)
                figures.append(ReportFigure(f"{kind}_{layer}_heads", f"{name}, each head", grid))
        last = maps.get(kind, -1)
        weights, rows, cols = _text_map(maps, last, words)
        title = f"head view: {TITLES[kind]}, layer {last.layer}, {_heads(last)}"
        figures.append(ReportFigure(f"{kind}_{last.layer}_head_view", title, head_view(weights.mean(0), rows, cols)))
    return figures


def vit_figures(
    maps: AttentionMaps,
    image,
    *,
    fusion: str = "mean",
    discard_ratio: float = 0.0,
    query_patch: tuple[int, int] | None = None,
) -> list[ReportFigure]:
    """A ViT's class-token map and query-patch map (last layer captured) and its rollout, over the image."""
    if fusion not in HEAD_FUSIONS:
        raise ValueError(f"fusion must be one of {HEAD_FUSIONS}, got {fusion!r}")
    if maps.grid is None:
        raise ValueError("the ViT maps carry no patch grid (AttentionMaps.grid): cannot place patches on the image")
    gh, gw = maps.grid
    prefix = maps.prefix_tokens
    last = maps.get("vit", -1)
    weights = last.weights[0].float()  # (H, N, N)
    names = [f"head {h}" for h in _head_ids(last)] + [fusion]
    figures = []
    if prefix == 1:  # class_token_map and rollout read token 0 as the class token
        per_head = class_token_map(weights, (gh, gw))  # (H, gh, gw)
        panels = overlay_grid(image, [*per_head, _fuse(per_head, fusion)], names)
        figures.append(ReportFigure(f"vit_{last.layer}_class_token", f"class token, layer {last.layer}", panels))
    row, col = _query_patch(query_patch, gh, gw)
    query = prefix + row * gw + col
    per_head = weights[:, query, prefix:].reshape(-1, gh, gw)  # (H, gh, gw)
    panels = overlay_grid(image, [*per_head, _fuse(per_head, fusion)], names)
    title = f"query patch ({row}, {col}), layer {last.layer}"
    figures.append(ReportFigure(f"vit_{last.layer}_patch_{row}_{col}", title, panels))
    if prefix == 1:
        figures.append(_rollout(maps, image, fusion, discard_ratio))
    return figures


def cnn_figures(maps: AttentionMaps, image) -> list[ReportFigure]:
    """A CNN's spatial masks per block over the image, and its SE gates per block as one strip."""
    figures = []
    masks = maps.select("spatial_mask")
    if masks:
        names = [f"block {m.layer}" for m in masks]
        panels = mask_overlays(image, [m.weights[0] for m in masks], names)
        figures.append(ReportFigure("spatial_masks", "spatial attention mask of each block", panels))
    gates = maps.select("se_gate")
    if gates:
        strip = gate_strip([g.weights[0] for g in gates], [f"block {g.layer}" for g in gates])
        figures.append(ReportFigure("se_gates", "SE channel gates of each block", strip))
    return figures


def write_report(path, title: str, figures: Sequence[ReportFigure], *, lang: str = "en") -> list[Path]:
    """Write ``figures`` as ``STEM.png`` and ``STEM.svg`` beside one self-contained HTML page at ``path``.

    Returns:
        The files written: the page first, then each figure's PNG and SVG (``viz.page.write_page``).
    """
    sections = [Section(f.title, figures=[PageFigure(f.figure, stem=f.stem, caption=f.title)]) for f in figures]
    return write_page(path, title, sections, lang=lang)


def _text_map(maps: AttentionMaps, found: AttentionMap, words: bool) -> tuple[Tensor, list[str], list[str]]:
    """``(H, Lq, Lk)`` weights of a text map and its row and column labels, merged into words if asked."""
    weights = found.weights[0].float()  # (H, Lq, Lk)
    rows = maps.axis_labels(found.queries) or [str(i) for i in range(weights.shape[-2])]
    cols = maps.axis_labels(found.keys) or [str(i) for i in range(weights.shape[-1])]
    if not words:
        return weights, rows, cols
    scheme = "wordpiece" if found.kind == "bert" else "sentencepiece"
    return merge_pieces(weights, rows, cols, scheme=scheme)


def _mean(weights: Tensor, rows: list[str], cols: list[str]) -> Figure:
    """The heatmap of the mean over heads of ``(H, Lq, Lk)`` weights."""
    return heatmap(weights.mean(dim=0), rows, cols)


def _heads(found: AttentionMap) -> str:
    """``"mean of heads 0, 1"`` (or ``"one head"``)."""
    ids = _head_ids(found)
    return "one head" if len(ids) == 1 else "mean of heads " + ", ".join(map(str, ids))


def _head_ids(found: AttentionMap) -> list[int]:
    """The model's indices of the heads a map holds."""
    return list(found.heads) if found.heads is not None else list(range(found.weights.shape[1]))


def _fuse(per_head: Tensor, fusion: str) -> Tensor:
    """``(H, ...) -> (...)`` by the mean, max or min over heads."""
    if fusion == "mean":
        return per_head.mean(dim=0)
    return per_head.amax(dim=0) if fusion == "max" else per_head.amin(dim=0)


def _query_patch(asked: tuple[int, int] | None, gh: int, gw: int) -> tuple[int, int]:
    """The query patch as non-negative ``(row, col)``; an error names the grid when it lies outside."""
    if asked is None:
        return gh // 2, gw // 2
    row, col = asked
    if not (-gh <= row < gh and -gw <= col < gw):
        raise ValueError(
            f"query patch ({row}, {col}) does not exist: the patch grid is {gh}x{gw} (rows 0..{gh - 1}, "
            f"columns 0..{gw - 1})"
        )
    return row % gh, col % gw


def _rollout(maps: AttentionMaps, image, fusion: str, discard_ratio: float) -> ReportFigure:
    """Attention rollout of the ViT layers captured, the class token's row over the image."""
    layers = maps.layers("vit")
    rolled = attention_rollout(
        [maps.get("vit", layer).weights.to(torch.float64) for layer in layers],
        head_fusion=fusion,
        discard_ratio=discard_ratio,
    )  # (1, N, N)
    heat = class_token_map(rolled[0], maps.grid)  # (gh, gw)
    span = f"layers {layers[0]}..{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"
    title = f"attention rollout, {span}, {fusion} of heads, discard ratio {discard_ratio:g}"
    return ReportFigure("vit_rollout", title, overlay(image, heat, title="rollout"))
