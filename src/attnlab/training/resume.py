"""Exact resume: everything a checkpoint holds besides the weights, and putting it back.

A checkpoint holds the optimiser, scheduler, step, epoch, batches done in the epoch and every RNG
state; tasks yield batches as a pure function of ``(seed, epoch, batch)``. A run stopped after a
checkpoint and resumed therefore takes the same steps, with the same dropout masks, as one that
never stopped (bit-identical on CPU in fp32).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.training import checkpoints as ckpt
from attnlab.training.state import TrainerState

__all__ = ["prepare_run_dir", "restore_training", "training_state"]

logger = logging.getLogger(__name__)


def prepare_run_dir(run_dir: Path, fresh: bool) -> Path | None:
    """Create ``run_dir``; its ``last`` checkpoint to resume from, or None. ``fresh`` removes the
    checkpoints and metrics of an earlier run there first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for name in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return ckpt.find_checkpoint(run_dir, "last")


def training_state(optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainerState) -> dict[str, Any]:
    """Everything exact resume needs besides the weights."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "trainer": asdict(state),
        "rng": ckpt.capture_rng_state(),
    }


def restore_training(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainerState:
    """Load the weights, optimiser, schedule and RNG states of checkpoint ``directory``; its counters.

    Raises:
        CheckpointError: the saved state does not fit this model, optimiser or schedule.
    """
    ckpt.load_weights(model, directory)
    saved = ckpt.load_trainer_state(directory)
    try:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = TrainerState(**saved["trainer"])
        ckpt.restore_rng_state(saved["rng"])
    except (KeyError, ValueError, TypeError) as error:
        raise ckpt.CheckpointError(
            f"trainer state {directory / ckpt.STATE_FILE} does not fit this run: {error}"
        ) from error
    logger.info(
        "resumed from %s at step %d (epoch %d, batch %d)", directory, state.step, state.epoch, state.batch_in_epoch
    )
    return state
