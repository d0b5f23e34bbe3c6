"""Why scale by √d_k: softmax saturation and vanishing gradients as d_k grows, measured.

For q, k with independent unit-variance components, q·k has variance d_k (Vaswani et al., 2017,
footnote 4): unscaled scores grow with d_k, softmax puts almost all weight on one key, and its
Jacobian diag(a) - a aᵀ, hence the gradient reaching the scores, goes to zero. Dividing by √d_k
keeps the score variance at one for every d_k. Measured on random q and k (seeded) with the
library's ``dot_score`` / ``scaled_dot_score`` and ``softmax``: the largest weight, the entropy
of each row and the norm of ∂L/∂S for a random upstream gradient. No training: about 2 s.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from attnlab.experiments._plots import new_figure, save
from attnlab.experiments.pages import table_head
from attnlab.functional import dot_score, scaled_dot_score, softmax

NAME = "scaling"
FIGURES = ["saturation.png"]
RUNTIME = "~2 s"

DIMS = [4, 16, 64, 256, 1024]
KEYS = 32  # Lk: entropy of uniform weights is log(32) = 3.47 nats
QUERIES = 256
SEED = 0


def measure(d_k: int, scaled: bool, queries: int = QUERIES, seed: int = SEED) -> dict[str, float]:
    """Score std, mean max weight, mean row entropy (nats) and mean ‖∂L/∂S‖ per row at ``d_k``."""
    gen = torch.Generator().manual_seed(seed + d_k)
    q = torch.randn(1, queries, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(1, KEYS, d_k, generator=gen, dtype=torch.float64)
    scores = (scaled_dot_score(q, k) if scaled else dot_score(q, k)).requires_grad_(True)  # (1, Lq, Lk)
    weights = softmax(scores)
    upstream = torch.randn(weights.shape, generator=gen, dtype=torch.float64)
    (weights * upstream).sum().backward()
    entropy = -(weights * weights.clamp_min(1e-300).log()).sum(-1)
    return {
        "score_std": float(scores.detach().std()),
        "max_weight": float(weights.detach().max(-1).values.mean()),
        "entropy": float(entropy.detach().mean()),
        "grad_norm": float(scores.grad.norm(dim=-1).mean()),
    }


def run(out: Path, quick: bool = False) -> dict:
    """Measure every d_k with and without scaling; draw ``saturation.png``."""
    queries = 64 if quick else QUERIES
    results = {
        "keys": KEYS,
        "queries": queries,
        "uniform_entropy": round(math.log(KEYS), 4),
        "dims": DIMS,
        **{
            kind: {str(d): {m: round(v, 4) for m, v in measure(d, kind == "scaled", queries).items()} for d in DIMS}
            for kind in ("unscaled", "scaled")
        },
    }
    _draw(out, results)
    return results


def _draw(out: Path, results: dict) -> None:
    fig, axes = new_figure(3, width=3.6)
    panels = (
        ("max_weight", "mean largest weight"),
        ("entropy", "mean entropy (nats)"),
        ("grad_norm", "mean ‖∂L/∂S‖ per row"),
    )
    for ax, (metric, label) in zip(axes, panels):
        for kind, style in (("unscaled", "o-"), ("scaled", "s--")):
            values = [results[kind][str(d)][metric] for d in DIMS]
            ax.plot(DIMS, values, style, label="q·k" if kind == "unscaled" else "q·k / √d_k")
        ax.set(xscale="log", xlabel="d_k", title=label)
        ax.set_xticks(DIMS, [str(d) for d in DIMS])
    axes[1].axhline(results["uniform_entropy"], color="grey", lw=0.8, ls=":")
    axes[0].legend()
    axes[2].set_ylim(bottom=0)
    fig.tight_layout()
    save(fig, out / "saturation.png")


def table(results: dict, lang: str) -> str:
    """The page's numbers: per d_k, the score std, max weight, entropy and gradient norm, both ways."""
    lines = table_head(
        lang,
        ["d_k", "scaling", "score std", "max weight", "entropy", "gradient norm"],
        ["d_k", "スケーリング", "スコアの標準偏差", "最大の重み", "エントロピー", "勾配ノルム"],
    )
    names = (
        {"unscaled": "なし", "scaled": "√d_k で割る"}
        if lang == "ja"
        else {"unscaled": "none", "scaled": "divide by √d_k"}
    )
    for d in results["dims"]:
        for kind in ("unscaled", "scaled"):
            m = results[kind][str(d)]
            lines.append(
                f"| {d} | {names[kind]} | {m['score_std']:.2f} | {m['max_weight']:.3f} | {m['entropy']:.3f} "
                f"| {m['grad_norm']:.2e} |"
            )
    return "\n".join(lines)
