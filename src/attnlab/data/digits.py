"""scikit-learn's 8x8 handwritten digits: 1,797 images, no download needed."""

from __future__ import annotations

import numpy as np
import torch

from attnlab.data.image_dataset import ImageDataset, ImageSplits, split_dataset
from attnlab.data.image_transforms import ImageAugmentation

__all__ = ["DIGITS_AUGMENTATION", "DIGITS_CLASSES", "load_digits"]

DIGITS_CLASSES = tuple(str(d) for d in range(10))

# Digits are not left-right symmetric, so they only get a one-pixel jitter.
DIGITS_AUGMENTATION = ImageAugmentation(crop_padding=1, horizontal_flip=False)


def load_digits(
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    augmentation: ImageAugmentation = DIGITS_AUGMENTATION,
) -> ImageSplits:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), no download needed.

    Pixel values 0..16 are rescaled to 0..255 (``rint(v * 255 / 16)``) so that every image set in
    ``attnlab.data`` shares one uint8 convention.

    Args:
        val_fraction: share of all images for validation.
        test_fraction: share of all images for testing.
        seed: fixes the stratified split.
        augmentation: recommended training augmentation (1-pixel jitter, no flips).

    Returns:
        Splits of uint8 (N, 1, 8, 8) images.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    dataset = ImageDataset(torch.from_numpy(pixels)[:, None], bunch.target.astype(np.int64), DIGITS_CLASSES)
    return split_dataset(dataset, val_fraction, test_fraction, seed, augmentation)
