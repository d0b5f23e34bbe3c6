"""Seeing attention: tables and plots of attention weights."""

from attnlab.viz.text import display_width, format_attention_table

__all__ = ["display_width", "format_attention_table"]
