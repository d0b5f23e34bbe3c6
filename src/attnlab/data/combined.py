"""One English-X corpus from several sources, de-duplicated, with the help corpus's dev/test kept as they are.

The ``libreoffice-combined`` corpus joins the LibreOffice help pairs (:mod:`attnlab.data.libreoffice_help`)
and the sources its config names: the UI catalogue pairs (:mod:`attnlab.data.libreoffice_ui`, the default)
and the Debian Reference paragraphs (:mod:`attnlab.data.debian_reference`). Its split keeps results
comparable with ``libreoffice-help``:

- the help pairs are split exactly as in ``libreoffice-help`` (same hash, seed and fractions), so the
  combined ``dev`` and ``test`` are the help corpus's ``dev`` and ``test``, pair for pair;
- the help's training pairs stay in ``train`` (they already share no English with dev/test);
- every other source's pairs go to ``train`` only, after exact de-duplication (a pair whose
  whitespace-normalised sides equal an earlier pair's, help pairs first, is a duplicate) and after
  dropping any pair whose normalised English or translation equals that side of a help ``dev``/``test``
  pair, so no held-out sentence of either language is trained on through them.

Counts per source: ``entries`` read, ``filtered`` (empty, untranslated or identical entries, counted by
the reader), ``duplicates``, ``dropped`` (held-out overlap) and ``kept``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attnlab.data.text import normalize_whitespace

__all__ = ["HELD_OUT_SPLITS", "CombinedSplits", "SourcePairs", "combine_sources"]

Pair = tuple[str, str]
HELD_OUT_SPLITS = ("dev", "test")


@dataclass
class SourcePairs:
    """The training candidates of one extra source.

    Attributes:
        name: the source's name in the counts, e.g. ``"libreoffice-ui"``.
        pairs: its pairs in a deterministic order, repeats allowed.
        entries: entries the reader saw; ``entries - len(pairs)`` were filtered out while reading.
    """

    name: str
    pairs: Sequence[Pair]
    entries: int


@dataclass
class CombinedSplits:
    """The combined ``train``/``dev``/``test`` and ``{source: {count: value}}``."""

    splits: dict[str, list[Pair]]
    sources: dict[str, dict[str, int]]


def _normalized(pair: Pair) -> Pair:
    return normalize_whitespace(pair[0]), normalize_whitespace(pair[1])


def _train_candidates(
    pairs: Sequence[Pair], seen: set[Pair], held_out_sides: tuple[set[str], set[str]]
) -> tuple[list[Pair], int, int]:
    """The pairs not yet seen and not sharing a side with a held-out pair; adds them to ``seen``."""
    kept, duplicates, dropped = [], 0, 0
    for pair in pairs:
        key = _normalized(pair)
        if key in seen:
            duplicates += 1
        elif key[0] in held_out_sides[0] or key[1] in held_out_sides[1]:
            dropped += 1
        else:
            seen.add(key)
            kept.append(key)
    return kept, duplicates, dropped


def combine_sources(
    base_name: str, base_splits: Mapping[str, Sequence[Pair]], extra: Sequence[SourcePairs]
) -> CombinedSplits:
    """Join sources into one corpus whose dev/test are those of ``base_splits``.

    Args:
        base_name: the name of the already-split source in the counts, e.g. ``"libreoffice-help"``.
        base_splits: ``train``/``dev``/``test`` of that source; ``dev`` and ``test`` are kept unchanged.
        extra: further sources, in order of precedence; their pairs can only go to ``train``.

    Returns:
        The splits (``train`` first holds the base's training pairs, then each source's kept pairs in
        order, all whitespace-normalised) and the per-source counts.
    """
    held_out = [_normalized(pair) for name in HELD_OUT_SPLITS for pair in base_splits[name]]
    held_out_sides = ({source for source, _ in held_out}, {target for _, target in held_out})
    seen = set(held_out)
    # The base's own train is kept as its corpus has it: only exact repeats go.
    train, duplicates, _ = _train_candidates(base_splits["train"], seen, (set(), set()))
    base_total = len(base_splits["train"]) + len(held_out)
    sources = {base_name: _counts(base_total, base_total, duplicates, 0, len(train) + len(held_out))}
    for source in extra:
        kept, duplicates, dropped = _train_candidates(source.pairs, seen, held_out_sides)
        sources[source.name] = _counts(source.entries, len(source.pairs), duplicates, dropped, len(kept))
        train.extend(kept)
    splits = {"train": train, **{name: list(base_splits[name]) for name in HELD_OUT_SPLITS}}
    return CombinedSplits(splits, sources)


def _counts(entries: int, pairs: int, duplicates: int, dropped: int, kept: int) -> dict[str, int]:
    return {"entries": entries, "filtered": entries - pairs, "duplicates": duplicates, "dropped": dropped, "kept": kept}
