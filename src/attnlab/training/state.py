"""The trainer's counters and what it reports: :class:`TrainerState` (saved for exact resume),
:class:`ProgressEvent` (to a progress callback) and :class:`TrainResult` (how a run ended)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlab.training.config import TrainingConfig

__all__ = ["ProgressEvent", "TrainResult", "TrainerState", "budget_reason", "total_steps"]


@dataclass
class TrainerState:
    """The loop's counters, saved in ``trainer_state.pt``.

    Attributes:
        step: optimiser steps taken.
        epoch: the current epoch (0-based).
        batch_in_epoch: batches of ``epoch`` consumed (trained or skipped).
        best_metric: best value of the selection metric so far, or None.
        best_step: the step of ``best_metric``.
        evals_without_improvement: early-stopping counter.
        elapsed_seconds: training time over all sessions of this run.
        bad_batches: batches skipped for a non-finite loss or an error.
        loss_window: the train losses summed since the last ``train`` record (``loss``, ``steps``,
            ``units``), saved so that a resumed run writes the same records as one that never stopped.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    elapsed_seconds: float = 0.0
    bad_batches: int = 0
    loss_window: dict[str, float] = field(default_factory=dict)

    def record_evaluation(self, value: Any, mode: str) -> bool:
        """Count an evaluation whose selection metric is ``value`` (better when larger for ``mode``
        ``max``, smaller for ``min``); whether it is the new best (a NaN or missing value never is)."""
        improved = value is not None and math.isfinite(float(value))
        if improved and self.best_metric is not None:
            improved = value > self.best_metric if mode == "max" else value < self.best_metric
        if improved:
            self.best_metric, self.best_step, self.evals_without_improvement = float(value), self.step, 0
        else:
            self.evals_without_improvement += 1
        return improved


@dataclass
class ProgressEvent:
    """What the trainer reports to a progress callback.

    Attributes:
        kind: ``start``, ``step``, ``eval``, ``skip``, ``checkpoint`` or ``end``.
        step: optimiser steps so far.
        total_steps: the step budget (``max_steps`` or epochs times batches), None if only time-bound.
        epoch: the current epoch.
        loss: training loss of this step (``step``), or None.
        lr: learning rate of this step.
        units: images or tokens in this step's batch.
        unit: ``"images"`` or ``"tokens"``.
        elapsed_seconds: training time so far.
        metrics: evaluation metrics (``eval``, ``end``).
        message: a human-readable note (``skip``, ``checkpoint``, ``start``).
    """

    kind: str
    step: int
    total_steps: int | None = None
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    units: int = 0
    unit: str = "examples"
    elapsed_seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass
class TrainResult:
    """How a run ended.

    Attributes:
        run_dir: where it wrote.
        step: optimiser steps taken.
        epoch: epochs completed (or the current epoch).
        stop_reason: ``max_steps``, ``max_epochs``, ``max_minutes`` or ``early_stopping``.
        best_metric: best selection metric value.
        best_step: its step.
        final_metrics: metrics of the best checkpoint on ``training.final_split``.
        elapsed_seconds: training time over all sessions.
        bad_batches: batches skipped.
    """

    run_dir: Path
    step: int
    epoch: int
    stop_reason: str
    best_metric: float | None
    best_step: int | None
    final_metrics: dict[str, Any]
    elapsed_seconds: float
    bad_batches: int

    @classmethod
    def of(cls, run_dir: Path, state: TrainerState, stop_reason: str, final: dict[str, Any]) -> TrainResult:
        """The result of a run that ended in ``state``."""
        return cls(
            run_dir,
            state.step,
            state.epoch,
            stop_reason,
            state.best_metric,
            state.best_step,
            final,
            state.elapsed_seconds,
            state.bad_batches,
        )


def total_steps(training: TrainingConfig, batches_per_epoch: int) -> int | None:
    """The step budget, if steps or epochs bound the run."""
    bounds = [training.max_steps] if training.max_steps is not None else []
    if training.max_epochs is not None:
        bounds.append(training.max_epochs * batches_per_epoch)
    return min(bounds) if bounds else None


def budget_reason(training: TrainingConfig, state: TrainerState) -> str:
    """``max_steps``, ``max_epochs`` or ``max_minutes`` once that budget is spent, else ``""``."""
    if training.max_steps is not None and state.step >= training.max_steps:
        return "max_steps"
    if training.max_epochs is not None and state.epoch >= training.max_epochs:
        return "max_epochs"
    if training.max_minutes is not None and state.elapsed_seconds >= 60 * training.max_minutes:
        return "max_minutes"
    return ""
