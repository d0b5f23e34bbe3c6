"""TensorImageLoader: every example once per epoch, seeded order and augmentation, exact resume."""

import pytest
import torch

from attnlab.data.fashion_mnist import FASHION_MNIST_AUGMENTATION
from attnlab.data.image_dataset import ImageDataset
from attnlab.data.image_loader import TensorImageLoader
from attnlab.data.image_transforms import ImageNormalization


@pytest.fixture
def indexed_dataset() -> ImageDataset:
    """103 one-pixel images whose value is their index, labels index % 3."""
    n = 103
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1)
    return ImageDataset(images, torch.arange(n) % 3, ["a", "b", "c"])


def batch_ids(batches) -> list[list[int]]:
    return [torch.round(x.flatten() * 255).long().tolist() for x, _ in batches]


def test_loader_covers_each_example_once_with_labels(indexed_dataset):
    loader = TensorImageLoader(indexed_dataset, batch_size=10, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 11 and batches[-1][0].shape == (3, 1, 1, 1)
    ids = [i for batch in batch_ids(batches) for i in batch]
    assert sorted(ids) == list(range(103)) and ids != list(range(103))
    for x, y in batches:
        assert y.dtype == torch.int64 and torch.equal(y, torch.round(x.flatten() * 255).long() % 3)
    dropped = TensorImageLoader(indexed_dataset, batch_size=10, drop_last=True)
    assert len(dropped) == 10 == len(list(dropped))
    ordered = TensorImageLoader(indexed_dataset, batch_size=50, shuffle=False)
    assert batch_ids(ordered)[0] == list(range(50))


def test_loader_is_deterministic_per_seed_and_epoch(indexed_dataset):
    def epoch_ids(seed, epoch):
        loader = TensorImageLoader(indexed_dataset, batch_size=16, seed=seed)
        loader.set_epoch(epoch)
        return batch_ids(loader)

    assert epoch_ids(0, 0) == epoch_ids(0, 0)
    assert epoch_ids(0, 0) != epoch_ids(0, 1)
    assert epoch_ids(0, 0) != epoch_ids(1, 0)


def test_loader_resume_skips_batches_exactly():
    images = torch.randint(0, 256, (50, 1, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ds = ImageDataset(images, torch.zeros(50, dtype=torch.long), ["x"], ImageNormalization((0.5,), (0.3,)))
    loader = TensorImageLoader(ds, batch_size=8, seed=5, augmentation=FASHION_MNIST_AUGMENTATION)
    loader.set_epoch(3)
    full = list(loader)
    loader.set_epoch(3, start_batch=4)
    resumed = list(loader)
    assert len(resumed) == len(full) - 4
    for (a, _), (b, _) in zip(full[4:], resumed):
        assert torch.equal(a, b)
    assert len(list(loader)) == len(full)  # start_batch applies once
    with pytest.raises(ValueError, match=r"start_batch must be in \[0, 7\], got 9"):
        loader.set_epoch(0, start_batch=9)
