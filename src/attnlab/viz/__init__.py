"""Seeing attention: capture, tables, rollout and plots of attention weights.

``viz.capture`` (``capture``, ``AttentionMaps``), ``viz.words``, ``viz.text`` (plain-text tables) and
``viz.rollout`` need only torch and are re-exported here; ``viz.figures`` (token figures, and the image
figures of ``viz.image_figures`` re-exported), ``viz.page`` and ``viz.fonts`` import matplotlib, so
import them by name when drawing.
"""

from attnlab.viz.capture import CaptureSpec, capture
from attnlab.viz.maps import AttentionMap, AttentionMaps
from attnlab.viz.rollout import attention_rollout, class_token_map
from attnlab.viz.text import display_width, format_attention_table
from attnlab.viz.words import merge_pieces, word_groups

__all__ = [
    "AttentionMap",
    "AttentionMaps",
    "CaptureSpec",
    "attention_rollout",
    "capture",
    "class_token_map",
    "display_width",
    "format_attention_table",
    "merge_pieces",
    "word_groups",
]
