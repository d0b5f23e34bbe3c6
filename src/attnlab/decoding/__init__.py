"""Decoding: batched greedy and beam search over any model with ``start_state / step / reorder_state``,
and the logits processors that constrain them (valid UTF-8, no repeated n-grams, a repetition penalty)."""

from attnlab.decoding.constraints import (
    LogitsProcessor,
    NoRepeatNGram,
    RepetitionPenalty,
    Utf8Constraint,
)
from attnlab.decoding.search import (
    IncrementalDecoder,
    SearchResult,
    beam_search,
    greedy_search,
    length_penalty,
    max_lengths,
)

__all__ = [
    "IncrementalDecoder",
    "LogitsProcessor",
    "NoRepeatNGram",
    "RepetitionPenalty",
    "SearchResult",
    "Utf8Constraint",
    "beam_search",
    "greedy_search",
    "length_penalty",
    "max_lengths",
]
