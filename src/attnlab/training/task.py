"""The ``Task`` protocol: everything the one :class:`~attnlab.training.trainer.Trainer` needs to
know about a problem (data, model, loss, evaluation), and the factory that picks a task by name."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from attnlab.training.config import RunConfig

__all__ = ["Task", "build_task"]


@runtime_checkable
class Task(Protocol):
    """A trainable problem.

    Attributes:
        config: the run config.
        unit: what throughput counts, ``"images"`` or ``"tokens"``.
        eval_split: the split evaluated during training (``"val"``, ``"dev"``).
        selection_metric: the key of :meth:`evaluate`'s dict that picks the best checkpoint.
        selection_mode: ``"max"`` or ``"min"`` for that metric.
    """

    config: RunConfig
    unit: str
    eval_split: str
    selection_metric: str
    selection_mode: str

    def prepare(self, device: torch.device, restore_from: Path | None = None, *, need_data: bool = True) -> None:
        """Load data (if ``need_data``) and task state: from ``restore_from`` (a checkpoint) when given."""

    def build_model(self) -> nn.Module:
        """A freshly initialised model on the task's device; resolves the model config."""

    def resolved_config(self) -> RunConfig:
        """The run config with the model section completed by the data (vocabulary, classes)."""

    def model_width(self) -> int:
        """d_model of the noam schedule."""

    def batches_per_epoch(self) -> int:
        """Training batches in one epoch."""

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterable[Any]:
        """The batches of ``epoch`` in a fixed order, the first ``start_batch`` left out (resume)."""

    def batch_units(self, batch: Any) -> int:
        """Images or tokens in a batch, for throughput."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        """``(summed loss, count)``: the trainer minimises ``sum / count``."""

    def evaluate(self, model: nn.Module, split: str, output_dir: Path | None = None) -> dict[str, Any]:
        """Metrics on a split (the model in eval mode, no grad); writes reports under ``output_dir``."""

    def write_extras(self, directory: Path) -> None:
        """Files a checkpoint needs besides weights and config (tokenizer, image spec)."""


def build_task(config: RunConfig) -> Task:
    """The task named by ``config.task``."""
    if config.task == "classification":
        from attnlab.training.classification import ClassificationTask

        return ClassificationTask(config)
    if config.task == "translation":
        from attnlab.training.translation import TranslationTask

        return TranslationTask(config)
    raise ValueError(f"unknown task {config.task!r}; expected 'classification' or 'translation'")
