"""What every figure of ``viz`` starts from: a Figure on the Agg canvas, titles in the label font, arrays.

The figures are made without pyplot (no global figure list, no rcParams change); titles use
``viz.fonts.label_font``, so CJK text draws as text and ``$`` is never read as mathtext.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from attnlab.viz.fonts import label_font

__all__ = ["as_array", "new_figure", "set_title"]


def new_figure(width_tokens: float, height_tokens: float, scale: float = 0.25) -> Figure:
    """A constrained-layout figure on the Agg canvas, sized by tokens (``scale`` inches each)."""
    width = float(np.clip(scale * width_tokens + 2.0, 4.0, 16.0))
    height = float(np.clip(scale * height_tokens + 1.5, 3.0, 16.0))
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def set_title(ax: Axes, title: str | None) -> None:
    """Set the title in the label font, when there is one."""
    if title:
        ax.set_title(title, fontproperties=label_font(), parse_math=False)


def as_array(values) -> np.ndarray:
    """A NumPy array of a tensor (detached, on the CPU) or of anything ``np.asarray`` takes."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().float().numpy()
    return np.asarray(values)
