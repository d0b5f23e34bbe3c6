"""The in-memory image set: labels checked, items normalised, the spec saved, stratified splits."""

import numpy as np
import pytest
import torch

from attnlab.data.image_dataset import ImageDataset, ImageSpec, split_dataset, validate_labels
from attnlab.data.image_transforms import ImageNormalization


def test_validate_labels_names_value_and_class_count():
    with pytest.raises(ValueError, match=r"label 10 at index 2 is out of range for 10 classes \(expected 0..9\)"):
        validate_labels(torch.tensor([0, 9, 10]), 10)
    with pytest.raises(ValueError, match="label -1"):
        ImageDataset(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), [-1], ["a"])
    with pytest.raises(TypeError, match="float"):
        validate_labels(torch.tensor([0.0]), 2)


def test_image_dataset_items_and_spec():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5)
    norm = ImageNormalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ds = ImageDataset(images, np.array([1, 0]), ["x", "y"], norm)
    image, label = ds[0]
    assert image.shape == (3, 4, 5) and image.dtype == torch.float32 and label == 1 and type(label) is int
    assert torch.allclose(image, (images[0] / 255 - 0.5) / 0.25)
    assert (ds.num_classes, ds.channels, ds.image_size, ds.classes) == (2, 3, (4, 5), ("x", "y"))
    assert ImageSpec.from_dict(ds.spec.to_dict()) == ds.spec
    with pytest.raises(ValueError, match="labels shape"):
        ImageDataset(images, [0], ["x"])
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.float(), [0, 0], ["x"])


def test_split_dataset_is_disjoint_and_complete():
    n = 300  # two pixels encode each example's index, so splits can be traced back
    ids = torch.arange(n)
    images = torch.stack([ids // 256, ids % 256], dim=1).to(torch.uint8).reshape(n, 1, 1, 2)
    ds = ImageDataset(images, ids % 4, ["a", "b", "c", "d"])
    splits = split_dataset(ds, 0.1, 0.2, seed=3)
    parts = [
        set((s.images.reshape(len(s), 2).long() @ torch.tensor([256, 1])).tolist())
        for s in (splits.train, splits.val, splits.test)
    ]
    assert [len(p) for p in parts] == [210, 30, 60]
    assert set.union(*parts) == set(range(n)) and sum(len(p) for p in parts) == n
    for s in (splits.train, splits.val, splits.test):
        counts = np.bincount(s.labels.numpy(), minlength=4)
        assert counts.max() - counts.min() <= 1
