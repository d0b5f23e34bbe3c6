"""Figure helpers shared by the experiments: one style, one way to save (small PNGs for the site)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["DPI", "new_figure", "percent_bars", "save"]

DPI = 110


def new_figure(cols: int = 1, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list]:
    """A figure of ``cols`` side-by-side axes, each ``width`` x ``height`` inches."""
    fig, axes = plt.subplots(1, cols, figsize=(width * cols, height), squeeze=False)
    return fig, list(axes[0])


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at the site's resolution and close it."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def percent_bars(ax, names: list[str], values: list[float]) -> None:
    """One bar per name, a fraction in [0, 1], labelled with its percentage."""
    ax.bar(names, values, color=["tab:grey", "tab:blue", "tab:green", "tab:purple"][: len(names)])
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{100 * v:.1f}%", ha="center")
    ax.set_ylim(0, 1.1)
