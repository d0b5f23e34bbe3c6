"""Self-attention without positions is blind to word order; sinusoidal, learned and rotary
positions are what let it see order.

Self-attention is permutation-equivariant: for a permutation matrix P, Attn(PX) = P Attn(X),
because every query scores every key by content alone (Vaswani et al., 2017, Section 3.5: "since
our model contains no recurrence and no convolution ... we must inject some information about the
relative or absolute position"). So a shuffled sentence gives the same outputs, shuffled, and the
same mean-pooled vector. Measured on attnlab's ``MultiHeadAttention`` (float64) with each kind of
position: none, ``SinusoidalPositionalEncoding``, ``LearnedPositionalEmbedding`` and RoPE
(``rope=True``). Then a task where order is everything, reversing a sequence, learned by the same
small Transformer with each kind of position (the ``none`` model has its position module
removed). About 2 minutes on one core (a few seconds with ``--quick``).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from attnlab.experiments._plots import new_figure, percent_bars, save
from attnlab.experiments._seq2seq import Vocab, exact_match, train_seq2seq
from attnlab.experiments.pages import table_head
from attnlab.layers import LearnedPositionalEmbedding, MultiHeadAttention, SinusoidalPositionalEncoding
from attnlab.models.transformer import Transformer, TransformerConfig

NAME = "word_order"
FIGURES = ["equivariance.png", "reversal.png"]
RUNTIME = "~2 min"

KINDS = ("none", "sinusoidal", "learned", "rotary")
SENTENCE = ["the", "cat", "that", "the", "dog", "chased", "sat", "on", "the", "mat"]
DIM, HEADS, SEED = 32, 4, 0
SYMBOLS = [chr(ord("a") + i) for i in range(12)]
LENGTHS = (5, 9)  # reversal task: sequences of 5..9 symbols


def layer_outputs(kind: str, order: list[int]) -> torch.Tensor:
    """Self-attention outputs ``(L, D)`` of ``SENTENCE`` read in ``order``, with positions ``kind``.

    The embeddings and the layer come from one seed, so only the order differs between calls.
    """
    torch.manual_seed(SEED)
    vocab = {w: i for i, w in enumerate(sorted(set(SENTENCE)))}
    embed = nn.Embedding(len(vocab), DIM).double()
    attn = MultiHeadAttention(DIM, HEADS, rope=kind == "rotary").double()
    positions = {"sinusoidal": SinusoidalPositionalEncoding(DIM), "learned": LearnedPositionalEmbedding(64, DIM)}
    if kind == "learned":
        nn.init.normal_(positions["learned"].weight)  # a trained table's scale, not the tiny init
    ids = torch.tensor([vocab[SENTENCE[i]] for i in order])
    x = embed(ids)[None]  # (1, L, D)
    if kind in positions:
        x = positions[kind].double()(x)
    with torch.no_grad():
        out, _ = attn(x, x, x)
    return out[0]


def equivariance(kind: str, shuffles: int = 5) -> dict[str, float]:
    """Largest |Attn(PX) - P Attn(X)| and |mean Attn(PX) - mean Attn(X)| over seeded shuffles,
    relative to the largest output magnitude."""
    rng = random.Random(SEED)
    identity = list(range(len(SENTENCE)))
    base = layer_outputs(kind, identity)
    scale = float(base.abs().max())
    token_err = pooled_err = 0.0
    for _ in range(shuffles):
        order = rng.sample(identity, len(identity))
        shuffled = layer_outputs(kind, order)
        token_err = max(token_err, float((shuffled - base[order]).abs().max()) / scale)
        pooled_err = max(pooled_err, float((shuffled.mean(0) - base.mean(0)).abs().max()) / scale)
    return {"token_error": token_err, "pooled_error": pooled_err}


def reversal_pairs(count: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``count`` (sequence, reversed sequence) pairs of random symbols."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        seq = [rng.choice(SYMBOLS) for _ in range(rng.randint(*LENGTHS))]
        pairs.append((seq, seq[::-1]))
    return pairs


def train_reversal(kind: str, steps: int) -> dict[str, float]:
    """Train a small Transformer with positions ``kind`` to reverse sequences; test exact match."""
    torch.manual_seed(SEED)
    vocab = Vocab([SYMBOLS])
    config = TransformerConfig.from_preset(
        "tiny",
        src_vocab_size=len(vocab),
        tgt_vocab_size=len(vocab),
        dropout=0.0,
        positions="sinusoidal" if kind == "none" else kind,
    )
    model = Transformer(config)
    if kind == "none":
        model.positional = None  # the same model, no position signal anywhere
    losses = train_seq2seq(model, reversal_pairs(4000, SEED), (vocab, vocab), steps=steps, seed=SEED)
    correct = exact_match(model, reversal_pairs(300, SEED + 1), (vocab, vocab))
    return {"exact_match": sum(correct) / len(correct), "final_loss": sum(losses[-20:]) / 20, "steps": steps}


def run(out: Path, quick: bool = False) -> dict:
    """Measure equivariance per kind (always) and train the reversal task (not with ``quick``)."""
    results: dict = {"sentence": " ".join(SENTENCE), "equivariance": {k: equivariance(k) for k in KINDS}}
    steps = 0 if quick else 400
    results["reversal"] = {k: train_reversal(k, steps) for k in KINDS} if steps else {}
    _draw_equivariance(out, results["equivariance"])
    _draw_reversal(out, results["reversal"])
    return results


def _draw_equivariance(out: Path, table: dict) -> None:
    fig, (ax,) = new_figure(1, width=5.6)
    width = 0.38
    for offset, metric in enumerate(("token_error", "pooled_error")):
        values = [max(table[k][metric], 1e-17) for k in KINDS]
        label = "|Attn(PX) − P·Attn(X)|" if metric == "token_error" else "|mean Attn(PX) − mean Attn(X)|"
        ax.bar([i + (offset - 0.5) * width for i in range(len(KINDS))], values, width, label=label)
    ax.set_yscale("log")
    ax.set_xticks(range(len(KINDS)), KINDS)
    ax.set(ylabel="largest difference / largest output", title="a shuffled sentence through self-attention")
    ax.legend(fontsize=8, loc="center left")
    save(fig, out / "equivariance.png")


def _draw_reversal(out: Path, table: dict) -> None:
    fig, (ax,) = new_figure(1, width=5.0)
    values = [table.get(k, {}).get("exact_match", 0.0) for k in KINDS]
    percent_bars(ax, list(KINDS), values)
    ax.set(ylabel="exact match (test)", title="reverse a sequence: positions per model")
    save(fig, out / "reversal.png")


def table(results: dict, lang: str) -> str:
    """The page's numbers: equivariance errors and reversal accuracy per kind of position."""
    lines = table_head(
        lang,
        ["positions", "per-token difference", "pooled difference", "reversal exact match"],
        ["位置表現", "トークンごとの差", "平均プーリングの差", "反転タスクの完全一致"],
    )
    for kind in KINDS:
        eq, rev = results["equivariance"][kind], results["reversal"].get(kind)
        accuracy = "-" if rev is None else f"{100 * rev['exact_match']:.1f}%"
        lines.append(f"| {kind} | {eq['token_error']:.1e} | {eq['pooled_error']:.1e} | {accuracy} |")
    return "\n".join(lines)
