"""Decoding: batched greedy and beam search over any model with ``start_state / step / reorder_state``."""

from attnlab.decoding.search import (
    IncrementalDecoder,
    SearchResult,
    beam_search,
    greedy_search,
    length_penalty,
    max_lengths,
)

__all__ = ["IncrementalDecoder", "SearchResult", "beam_search", "greedy_search", "length_penalty", "max_lengths"]
