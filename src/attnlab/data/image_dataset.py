"""The common shape of every image set: uint8 (N, C, H, W) in memory, labels, a spec, splits.

Conversion to float, augmentation and normalisation happen per batch
(:mod:`attnlab.data.image_transforms`).

Notation: N examples, C channels (1 or 3), H height, W width, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from attnlab.config import ConfigMixin
from attnlab.data.image_transforms import ImageAugmentation, ImageNormalization, preprocess_batch

__all__ = [
    "ImageDataset",
    "ImageSpec",
    "ImageSplits",
    "normalized_splits",
    "split_dataset",
    "stratified_holdout",
    "validate_labels",
]


def validate_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Check that every label is an integer in ``[0, num_classes)``.

    Args:
        labels: integer tensor (N,).
        num_classes: number of classes K.

    Raises:
        TypeError: labels are not integers.
        ValueError: a label out of range, naming the value, its index and K.
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise ValueError(
            f"label {int(labels[i])} at index {i} is out of range for {num_classes} classes "
            f"(expected 0..{num_classes - 1})"
        )


@dataclass(frozen=True)
class ImageSpec(ConfigMixin):
    """What a trained classifier expects of its input; saved in checkpoints for inference.

    Attributes:
        channels: C, 1 (grayscale) or 3 (RGB).
        image_size: (H, W).
        classes: class names, index = label.
        normalization: the training split's statistics, or None for pixels in [0, 1].
    """

    channels: int
    image_size: tuple[int, int]
    classes: tuple[str, ...]
    normalization: ImageNormalization | None = None


class ImageDataset(Dataset):
    """An in-memory labelled image set.

    ``dataset[i]`` is ``(image, label)``: a float32 tensor (C, H, W), normalised if
    ``normalization`` is set (else in [0, 1]), and an int. Batches for training come faster
    from :class:`TensorImageLoader`, which reads :attr:`images` directly.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: integer tensor or array (N,), values in ``[0, len(classes))``.
        classes: class names, index = label.
        normalization: per-channel statistics applied by ``__getitem__`` and the loader.

    Raises:
        ValueError: wrong dtype or rank, N mismatch, no classes, or a label out of range.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | np.ndarray,
        classes: Sequence[str],
        normalization: ImageNormalization | None = None,
    ) -> None:
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got dtype {images.dtype} shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        if not classes:
            raise ValueError("an image dataset needs at least one class name")
        validate_labels(labels, len(classes))
        if normalization is not None and normalization.channels != images.shape[1]:
            raise ValueError(f"normalisation has {normalization.channels} channels, images have {images.shape[1]}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = tuple(classes)
        self.normalization = normalization

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = preprocess_batch(self.images[index][None], self.normalization)[0]  # (C, H, W)
        return image, int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """C."""
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return (self.images.shape[2], self.images.shape[3])

    @property
    def spec(self) -> ImageSpec:
        """The input contract a model trained on this set inherits."""
        return ImageSpec(self.channels, self.image_size, self.classes, self.normalization)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """A new dataset of the given examples, same classes and normalisation."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageDataset(self.images[index], self.labels[index], self.classes, self.normalization)

    def with_normalization(self, normalization: ImageNormalization | None) -> ImageDataset:
        """The same tensors with other statistics."""
        return ImageDataset(self.images, self.labels, self.classes, normalization)


@dataclass(frozen=True)
class ImageSplits:
    """Train / validation / test sets sharing the training split's normalisation.

    Attributes:
        train: the training examples; its statistics normalise all three.
        val: held out from the training data for model selection.
        test: the set for final numbers.
        augmentation: the augmentation recommended for this data when training.
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    augmentation: ImageAugmentation

    @property
    def normalization(self) -> ImageNormalization | None:
        """The training split's per-channel statistics."""
        return self.train.normalization

    @property
    def spec(self) -> ImageSpec:
        """Input contract for a model trained on :attr:`train`."""
        return self.train.spec


def stratified_holdout(indices: np.ndarray, labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, held out) with ``size`` held out, class proportions kept."""
    if size == 0:
        return np.sort(indices), np.empty(0, dtype=np.int64)
    from sklearn.model_selection import train_test_split  # slow import, only when splitting

    kept, held = train_test_split(indices, test_size=size, stratify=labels[indices], random_state=seed)
    return np.sort(kept), np.sort(held)


def normalized_splits(
    train: ImageDataset, val: ImageDataset, test: ImageDataset, augmentation: ImageAugmentation
) -> ImageSplits:
    """Give all three sets the statistics of ``train`` alone (no leak from val/test)."""
    norm = ImageNormalization.from_images(train.images)
    return ImageSplits(
        train.with_normalization(norm), val.with_normalization(norm), test.with_normalization(norm), augmentation
    )


def split_dataset(
    dataset: ImageDataset,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    augmentation: ImageAugmentation | None = None,
) -> ImageSplits:
    """Deterministic stratified train / val / test split of one labelled set.

    Args:
        dataset: all examples (e.g. an :class:`ImageFolderDataset`).
        val_fraction: share of all examples held out for validation, in [0, 1).
        test_fraction: share held out for testing, in [0, 1); the two sum below 1.
        seed: fixes the split.
        augmentation: recommended training augmentation; default none.

    Returns:
        :class:`ImageSplits` with disjoint, sorted index sets and train-split normalisation.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 and sum below 1"
        )
    n = len(dataset)
    labels = dataset.labels.numpy()
    rest, test_idx = stratified_holdout(np.arange(n), labels, round(n * test_fraction), seed)
    train_idx, val_idx = stratified_holdout(rest, labels, round(n * val_fraction), seed)
    return normalized_splits(
        dataset.subset(train_idx),
        dataset.subset(val_idx),
        dataset.subset(test_idx),
        augmentation or ImageAugmentation(),
    )
