"""Beam pools (BeamKVCache) against KVCache, which copies keys when beams change parents, and
the errors of a pool used the wrong way."""

import pytest
import torch

from attnlab.inference.beam_cache import BeamAncestry, BeamKVCache
from attnlab.layers.kv_cache import MIN_CAPACITY, KVCache

SENTENCES, BEAM, HEADS, DIM = 3, 4, 2, 8


def _beam_parents(g: torch.Generator) -> torch.Tensor:
    """A beam search's reorder: every row continues some row of its own sentence."""
    parents = torch.randint(0, BEAM, (SENTENCES, BEAM), generator=g)
    return (parents + torch.arange(SENTENCES)[:, None] * BEAM).view(-1)


@pytest.mark.parametrize("steps", [5, MIN_CAPACITY + 3])  # the second grows both caches' buffers
def test_beam_cache_holds_and_attends_what_a_copying_cache_does(steps):
    g = torch.Generator().manual_seed(0)
    rows = SENTENCES * BEAM
    reference, ancestry = KVCache(), BeamAncestry(BEAM)
    beam = BeamKVCache(ancestry)
    with torch.no_grad():
        for t in range(steps):
            q, k, v = (torch.randn(rows, HEADS, 1, DIM, generator=g) for _ in range(3))
            expected = reference.attend(q, k, v)
            got = beam.attend(q, k, v)
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
            if t % 3 != 2:  # some steps keep every row's parent (no reorder at all)
                index = _beam_parents(g)
                reference.reorder(index)
                ancestry.reorder(index)
    assert len(beam) == len(reference) == steps
    if steps > MIN_CAPACITY:  # the pool dropped keys no line reads, and grew past its first capacity
        assert ancestry.generation > 0 and ancestry.keys < steps * BEAM
    # The keys gathered row by row are the copied ones, bit for bit.
    assert torch.equal(beam.key, reference.key) and torch.equal(beam.value, reference.value)


def test_beam_cache_update_returns_rows_for_the_general_path():
    g = torch.Generator().manual_seed(1)
    reference, ancestry = KVCache(), BeamAncestry(BEAM)
    beam = BeamKVCache(ancestry)
    with torch.no_grad():
        first = torch.randn(SENTENCES * BEAM, HEADS, 3, DIM, generator=g)  # a prompt of 3 positions
        reference.update(first, first + 1)
        beam.update(first, first + 1)
        index = _beam_parents(g)
        reference.reorder(index)
        ancestry.reorder(index)
        step = torch.randn(SENTENCES * BEAM, HEADS, 1, DIM, generator=g)
        expected, got = reference.update(step, step), beam.update(step, step)
    for e, o in zip(expected, got):
        assert torch.equal(o, e)


def test_beam_ancestry_keeps_rows_within_their_sentence():
    ancestry, cache = BeamAncestry(2), None
    cache = BeamKVCache(ancestry)
    with torch.no_grad():
        cache.update(torch.zeros(4, 1, 1, 2), torch.zeros(4, 1, 1, 2))
    with pytest.raises(ValueError, match="each a row of the same sentence"):
        ancestry.reorder(torch.tensor([0, 2, 2, 3]))  # row 1 would continue sentence 1
    with pytest.raises(ValueError, match="4 rows"):
        ancestry.reorder(torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="reorder its BeamAncestry"):
        cache.reorder(torch.tensor([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="k = 2 rows per sentence"):
        cache.update(torch.zeros(3, 1, 1, 2), torch.zeros(3, 1, 1, 2))
    with pytest.raises(ValueError, match="beam_size must be >= 1, got 0"):
        BeamAncestry(0)
