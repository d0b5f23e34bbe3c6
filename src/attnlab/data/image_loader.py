"""Seeded, shuffled, resumable batches from an in-memory image set, without worker processes.

For 28x28 images this is faster on CPU than a ``DataLoader``. Notation: N examples, B batch,
C channels, H height, W width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from attnlab.data.image_dataset import ImageDataset
from attnlab.data.image_transforms import ImageAugmentation, preprocess_batch

__all__ = ["TensorImageLoader"]


def _seeded_generator(*entropy: int) -> torch.Generator:
    """A torch generator whose seed mixes all of ``entropy`` (numpy SeedSequence)."""
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


class TensorImageLoader:
    """Shuffled, augmented, normalised batches straight from an in-memory :class:`ImageDataset`.

    The order of epoch ``e`` depends only on ``(seed, e)`` and the augmentation of batch ``i``
    only on ``(seed, e, i)``, so skipping batches reproduces an interrupted epoch exactly.
    Call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``.

    Args:
        dataset: the examples; its ``normalization`` is applied to every batch.
        batch_size: B.
        shuffle: permute each epoch; False keeps dataset order (evaluation).
        drop_last: drop a final batch smaller than B.
        augmentation: applied to every batch in [0, 1] pixel space; None for evaluation.
        seed: base seed for shuffling and augmentation.

    Yields:
        ``(images, labels)``: float32 (B, C, H, W) and int64 (B,).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        augmentation: ImageAugmentation | None = None,
        seed: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self._start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate next, optionally resuming after ``start_batch`` batches.

        ``start_batch`` applies to the next iteration only.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch = epoch
        self._start_batch = start_batch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=_seeded_generator(self.seed, self.epoch, 0))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self._start_batch = self._start_batch, 0
        order = self._order()  # (N,)
        for i in range(start, len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]  # (B,)
            generator = None
            if self.augmentation is not None:
                generator = _seeded_generator(self.seed, self.epoch, 1, i)
            images = preprocess_batch(
                self.dataset.images[index], self.dataset.normalization, self.augmentation, generator
            )  # (B, C, H, W)
            yield images, self.dataset.labels[index]
