"""A Japanese sentence's self-attention (which words 「小説」 attends to) and the alignment of a
translation whose word order flips, from small Transformers trained on Japanese.

The tutorial (``../shared/seeds``, 000) draws the self-attention of a five-word Japanese sentence
by hand: the query of 「小説」 scores every key, softmax turns the scores into weights, and the
words it relates to most are 「人気」 and itself. Here a model learns its weights: a small
Transformer (``attnlab.models.transformer``) trained on generated Japanese ↔ English sentences
(subject は adjective noun を verb, with an optional 「昨日」; a fixed lexicon, word-segmented, so
every map is labelled by whole words), Japanese → English for the encoder's self-attention of
「私 は 人気 の 小説 を 読んだ」, English → Japanese for the source-target alignment of
"I read a popular novel yesterday": English puts the verb second, Japanese last (SVO → SOV), so
the alignment leaves the diagonal. The demo sentences are held out of training. Maps are
captured with ``attnlab.capture`` and drawn with ``attnlab.viz.heatmap`` (the project's CJK
font). About 2 minutes on one core.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch

from attnlab.experiments._plots import save
from attnlab.experiments._seq2seq import Vocab, exact_match, greedy_decode, train_seq2seq
from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.viz import capture
from attnlab.viz.figures import heatmap

NAME = "japanese"
FIGURES = ["self_attention.png", "self_attention_layers.png", "alignment.png"]
RUNTIME = "~2 min"

SUBJECTS = [
    ("私", "I"),
    ("彼", "he"),
    ("彼女", "she"),
    ("先生", "the teacher"),
    ("学生", "the student"),
    ("母", "my mother"),
]
ADJECTIVES = [
    ("人気 の", "popular"),
    ("古い", "old"),
    ("新しい", "new"),
    ("短い", "short"),
    ("長い", "long"),
    ("面白い", "interesting"),
]
NOUNS = [("小説", "novel"), ("本", "book"), ("映画", "film"), ("手紙", "letter"), ("歌", "song"), ("記事", "article")]
VERBS = [("読んだ", "read"), ("書いた", "wrote"), ("買った", "bought"), ("見た", "saw")]
TIMES = [("", ""), ("昨日", "yesterday")]
SELF_DEMO = "私 は 人気 の 小説 を 読んだ"
ALIGN_DEMO = "I read a popular novel yesterday"
FOCUS = "小説"
SEED = 0


def sentence_pair(subject, adjective, noun, verb, time) -> tuple[list[str], list[str]]:
    """(Japanese words, English words): [時] S は ADJ N を V  /  S V a(n) ADJ N [time]."""
    ja = ([time[0]] if time[0] else []) + [subject[0], "は", *adjective[0].split(), noun[0], "を", verb[0]]
    article = "an" if adjective[1][0] in "aeiou" else "a"
    en = [*subject[1].split(), verb[1], article, adjective[1], noun[1]] + ([time[1]] if time[1] else [])
    return ja, en


def corpus() -> tuple[list, list]:
    """Every sentence of the grammar as (ja, en); a seeded tenth held out, the demos among them."""
    pairs = [sentence_pair(*parts) for parts in itertools.product(SUBJECTS, ADJECTIVES, NOUNS, VERBS, TIMES)]
    random.Random(SEED).shuffle(pairs)
    demos = {SELF_DEMO, " ".join(sentence_pair(SUBJECTS[0], ADJECTIVES[0], NOUNS[0], VERBS[0], TIMES[1])[0])}
    held = [p for p in pairs if " ".join(p[0]) in demos]
    rest = [p for p in pairs if " ".join(p[0]) not in demos]
    cut = len(pairs) // 10 - len(held)
    return rest[cut:], held + rest[:cut]


def train_direction(train: list, test: list, source: int, steps: int) -> tuple[Transformer, tuple, float]:
    """A tiny Transformer from side ``source`` (0: ja, 1: en) to the other; test exact match."""
    pairs = [(p[source], p[1 - source]) for p in train]
    vocabs = (Vocab(s for s, _ in pairs), Vocab(t for _, t in pairs))
    torch.manual_seed(SEED)
    config = TransformerConfig.from_preset(
        "tiny", src_vocab_size=len(vocabs[0]), tgt_vocab_size=len(vocabs[1]), dropout=0.1
    )
    model = Transformer(config)
    train_seq2seq(model, pairs, vocabs, steps=steps, seed=SEED)
    correct = exact_match(model, [(p[source], p[1 - source]) for p in test], vocabs)
    return model, vocabs, sum(correct) / len(correct)


@torch.no_grad()
def self_attention(model: Transformer, vocabs: tuple, words: list[str]) -> list[torch.Tensor]:
    """The encoder's self-attention of ``words`` per layer, mean over heads: ``(L, L)`` each."""
    src = vocabs[0].encode([words], eos=False)
    with capture(model, kinds="encoder_self") as maps:
        model.encode(src)
    return [found.weights[0].mean(0) for found in maps.select("encoder_self")]


