"""Token-id datasets and token-budget batches for sequence-to-sequence training.

Batches are built by token count, not sentence count (Vaswani et al., 2017, sec. 5.1: "each
training batch contained a set of sentence pairs containing approximately 25000 source tokens and
25000 target tokens"). Per epoch the examples are shuffled, cut into large chunks, sorted by length
within a chunk (so a batch holds similar lengths and little padding), packed greedily under the
budget, and the batches shuffled. The order is a pure function of ``(seed, epoch)``, so a resumed
run rebuilds it and skips the batches it already saw::

    dataset = TranslationDataset.from_pairs(corpus.train, tokenizer, max_length=128)
    sampler = TokenBudgetBatchSampler(dataset.costs(), max_tokens=4096, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_translation)
    sampler.set_epoch(epoch, skip_batches=step_in_epoch)

Shape legend: B batch size, S source length, T target length (+1 for BOS or EOS), all padded
with :data:`~attnlab.data.tokenizer.PAD_ID` to the longest in the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from attnlab.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, TranslationTokenizer

__all__ = [
    "TokenBudgetBatchSampler",
    "TranslationBatch",
    "TranslationDataset",
    "TranslationExample",
    "collate_translation",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranslationExample:
    """One tokenised pair.

    Attributes:
        index: position of the pair in the sequence given to the dataset (survives dropping).
        src: source ids, no specials.
        tgt: target ids, no specials.
    """

    index: int
    src: list[int]
    tgt: list[int]

    @property
    def cost(self) -> int:
        """Padded width this example needs: ``max(S, T)`` with ``T = len(tgt) + 1``."""
        return max(len(self.src), len(self.tgt) + 1)


class TranslationDataset(Dataset[TranslationExample]):
    """Tokenised ``(source, target)`` pairs, without the pairs longer than ``max_length``.

    Args:
        src_ids: source id sequences.
        tgt_ids: target id sequences, as many.
        max_length: a pair whose source or target has more ids is dropped (counted in
            :attr:`dropped`, logged), not an error.
    """

    def __init__(self, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], max_length: int) -> None:
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"src_ids ({len(src_ids)}) and tgt_ids ({len(tgt_ids)}) must have the same length")
        if max_length < 1:
            raise ValueError(f"max_length ({max_length}) must be >= 1")
        self.max_length = max_length
        self.examples: list[TranslationExample] = []
        self.dropped: list[int] = []
        for index, (src, tgt) in enumerate(zip(src_ids, tgt_ids)):
            if len(src) > max_length or len(tgt) > max_length:
                self.dropped.append(index)
            else:
                self.examples.append(TranslationExample(index, list(src), list(tgt)))
        if self.dropped:
            logger.warning(
                "dropped %d of %d pairs longer than max_length=%d tokens (first indices: %s)",
                len(self.dropped),
                len(src_ids),
                max_length,
                self.dropped[:5],
            )

    @classmethod
    def from_pairs(
        cls, pairs: Sequence[tuple[str, str]], tokenizer: TranslationTokenizer, max_length: int
    ) -> TranslationDataset:
        """Tokenise ``(source, target)`` strings with the source and target tokenisers."""
        src_ids = tokenizer.source.encode([source for source, _ in pairs])
        tgt_ids = tokenizer.target.encode([target for _, target in pairs])
        return cls(src_ids, tgt_ids, max_length)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, position: int) -> TranslationExample:
        return self.examples[position]

    def costs(self, pad_to_multiple: int = 1) -> list[int]:
        """:attr:`TranslationExample.cost` of each example, rounded up to a multiple of
        ``pad_to_multiple`` as :func:`collate_translation` pads, for :class:`TokenBudgetBatchSampler`."""
        return [padded_width(example.cost, pad_to_multiple) for example in self.examples]


def _pack(order: np.ndarray, costs: np.ndarray, max_tokens: int) -> list[list[int]]:
    """Greedy packing of examples sorted by ascending cost: a batch costs ``len * max cost``."""
    batches: list[list[int]] = []
    current: list[int] = []
    for position in order.tolist():
        if current and (len(current) + 1) * int(costs[position]) > max_tokens:
            batches.append(current)
            current = []
        current.append(position)
    if current:
        batches.append(current)
    return batches


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions whose padded size stays within ``max_tokens``.

    Every batch satisfies ``B * S <= max_tokens`` and ``B * T <= max_tokens`` for its padded
    ``src`` and ``tgt_in``/``tgt_out``; each example appears exactly once per epoch.

    Args:
        costs: padded width of each example (:meth:`TranslationDataset.costs`).
        max_tokens: token budget of one padded tensor of the batch.
        chunk_size: examples shuffled together then sorted by length; larger means less
            padding and less randomness.
        shuffle: shuffle examples and batches; ``False`` sorts the whole set (for evaluation).
        seed: with the epoch, fixes the order.
    """

    def __init__(
        self, costs: Sequence[int], max_tokens: int, chunk_size: int = 4096, shuffle: bool = True, seed: int = 0
    ) -> None:
        self.costs = np.asarray(costs, dtype=np.int64)
        if len(self.costs) and int(self.costs.max()) > max_tokens:
            worst = int(self.costs.argmax())
            raise ValueError(
                f"example {worst} needs {int(self.costs[worst])} tokens, more than max_tokens ({max_tokens}); "
                "raise max_tokens or lower the dataset's max_length"
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size ({chunk_size}) must be >= 1")
        self.max_tokens, self.chunk_size, self.shuffle, self.seed = max_tokens, chunk_size, shuffle, seed
        self.epoch, self.skip_batches = 0, 0
        self._plan: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch whose order to yield, leaving out its first ``skip_batches`` batches (resume)."""
        if skip_batches < 0:
            raise ValueError(f"skip_batches ({skip_batches}) must be >= 0")
        self.epoch, self.skip_batches = epoch, skip_batches

    def batches_for_epoch(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` in order; a pure function of ``(seed, epoch)`` and the settings."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.costs)) if self.shuffle else np.arange(len(self.costs))
        chunk = self.chunk_size if self.shuffle else max(len(self.costs), 1)
        batches: list[list[int]] = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            batches += _pack(part[np.argsort(self.costs[part], kind="stable")], self.costs, self.max_tokens)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._plan = (epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches_for_epoch(self.epoch)[self.skip_batches :])

    def __len__(self) -> int:
        return max(len(self.batches_for_epoch(self.epoch)) - self.skip_batches, 0)


@dataclass
class TranslationBatch:
    """Padded tensors of one batch (pad id 0).

    Attributes:
        src: ``(B, S)`` source ids ``x``.
        src_lengths: ``(B,)`` unpadded source lengths.
        tgt_in: ``(B, T)`` decoder input ``BOS + y``.
        tgt_out: ``(B, T)`` decoder target ``y + EOS``.
        tgt_lengths: ``(B,)`` unpadded ``len(y) + 1``.
        indices: ``(B,)`` :attr:`TranslationExample.index` of each row.
    """

    src: torch.Tensor
    src_lengths: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    tgt_lengths: torch.Tensor
    indices: torch.Tensor

    def to(self, device: torch.device | str) -> TranslationBatch:
        """The batch on ``device``."""
        return TranslationBatch(**{name: value.to(device) for name, value in vars(self).items()})

    @property
    def num_target_tokens(self) -> int:
        """Non-pad positions of ``tgt_out``: the tokens a loss is averaged over."""
        return int(self.tgt_lengths.sum())


def padded_width(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple``."""
    return -(-length // multiple) * multiple


def _pad(sequences: Sequence[Sequence[int]], multiple: int = 1) -> torch.Tensor:
    width = padded_width(max((len(seq) for seq in sequences), default=0), multiple)
    padded = torch.full((len(sequences), width), PAD_ID, dtype=torch.long)  # (B, width)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return padded


def collate_translation(examples: Sequence[TranslationExample], pad_to_multiple: int = 1) -> TranslationBatch:
    """Pad a list of examples into a :class:`TranslationBatch` (teacher forcing: ``tgt_in`` is shifted right).

    ``pad_to_multiple`` rounds S and T up to its multiples: batches then come in a few shapes, whose
    tensors the allocator can reuse step after step (and SIMD kernels like multiples of 8).
    """
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple ({pad_to_multiple}) must be >= 1")
    return TranslationBatch(
        src=_pad([ex.src for ex in examples], pad_to_multiple),  # (B, S)
        src_lengths=torch.tensor([len(ex.src) for ex in examples], dtype=torch.long),
        tgt_in=_pad([[BOS_ID, *ex.tgt] for ex in examples], pad_to_multiple),  # (B, T)
        tgt_out=_pad([[*ex.tgt, EOS_ID] for ex in examples], pad_to_multiple),  # (B, T)
        tgt_lengths=torch.tensor([len(ex.tgt) + 1 for ex in examples], dtype=torch.long),
        indices=torch.tensor([ex.index for ex in examples], dtype=torch.long),
    )
