"""Image classification data: Fashion-MNIST, scikit-learn digits, class folders, batching.

Every set is held whole in memory as a uint8 tensor (N, C, H, W); conversion to float,
augmentation and normalisation happen per batch (:mod:`attnlab.data.image_transforms`).
This module gathers the image API from where it lives:

- :mod:`attnlab.data.image_dataset`: :class:`ImageDataset`, :class:`ImageSpec`, :class:`ImageSplits`,
  :func:`split_dataset`;
- :mod:`attnlab.data.idx`: the IDX file format;
- :mod:`attnlab.data.fashion_mnist` and :mod:`attnlab.data.digits`: the built-in sets;
- :mod:`attnlab.data.image_files`: class folders and :func:`load_image` for inference;
- :mod:`attnlab.data.image_loader`: :class:`TensorImageLoader`.

Notation: N examples, B batch, C channels (1 or 3), H height, W width.
"""

from attnlab.data.digits import DIGITS_AUGMENTATION, DIGITS_CLASSES, load_digits
from attnlab.data.fashion_mnist import (
    FASHION_MNIST_AUGMENTATION,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SHA256,
    fashion_mnist_arrays,
    load_fashion_mnist,
)
from attnlab.data.idx import IdxFormatError, parse_idx, read_idx
from attnlab.data.image_dataset import ImageDataset, ImageSpec, ImageSplits, split_dataset, validate_labels
from attnlab.data.image_files import (
    ImageConversion,
    ImageFolderDataset,
    ImageInputError,
    SkippedFile,
    image_conversion,
    load_image,
)
from attnlab.data.image_loader import TensorImageLoader
from attnlab.data.image_transforms import ImageAugmentation, ImageNormalization

__all__ = [
    "DIGITS_AUGMENTATION",
    "DIGITS_CLASSES",
    "FASHION_MNIST_AUGMENTATION",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_SHA256",
    "IdxFormatError",
    "ImageAugmentation",
    "ImageConversion",
    "ImageDataset",
    "ImageFolderDataset",
    "ImageInputError",
    "ImageNormalization",
    "ImageSpec",
    "ImageSplits",
    "SkippedFile",
    "TensorImageLoader",
    "fashion_mnist_arrays",
    "image_conversion",
    "load_digits",
    "load_fashion_mnist",
    "load_image",
    "parse_idx",
    "read_idx",
    "split_dataset",
    "validate_labels",
]
