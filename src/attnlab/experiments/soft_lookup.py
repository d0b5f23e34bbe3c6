"""Attention as a soft dictionary lookup, and what temperature and sparsemax change.

A dictionary returns the value of the one key equal to the query; attention returns
C = f_norm(f_sim(q, K)) V, a weighted mean of every value, weighted by how close each key is
(Vaswani et al., 2017, Eq. 1). Four keys point north, east, south and west; a query half-way
between two of them gets an equal blend of their two values. A second query, nearer one key,
shows what the normaliser does: softmax(S / T) sharpens as T falls and flattens as T rises;
sparsemax (Martins & Astudillo, 2016) gives exact zeros to the far keys. Exact arithmetic, no
training: runs in about a second.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from attnlab.experiments._plots import new_figure, save
from attnlab.functional import scaled_dot_score, softmax, sparsemax

NAME = "soft_lookup"
FIGURES = ["blend.png", "normalizers.png"]
RUNTIME = "~1 s"

KEY_NAMES = ["north", "east", "south", "west"]
RADIUS = 2.0  # key and query length: sets how peaked the scores are
TEMPERATURES = [0.25, 0.5, 1.0, 2.0, 4.0]


def keys_and_values() -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``(4, 2)`` on the compass at ``RADIUS``; values ``(4, 4)`` one-hot, so C is the weights."""
    angles = torch.tensor([90.0, 0.0, 270.0, 180.0]).deg2rad()
    keys = RADIUS * torch.stack([angles.cos(), angles.sin()], dim=-1)
    return keys.double(), torch.eye(4, dtype=torch.float64)


def query_at(degrees: float) -> torch.Tensor:
    """A query ``(1, 2)`` of length ``RADIUS`` at ``degrees`` (0 = east, 90 = north)."""
    rad = math.radians(degrees)
    return RADIUS * torch.tensor([[math.cos(rad), math.sin(rad)]], dtype=torch.float64)


def lookup(query: torch.Tensor, normalizer: str, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights (4,), context (4,))`` of one query: S = q Kᵀ / √d, A = f_norm(S), C = A V."""
    keys, values = keys_and_values()
    scores = scaled_dot_score(query[None], keys[None])[0]  # (1, 4)
    weights = softmax(scores, temperature=temperature) if normalizer == "softmax" else sparsemax(scores / temperature)
    return weights[0], (weights @ values)[0]


def _rounded(t: torch.Tensor) -> list[float]:
    return [round(float(x), 4) for x in t]


def run(out: Path, quick: bool = False) -> dict:
    """Compute the lookups, draw ``FIGURES`` into ``out``; return the weights."""
    middle, near = query_at(45.0), query_at(70.0)  # between east and north; nearer north
    blend_w, blend_c = lookup(middle, "softmax")
    results = {
        "keys": KEY_NAMES,
        "midpoint_query": {"softmax": _rounded(blend_w), "sparsemax": _rounded(lookup(middle, "sparsemax")[0])},
        "midpoint_context": _rounded(blend_c),
        "near_query_degrees": 70.0,
        "near_query": {
            **{f"softmax_T{t:g}": _rounded(lookup(near, "softmax", t)[0]) for t in TEMPERATURES},
            **{f"sparsemax_T{t:g}": _rounded(lookup(near, "sparsemax", t)[0]) for t in TEMPERATURES},
        },
    }
    _draw_blend(out, middle, near)
    _draw_normalizers(out, near, results["near_query"])
    return results


def _draw_blend(out: Path, middle: torch.Tensor, near: torch.Tensor) -> None:
    keys, _ = keys_and_values()
    fig, (plane, bars) = new_figure(2)
    for (x, y), name in zip(keys.tolist(), KEY_NAMES):
        plane.annotate("", (x, y), (0, 0), arrowprops=dict(arrowstyle="->", color="tab:blue"))
        plane.text(x * 1.3, y * 1.2, f"k: {name}", ha="center", va="center", color="tab:blue")
    for q, label, color in ((middle, "q (45°)", "tab:red"), (near, "q (70°)", "tab:orange")):
        plane.annotate("", tuple(q[0].tolist()), (0, 0), arrowprops=dict(arrowstyle="->", color=color, lw=2))
        plane.text(q[0, 0] + 0.15, q[0, 1], label, color=color, ha="left", va="center")
    plane.set(xlim=(-3.2, 3.2), ylim=(-3, 3), aspect="equal", title="keys and queries")
    width = 0.38
    for offset, (q, label, color) in enumerate(((middle, "q (45°)", "tab:red"), (near, "q (70°)", "tab:orange"))):
        weights, _ = lookup(q, "softmax")
        bars.bar([i + (offset - 0.5) * width for i in range(4)], weights.tolist(), width, label=label, color=color)
    bars.set_xticks(range(4), KEY_NAMES)
    bars.set(ylim=(0, 1), ylabel="weight a_i = softmax(q·k_i/√d)", title="C = Σ a_i v_i: a blend")
    bars.legend()
    save(fig, out / "blend.png")


def _draw_normalizers(out: Path, near: torch.Tensor, table: dict) -> None:
    fig, axes = new_figure(2)
    for ax, kind in zip(axes, ("softmax", "sparsemax")):
        for t in TEMPERATURES:
            ax.plot(KEY_NAMES, table[f"{kind}_T{t:g}"], marker="o", label=f"T = {t:g}")
        ax.set(ylim=(-0.02, 1.02), title=f"{kind}(S / T), query at 70°", ylabel="weight")
        ax.legend(fontsize=8)
    save(fig, out / "normalizers.png")


def table(results: dict, lang: str) -> str:
    """The page's numbers: weights of the half-way query, then of the query at 70° per normaliser and T."""
    head = ("クエリ", "正規化") if lang == "ja" else ("query", "f_norm")
    lines = [f"| {head[0]} | {head[1]} | T | " + " | ".join(results["keys"]) + " |", "|---|---|---|" + "---|" * 4]
    rows = [("45°", kind, 1.0, results["midpoint_query"][kind]) for kind in ("softmax", "sparsemax")]
    near = results["near_query"]
    rows += [("70°", k, t, near[f"{k}_T{t:g}"]) for k in ("softmax", "sparsemax") for t in TEMPERATURES]
    for degrees, kind, t, weights in rows:
        lines.append(f"| {degrees} | {kind} | {t:g} | " + " | ".join(f"{w:.3f}" for w in weights) + " |")
    return "\n".join(lines)
