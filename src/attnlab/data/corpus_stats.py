"""Summary numbers of a parallel corpus, as a plain dict for a CLI or a report to print."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from attnlab.data.corpora import SPLITS, ParallelCorpus
from attnlab.data.text import is_japanese_char

__all__ = ["corpus_statistics"]


def _length_summary(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"median": 0.0, "mean": 0.0, "max": 0}
    return {"median": float(statistics.median(lengths)), "mean": statistics.fmean(lengths), "max": max(lengths)}


def _side_statistics(texts: Sequence[str]) -> dict[str, Any]:
    visible = [char for text in texts for char in text if not char.isspace()]
    japanese = sum(map(is_japanese_char, visible))
    return {
        "chars": _length_summary([len(text) for text in texts]),
        "words": _length_summary([len(text.split()) for text in texts]),
        "japanese_char_fraction": japanese / len(visible) if visible else 0.0,
    }


def corpus_statistics(corpus: ParallelCorpus) -> dict[str, Any]:
    """Counts and length statistics of a corpus.

    Args:
        corpus: a prepared corpus.

    Returns:
        ``{"name", "source_lang", "target_lang", "pairs": {"train", "dev", "test", "total"},
        "skipped_lines", "sources" (combined corpora only: ``{source: {"entries", "filtered", "duplicates",
        "dropped", "kept"}}``, see :mod:`attnlab.data.combined`), "source": side, "target": side}`` where each side is
        ``{"chars": {"median", "mean", "max"}, "words": {...}, "japanese_char_fraction"}`` over all
        splits; words are whitespace-separated (so a Japanese sentence is mostly one "word") and the
        Japanese fraction counts kana and kanji among non-space characters.
    """
    pairs = [pair for name in SPLITS for pair in corpus.splits[name]]
    counts = {name: len(corpus.splits[name]) for name in SPLITS}
    statistics = {
        "name": corpus.name,
        "source_lang": corpus.source_lang,
        "target_lang": corpus.target_lang,
        "pairs": {**counts, "total": sum(counts.values())},
        "skipped_lines": len(corpus.skipped),
    }
    if corpus.sources:
        statistics["sources"] = {name: dict(source_counts) for name, source_counts in corpus.sources.items()}
    return {
        **statistics,
        "source": _side_statistics([source for source, _ in pairs]),
        "target": _side_statistics([target for _, target in pairs]),
    }
