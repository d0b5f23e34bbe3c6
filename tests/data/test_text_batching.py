"""Token-budget batching: the budget, coverage, seeded order, resume, dropping, padding."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader

from attnlab.data.batching import (
    TokenBudgetBatchSampler,
    TranslationDataset,
    TranslationExample,
    collate_translation,
)
from attnlab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, TranslationTokenizer


def _random_dataset(count: int = 3000, max_length: int = 60, seed: int = 0) -> TranslationDataset:
    rng = random.Random(seed)
    lengths = [(rng.randint(1, 70), rng.randint(1, 70)) for _ in range(count)]
    src = [[4 + (i + j) % 50 for j in range(s)] for i, (s, _) in enumerate(lengths)]
    tgt = [[4 + (i * j) % 50 for j in range(t)] for i, (_, t) in enumerate(lengths)]
    return TranslationDataset(src, tgt, max_length=max_length)


@pytest.fixture(scope="module")
def dataset() -> TranslationDataset:
    return _random_dataset()


def _padded_fraction(costs: list[int], batches: list[list[int]]) -> float:
    padded = sum(len(b) * max(costs[i] for i in b) for b in batches)
    return 1 - sum(costs) / padded


def test_long_pairs_are_dropped_and_counted(dataset: TranslationDataset, caplog: pytest.LogCaptureFixture) -> None:
    fresh = _random_dataset(300)
    assert len(fresh) + len(fresh.dropped) == 300 and fresh.dropped
    assert all(max(len(ex.src), len(ex.tgt)) <= 60 for ex in fresh.examples)
    assert not set(fresh.dropped) & {ex.index for ex in fresh.examples}
    assert f"dropped {len(fresh.dropped)} of 300" in caplog.text


def test_batches_never_exceed_the_budget(dataset: TranslationDataset) -> None:
    sampler = TokenBudgetBatchSampler(dataset.costs(), max_tokens=500, chunk_size=512, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_translation)
    for batch in loader:
        assert batch.src.numel() <= 500 and batch.tgt_in.numel() <= 500 and batch.tgt_out.numel() <= 500


def test_every_example_once_per_epoch(dataset: TranslationDataset) -> None:
    sampler = TokenBudgetBatchSampler(dataset.costs(), max_tokens=500, chunk_size=512, seed=0)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        assert sorted(i for batch in sampler for i in batch) == list(range(len(dataset)))


def test_order_is_a_function_of_seed_and_epoch(dataset: TranslationDataset) -> None:
    def order(seed: int, epoch: int) -> list[list[int]]:
        sampler = TokenBudgetBatchSampler(dataset.costs(), max_tokens=500, chunk_size=512, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4)
    assert order(0, 3) != order(1, 3)


def test_resume_skips_the_first_batches(dataset: TranslationDataset) -> None:
    sampler = TokenBudgetBatchSampler(dataset.costs(), max_tokens=500, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    resumed = TokenBudgetBatchSampler(dataset.costs(), max_tokens=500, seed=5)
    resumed.set_epoch(2, skip_batches=7)
    assert len(resumed) == len(full) - 7
    assert list(resumed) == full[7:]
    resumed.set_epoch(3)
    assert len(list(resumed)) == len(resumed)


def test_length_bucketing_reduces_padding(dataset: TranslationDataset) -> None:
    costs = dataset.costs()
    bucketed = TokenBudgetBatchSampler(costs, 500, chunk_size=1024).batches_for_epoch(0)
    unsorted = [list(range(start, start + 10)) for start in range(0, len(costs) - 10, 10)]  # ~ bucketed size
    assert len(costs) / len(bucketed) > 10
    assert _padded_fraction(costs, bucketed) < 0.05 < 0.2 < _padded_fraction(costs, unsorted)


def test_unshuffled_order_is_sorted_and_epoch_free(dataset: TranslationDataset) -> None:
    sampler = TokenBudgetBatchSampler(dataset.costs(), max_tokens=500, shuffle=False)
    costs = dataset.costs()
    flat = [costs[i] for batch in sampler.batches_for_epoch(0) for i in batch]
    assert flat == sorted(flat)
    assert sampler.batches_for_epoch(0) == sampler.batches_for_epoch(9)


def test_example_over_budget_is_an_error() -> None:
    with pytest.raises(ValueError, match="example 1 needs 9 tokens, more than max_tokens \\(8\\)"):
        TokenBudgetBatchSampler([3, 9, 2], max_tokens=8)


def test_collate_shifts_and_pads() -> None:
    dataset = TranslationDataset([[10, 11, 12], [20]], [[30], [40, 41, 42, 43]], max_length=10)
    batch = collate_translation([dataset[0], dataset[1]])
    assert batch.src.tolist() == [[10, 11, 12], [20, PAD_ID, PAD_ID]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 30, PAD_ID, PAD_ID, PAD_ID], [BOS_ID, 40, 41, 42, 43]]
    assert batch.tgt_out.tolist() == [[30, EOS_ID, PAD_ID, PAD_ID, PAD_ID], [40, 41, 42, 43, EOS_ID]]
    assert batch.src_lengths.tolist() == [3, 1] and batch.tgt_lengths.tolist() == [2, 5]
    assert batch.indices.tolist() == [0, 1] and batch.num_target_tokens == 7
    assert batch.src.dtype == torch.long and batch.to("cpu").tgt_out.equal(batch.tgt_out)


def test_from_pairs_uses_each_side_tokenizer(small_tokenizer: TranslationTokenizer) -> None:
    pairs = [("three hundred and twelve", "三百十二"), ("Insert a table.", "表を挿入します。")]
    dataset = TranslationDataset.from_pairs(pairs, small_tokenizer, max_length=32)
    batch = collate_translation([dataset[0], dataset[1]])
    assert small_tokenizer.target.decode(batch.tgt_out.tolist()) == ["三百十二", "表を挿入します。"]
    assert small_tokenizer.source.decode(batch.src.tolist()) == ["three hundred and twelve", "Insert a table."]


# ----------------------------------------------------------------------------- pad_to_multiple


def test_pad_to_multiple_rounds_both_sides_and_keeps_the_rows():
    examples = [TranslationExample(0, [5, 6, 7], [8, 9]), TranslationExample(1, [5] * 9, [8])]
    plain, padded = collate_translation(examples), collate_translation(examples, pad_to_multiple=8)
    assert tuple(plain.src.shape) == (2, 9) and tuple(padded.src.shape) == (2, 16)
    assert tuple(plain.tgt_in.shape) == (2, 3) and tuple(padded.tgt_in.shape) == (2, 8)
    for name in ("src", "tgt_in", "tgt_out"):
        small, big = getattr(plain, name), getattr(padded, name)
        assert torch.equal(big[:, : small.shape[1]], small)
        assert big[:, small.shape[1] :].eq(PAD_ID).all()
    assert torch.equal(padded.tgt_lengths, plain.tgt_lengths)
    with pytest.raises(ValueError, match=r"pad_to_multiple \(0\) must be >= 1"):
        collate_translation(examples, pad_to_multiple=0)


def test_padded_batches_keep_the_token_budget():
    dataset = TranslationDataset([[4] * n for n in range(1, 60)], [[5] * (n % 17 + 1) for n in range(1, 60)], 64)
    sampler = TokenBudgetBatchSampler(dataset.costs(pad_to_multiple=8), max_tokens=96, seed=0)
    shapes = set()
    for indices in sampler:
        batch = collate_translation([dataset[i] for i in indices], pad_to_multiple=8)
        assert batch.src.numel() <= 96 and batch.tgt_in.numel() <= 96
        assert batch.src.shape[1] % 8 == 0 and batch.tgt_in.shape[1] % 8 == 0
        shapes.add((tuple(batch.src.shape), tuple(batch.tgt_in.shape)))
    unpadded = {
        (tuple(b.src.shape), tuple(b.tgt_in.shape))
        for b in (collate_translation([dataset[i] for i in indices]) for indices in sampler)
    }
    assert len(shapes) < len(unpadded)  # the point: fewer distinct shapes


def test_padding_to_a_multiple_leaves_the_transformers_logits_unchanged():
    from attnlab.models.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    config = TransformerConfig.from_preset("tiny", src_vocab_size=20, tgt_vocab_size=20)
    model = Transformer(config).double().eval()
    examples = [TranslationExample(0, [5, 6, 7, 8, 9], [10, 11, 12]), TranslationExample(1, [7, 8], [13])]
    plain, padded = collate_translation(examples), collate_translation(examples, pad_to_multiple=8)
    with torch.no_grad():
        expected = model(plain.src, plain.tgt_in)  # (B, T, V)
        got = model(padded.src, padded.tgt_in)[:, : plain.tgt_in.shape[1]]
    real = plain.tgt_out.ne(PAD_ID)  # (B, T): the positions a loss reads
    torch.testing.assert_close(got[real], expected[real], rtol=1e-12, atol=1e-12)
