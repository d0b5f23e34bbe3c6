"""Seeing attention: tables, rollout and plots of attention weights.

``viz.text`` (plain-text tables) and ``viz.rollout`` need only torch and are re-exported here;
``viz.figures`` and ``viz.fonts`` import matplotlib, so import them by name when drawing.
"""

from attnlab.viz.rollout import attention_rollout, class_token_map
from attnlab.viz.text import display_width, format_attention_table

__all__ = ["attention_rollout", "class_token_map", "display_width", "format_attention_table"]
