"""Image classification as a :class:`~attnlab.training.task.Task`: ViT or attention CNN on digits,
Fashion-MNIST or a folder of class folders.

Shapes: B batch, C channels, H x W image, K classes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.data.images import (
    ImageAugmentation,
    ImageFolderDataset,
    ImageSpec,
    ImageSplits,
    TensorImageLoader,
    load_digits,
    load_fashion_mnist,
    split_dataset,
)
from attnlab.training.config import ConfigError, ImageDataConfig, RunConfig
from attnlab.training.metrics import classification_metrics, save_confusion_matrix_png

__all__ = ["IMAGE_SPEC_FILE", "ClassificationTask", "load_image_splits"]

IMAGE_SPEC_FILE = "image_spec.json"
_SPLITS = {"train", "val", "test"}


def load_image_splits(data: ImageDataConfig) -> ImageSplits:
    """The train/val/test sets named by ``data.dataset``."""
    if data.dataset == "digits":
        return load_digits(data.val_fraction, data.test_fraction, data.split_seed)
    if data.dataset == "fashion-mnist":
        return load_fashion_mnist(val_size=data.val_size, seed=data.split_seed)
    root = data.dataset.removeprefix("folder:")
    dataset = ImageFolderDataset(root, channels=data.channels, image_size=data.image_size)
    return split_dataset(dataset, data.val_fraction, data.test_fraction, data.split_seed)


class ClassificationTask:
    """Cross-entropy classification of images; selects checkpoints on validation accuracy.

    Args:
        config: a run config with ``task: classification`` and a ``vit`` or ``cnn`` model.
    """

    unit = "images"
    eval_split = "val"
    selection_metric = "accuracy"
    selection_mode = "max"

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.splits: ImageSplits | None = None
        self.spec: ImageSpec | None = None
        self.model_config: Any = None
        self.device = torch.device("cpu")

    # ----------------------------------------------------------------------------- setup
    def prepare(self, device: torch.device, restore_from: Path | None = None, *, need_data: bool = True) -> None:
        """Load the image sets (or, without data, the image spec saved in ``restore_from``)."""
        self.device = device
        if need_data:
            self.splits = load_image_splits(self.config.data)
            self.spec = self.splits.spec
        elif restore_from is not None:
            spec_path = Path(restore_from) / IMAGE_SPEC_FILE
            if not spec_path.is_file():
                raise FileNotFoundError(f"checkpoint {restore_from} is incomplete: missing {IMAGE_SPEC_FILE}")
            self.spec = ImageSpec.from_dict(json.loads(spec_path.read_text(encoding="utf-8")))
        else:
            raise ValueError("prepare needs data or a checkpoint to read the image spec from")
        self._loader = None

    def _derived_model_fields(self) -> dict[str, Any]:
        spec = self.spec
        derived: dict[str, Any] = {"in_channels": spec.channels, "num_classes": len(spec.classes)}
        if self.config.model.type == "vit":
            height, width = spec.image_size
            if height != width:
                raise ConfigError(f"the ViT needs square images, the data has {height}x{width}")
            derived["image_size"] = height
        return derived

    def build_model(self) -> nn.Module:
        """A ViT or AttentionCNN whose input and head fit the data."""
        self.model_config = self.config.model.resolve(**self._derived_model_fields())
        return self.config.model.build(self.model_config).to(self.device)

    def resolved_config(self) -> RunConfig:
        """The config with every model field written out."""
        model = dataclasses.replace(self.config.model, preset=None, params=self.model_config.to_dict())
        return dataclasses.replace(self.config, model=model)

    def model_width(self) -> int:
        c = self.model_config
        return c.embed_dim if hasattr(c, "embed_dim") else c.channels[-1]

    # ----------------------------------------------------------------------------- training
    def _train_loader(self) -> TensorImageLoader:
        if self._loader is None:
            data = self.config.data
            augmentation = self._augmentation() if data.augment else None
            self._loader = TensorImageLoader(
                self.splits.train, data.batch_size, shuffle=True, augmentation=augmentation, seed=self.config.seed
            )
        return self._loader

    def _augmentation(self) -> ImageAugmentation:
        """The data set's recommended augmentation with the config's replacements."""
        data, recommended = self.config.data, self.splits.augmentation
        return dataclasses.replace(
            recommended,
            crop_padding=recommended.crop_padding if data.crop_padding is None else data.crop_padding,
            horizontal_flip=recommended.horizontal_flip if data.horizontal_flip is None else data.horizontal_flip,
        )

    def batches_per_epoch(self) -> int:
        return len(self._train_loader())

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        loader = self._train_loader()
        loader.set_epoch(epoch, start_batch)
        return loader

    def batch_units(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int(batch[1].shape[0])

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed (label-smoothed) cross-entropy over the batch and its size."""
        images, labels = (t.to(self.device) for t in batch)
        logits = model(images).float()  # (B, K)
        loss = F.cross_entropy(logits, labels, reduction="sum", label_smoothing=self.config.training.label_smoothing)
        return loss, int(labels.shape[0])

    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, model: nn.Module, split: str, output_dir: Path | None = None) -> dict[str, Any]:
        """Loss, accuracy, per-class accuracy and confusion matrix; the matrix as a PNG in ``output_dir``."""
        if split not in _SPLITS:
            raise ValueError(f"split {split!r} is not one of {sorted(_SPLITS)}")
        dataset = getattr(self.splits, split)
        loader = TensorImageLoader(dataset, self.config.data.eval_batch_size, shuffle=False)
        total_loss, predictions = 0.0, []
        for images, labels in loader:
            logits = model(images.to(self.device)).float()  # (B, K)
            total_loss += float(F.cross_entropy(logits, labels.to(self.device), reduction="sum"))
            predictions.append(logits.argmax(dim=-1).cpu())
        metrics = {
            "loss": total_loss / max(len(dataset), 1),
            "examples": len(dataset),
            **classification_metrics(torch.cat(predictions), dataset.labels, dataset.classes),
        }
        if output_dir is not None:
            path = Path(output_dir) / f"confusion_{split}.png"
            save_confusion_matrix_png(
                metrics["confusion_matrix"], dataset.classes, path, title=f"{split}: accuracy {metrics['accuracy']:.4f}"
            )
            metrics["confusion_matrix_png"] = str(path)
        return metrics

    def write_extras(self, directory: Path) -> None:
        """``image_spec.json``: channels, size, class names and normalisation for inference."""
        (Path(directory) / IMAGE_SPEC_FILE).write_text(json.dumps(self.spec.to_dict(), indent=2))
