"""What a training run reports while it trains: progress events, ``metrics.jsonl`` records (the
loss window between two ``train`` records) and warnings for skipped batches; the processes other
than rank 0 report nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnlab.training.config import TrainingConfig
from attnlab.training.metrics import MetricsLogger
from attnlab.training.state import ProgressEvent, TrainerState, total_steps
from attnlab.training.step import StepResult
from attnlab.training.task import Task

__all__ = ["LossWindow", "NoMetrics", "Reporter"]

logger = logging.getLogger(__name__)


class NoMetrics:
    """The metrics log of a process other than rank 0: writes nothing."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class LossWindow:
    """The mean loss and throughput over the steps since the last ``train`` record.

    Args:
        unit: what throughput counts (``tokens``, ``images``): the record's key is ``{unit}_per_second``.
    """

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.loss, self.steps, self.units = 0.0, 0, 0
        self.started = time.monotonic()

    def add(self, loss: float, units: int) -> None:
        """Count one step's mean loss and its tokens (images)."""
        if self.steps == 0:
            self.started = time.monotonic()
        self.loss, self.steps, self.units = self.loss + loss, self.steps + 1, self.units + units

    def pending(self) -> dict[str, float]:
        """What the next record will average (to save with a checkpoint)."""
        return {"loss": self.loss, "steps": self.steps, "units": self.units}

    def resume(self, pending: dict[str, float]) -> None:
        """Continue the window that :meth:`pending` returned (empty: start a new one)."""
        self.loss, self.steps, self.units = pending.get("loss", 0.0), pending.get("steps", 0), pending.get("units", 0)
        self.started = time.monotonic()

    def record(self) -> dict[str, float]:
        """The window's mean loss and throughput; starts a new window."""
        seconds = max(time.monotonic() - self.started, 1e-9)
        values = {"loss": self.loss / max(self.steps, 1), f"{self.unit}_per_second": self.units / seconds}
        self.loss, self.steps, self.units = 0.0, 0, 0
        return values


class Reporter:
    """Where a :class:`~attnlab.training.trainer.Trainer` reports: the progress callback (steps,
    evaluations, skips, checkpoints, the end), ``metrics.jsonl`` (and TensorBoard) and ``logging``.

    Args:
        task: the task (its throughput unit and batches per epoch).
        training: the training section (``log_every`` and the budgets).
        progress: called with a :class:`ProgressEvent`, or None.
    """

    def __init__(self, task: Task, training: TrainingConfig, progress: Callable[[ProgressEvent], None] | None) -> None:
        self.task, self.training = task, training
        self.progress = progress or (lambda event: None)
        self.metrics: MetricsLogger | NoMetrics = NoMetrics()
        self._window = LossWindow(task.unit)

    def open(self, run_dir: Path, is_main: bool) -> None:
        """Start writing ``run_dir/metrics.jsonl`` (rank 0); any other process reports nothing."""
        if is_main:
            self.metrics = MetricsLogger(run_dir, tensorboard=self.training.tensorboard)
        else:
            self.progress = lambda event: None

    def event(self, kind: str, state: TrainerState, **values: Any) -> None:
        """One :class:`ProgressEvent` to the callback."""
        self.progress(
            ProgressEvent(
                kind=kind,
                step=state.step,
                total_steps=total_steps(self.training, self.task.batches_per_epoch()),
                epoch=state.epoch,
                unit=self.task.unit,
                elapsed_seconds=state.elapsed_seconds,
                **values,
            )
        )

    def pending_window(self) -> dict[str, float]:
        """The loss window not yet logged (see :attr:`TrainerState.loss_window`)."""
        return self._window.pending()

    def resume_window(self, pending: dict[str, float]) -> None:
        """Continue a saved loss window, so that the next ``train`` record averages the same steps."""
        self._window.resume(pending)

    def step(self, state: TrainerState, result: StepResult, lr: float) -> None:
        """An optimiser step: an event, and every ``log_every`` steps a ``train`` record."""
        self._window.add(result.loss, result.units)
        self.event("step", state, loss=result.loss, lr=lr, units=result.units)
        if state.step % self.training.log_every == 0:
            record = {"epoch": state.epoch, "lr": lr, "grad_norm": result.grad_norm, **self._window.record()}
            self.metrics.log("train", state.step, record)

    def skip(self, state: TrainerState, error: Exception) -> str:
        """A skipped batch: a warning, a ``skip`` record and an event; returns the message."""
        batch = state.batch_in_epoch - 1
        message = (
            f"skipped epoch {state.epoch} batch {batch} (after step {state.step}): {type(error).__name__}: {error}"
        )
        logger.warning(message)
        self.metrics.log("skip", state.step, {"epoch": state.epoch, "batch": batch, "error": str(error)})
        self.event("skip", state, message=message)
        return message
