"""No attention vs attention on long inputs: an RNN encoder-decoder's accuracy by source length.

Without attention the encoder squeezes the whole source into its last state, one fixed-size
vector the decoder must read everything from; Cho et al. (2014, Fig. 4) saw such models fall
apart as sentences grow, and Bahdanau et al. (2015, Fig. 2) showed that letting the decoder
attend over every encoder state, c_t = Σ_j α_tj h_j with α_tj = softmax_j(vᵀ tanh(W s_{t-1} + U h_j)),
keeps long inputs in reach. The same LSTM seq2seq (``attnlab.models.rnn_seq2seq``), with
``attention: none`` and ``attention: bahdanau``, trains for the same steps on the same
generated English → Japanese pairs (``attnlab.data.generated_pairs``: dates and numbers, up to
some 30 source tokens for long numbers in words) and is scored by exact match per source-length
bucket (up to 60 test pairs per bucket): the table ``benchmarks/compare_attention.py`` prints,
drawn as a plot. Words are the source tokens (digits one by one), characters the target tokens.
About 3 minutes on one core.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from attnlab.data.generated_pairs import build_generated_pairs
from attnlab.experiments._plots import new_figure, save
from attnlab.experiments._seq2seq import Vocab, exact_match, train_seq2seq
from attnlab.models.rnn_config import Seq2SeqConfig
from attnlab.models.rnn_seq2seq import RNNSeq2Seq

NAME = "long_inputs"
FIGURES = ["by_length.png"]
RUNTIME = "~3 min"

MODELS = ("none", "bahdanau")
BUCKETS = [(1, 4), (5, 8), (9, 16), (17, 24), (25, None)]  # source tokens, inclusive; None = open
SEED = 0
_TOKEN = re.compile(r"\d|[A-Za-z]+|[^\sA-Za-z\d]")


def tokenize_pair(source: str, target: str) -> tuple[list[str], list[str]]:
    """English words and punctuation (digits one by one) -> target characters."""
    return _TOKEN.findall(source), list(target)


def bucket_name(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else f"{low}-{high}"


def bucket_of(length: int) -> str:
    """The name of the bucket holding a source of ``length`` tokens."""
    return next(bucket_name(lo, hi) for lo, hi in BUCKETS if lo <= length and (hi is None or length <= hi))


def corpus(train_size: int, per_bucket: int) -> tuple[list, list]:
    """Tokenized train pairs and a test set of up to ``per_bucket`` pairs per length bucket, drawn
    from another seed (long sources are rare in the generator's mix; the test keeps enough)."""
    train = [tokenize_pair(s, t) for s, t in build_generated_pairs(train_size, seed=SEED)]
    test, counts = [], dict.fromkeys((bucket_name(*b) for b in BUCKETS), 0)
    for s, t in build_generated_pairs(20 * per_bucket * len(BUCKETS), seed=SEED + 1):
        pair = tokenize_pair(s, t)
        bucket = bucket_of(len(pair[0]))
        if counts[bucket] < per_bucket:
            counts[bucket] += 1
            test.append(pair)
    return train, test


def train_model(attention: str, train, test, vocabs, steps: int) -> dict:
    """Train one seq2seq; exact match overall and per source-length bucket."""
    torch.manual_seed(SEED)
    config = Seq2SeqConfig(
        src_vocab_size=len(vocabs[0]),
        tgt_vocab_size=len(vocabs[1]),
        cell="lstm",
        attention=attention,
        embed_dim=32,
        hidden_size=64,
        dropout=0.0,
    )
    model = RNNSeq2Seq(config)
    losses = train_seq2seq(model, train, vocabs, steps=steps, seed=SEED)
    correct = exact_match(model, test, vocabs)
    buckets = {}
    for low, high in BUCKETS:
        rows = [i for i, (s, _) in enumerate(test) if bucket_of(len(s)) == bucket_name(low, high)]
        if rows:
            buckets[bucket_name(low, high)] = {
                "sentences": len(rows),
                "exact_match": round(sum(correct[i] for i in rows) / len(rows), 4),
            }
    return {
        "exact_match": round(sum(correct) / len(correct), 4),
        "final_loss": round(sum(losses[-20:]) / 20, 4),
        "steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "by_source_tokens": buckets,
    }


def run(out: Path, quick: bool = False) -> dict:
    """Train both models, draw ``by_length.png``; return overall and per-bucket exact match."""
    train, test = corpus(2000 if quick else 20000, 10 if quick else 60)
    vocabs = (Vocab(s for s, _ in train), Vocab(t for _, t in train))
    steps = 20 if quick else 800
    results = {"train_pairs": len(train), "test_pairs": len(test)}
    results["models"] = {m: train_model(m, train, test, vocabs, steps) for m in MODELS}
    _draw(out, results)
    return results


def _draw(out: Path, results: dict) -> None:
    fig, (ax,) = new_figure(1, width=5.6)
    names = [bucket_name(*b) for b in BUCKETS]
    for model, style in zip(MODELS, ("o--", "s-")):
        buckets = results["models"][model]["by_source_tokens"]
        ax.plot(names, [buckets.get(n, {}).get("exact_match", float("nan")) for n in names], style, label=model)
    sizes = results["models"][MODELS[0]]["by_source_tokens"]
    ax.set_xticks(range(len(names)), [f"{n}\n(n={sizes.get(n, {}).get('sentences', 0)})" for n in names])
    ax.set(ylim=(-0.02, 1.02), xlabel="source tokens", ylabel="exact match (test)")
    ax.set_title("LSTM seq2seq, same steps: no attention vs Bahdanau")
    ax.legend(title="attention")
    save(fig, out / "by_length.png")


def table(results: dict, lang: str) -> str:
    """The page's numbers: exact match per model, overall and per source-length bucket."""
    names = [bucket_name(*b) for b in BUCKETS]
    sizes = results["models"][MODELS[0]]["by_source_tokens"]
    if lang == "ja":
        head = ["アテンション", "パラメータ数", "全体"] + [f"{n} トークン (n={sizes[n]['sentences']})" for n in names]
    else:
        head = ["attention", "parameters", "all"] + [f"{n} tokens (n={sizes[n]['sentences']})" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in MODELS:
        r = results["models"][model]
        cells = [model, f"{r['parameters']:,}", f"{100 * r['exact_match']:.1f}%"]
        cells += [f"{100 * r['by_source_tokens'][n]['exact_match']:.1f}%" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