@torch.no_grad()
def alignment(model: Transformer, vocabs: tuple, words: list[str]) -> tuple[list[str], torch.Tensor]:
    """The greedy translation of ``words`` (and ``</s>``) and its last-layer cross-attention, mean over heads
    ``(T + 1, S)``."""
    hypothesis = greedy_decode(model, [words], vocabs)[0]
    src = vocabs[0].encode([words], eos=False)
    tgt_in = torch.cat([torch.tensor([[2]]), vocabs[1].encode([hypothesis], eos=False)], dim=1)  # <s> + words
    with capture(model, kinds="cross", layers=-1) as maps:
        model(src, tgt_in)
    # row t is the query that predicts target word t (the last one predicts </s>), as in attnlab.Translator
    return [*hypothesis, "</s>"], maps["cross", -1][0].mean(0)  # (T + 1, S)


def run(out: Path, quick: bool = False) -> dict:
    """Train both directions, capture and draw the maps; return accuracies and 「小説」's weights."""
    train, test = corpus()
    steps = 30 if quick else 500
    ja_en, ja_vocabs, ja_accuracy = train_direction(train, test, 0, steps)
    en_ja, en_vocabs, en_accuracy = train_direction(train, test, 1, steps)
    words = SELF_DEMO.split()
    layers = self_attention(ja_en, ja_vocabs, words)
    focus = words.index(FOCUS)
    hypothesis, cross = alignment(en_ja, en_vocabs, ALIGN_DEMO.split())
    results = {
        "train_sentences": len(train),
        "test_sentences": len(test),
        "steps": steps,
        "ja_en_test_exact_match": round(ja_accuracy, 4),
        "en_ja_test_exact_match": round(en_accuracy, 4),
        "self_demo": SELF_DEMO,
        "focus_weights": [{w: round(float(v), 4) for w, v in zip(words, layer[focus])} for layer in layers],
        "align_demo": ALIGN_DEMO,
        "align_translation": " ".join(hypothesis[:-1]),
        "align_most_attended": [[t, ALIGN_DEMO.split()[int(row.argmax())]] for t, row in zip(hypothesis, cross)],
    }
    title = f"encoder self-attention, last layer, mean of heads: 「{FOCUS}」 row"
    save(heatmap(layers[-1], words, title=title), out / "self_attention.png")
    _draw_layers(out, layers, words, focus)
    save(heatmap(cross, hypothesis, ALIGN_DEMO.split(), title="cross-attention, last layer"), out / "alignment.png")
    return results


def _draw_layers(out: Path, layers: list[torch.Tensor], words: list[str], focus: int) -> None:
    from attnlab.experiments._plots import new_figure
    from attnlab.viz.fonts import label_font

    fig, axes = new_figure(len(layers), width=3.6, height=2.8)
    for index, (ax, layer) in enumerate(zip(axes, layers)):
        ax.bar(range(len(words)), layer[focus].tolist(), color="tab:blue")
        ax.set_xticks(range(len(words)), words, fontproperties=label_font())
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {index}", fontsize=10)
    axes[0].set_ylabel(f"weight from 「{FOCUS}」", fontproperties=label_font())
    save(fig, out / "self_attention_layers.png")


def table(results: dict, lang: str, part: str = "self") -> str:
    """The page's numbers: 「小説」's weights per layer with its two most attended words (``self``),
    or the most attended source word of every generated word (``alignment``)."""
    if part == "alignment":
        head = "| 生成した語 | 最も注意したソース語 |"
        if lang != "ja":
            head = "| generated word | most attended source word |"
        rows = [f"| {_cell(target)} | {_cell(source)} |" for target, source in results["align_most_attended"]]
        return "\n".join([head, "|---|---|", *rows])
    words = results["self_demo"].split()
    first, top = ("層", "上位 2 語") if lang == "ja" else ("layer", "top two")
    lines = [f"| {first} | " + " | ".join(words) + f" | {top} |", "|---|" + "---|" * (len(words) + 1)]
    for index, layer in enumerate(results["focus_weights"]):
        best = sorted(words, key=lambda w: -layer[w])[:2]
        joined = ("、" if lang == "ja" else ", ").join(best)
        lines.append(f"| {index} | " + " | ".join(f"{layer[w]:.2f}" for w in words) + f" | {joined} |")
    return "\n".join(lines)


def _cell(word: str) -> str:
    return f"`{word}`" if word.startswith("<") else word  # </s> is not an HTML tag
