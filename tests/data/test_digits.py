"""scikit-learn's digits: complete, stratified, seeded splits normalised by the training split alone."""

import numpy as np
import pytest
import torch

from attnlab.data.digits import load_digits
from attnlab.data.image_dataset import split_dataset


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def test_digits_split_is_disjoint_stratified_and_complete(digits):
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797 and sizes[1] == round(1797 * 0.1) and sizes[2] == round(1797 * 0.2)
    all_images = torch.cat([digits.train.images, digits.val.images, digits.test.images])
    assert all_images.shape[1:] == (1, 8, 8) and int(all_images.max()) == 255
    counts = np.bincount(np.concatenate([s.labels.numpy() for s in (digits.train, digits.val, digits.test)]))
    for split in (digits.train, digits.val, digits.test):
        share = np.bincount(split.labels.numpy(), minlength=10) / len(split)
        np.testing.assert_allclose(share, counts / counts.sum(), atol=0.02)
    assert digits.augmentation.horizontal_flip is False


def test_digits_split_is_deterministic(digits):
    again = load_digits(seed=0)
    assert torch.equal(again.val.images, digits.val.images)
    assert torch.equal(again.test.labels, digits.test.labels)
    assert not torch.equal(load_digits(seed=1).val.images, digits.val.images)


def test_digits_normalisation_comes_from_train_only(digits):
    pixels = digits.train.images.numpy() / 255.0
    assert digits.normalization == digits.val.normalization == digits.test.normalization
    np.testing.assert_allclose(digits.normalization.mean, [pixels.mean()], rtol=1e-10)
    np.testing.assert_allclose(digits.normalization.std, [pixels.std()], rtol=1e-10)


def test_split_dataset_rejects_bad_fractions(digits):
    with pytest.raises(ValueError, match=r"val_fraction \(0.6\) and test_fraction \(0.5\)"):
        split_dataset(digits.train, 0.6, 0.5)
