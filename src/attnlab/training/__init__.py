"""Training: typed run configs, one :class:`Trainer` for every task, checkpoints, schedules, metrics.

::

    from attnlab.training import Trainer, load_config
    result = Trainer(load_config("configs/digits_vit.yaml", ["training.max_steps=200"])).run()
"""

from attnlab.training.checkpoints import CheckpointError, find_checkpoint, load_weights, save_checkpoint
from attnlab.training.config import ConfigError, RunConfig, TrainingConfig, apply_overrides, load_config
from attnlab.training.schedules import build_scheduler, cosine_factor, noam_factor
from attnlab.training.task import Task, build_task
from attnlab.training.trainer import (
    ProgressEvent,
    Trainer,
    TrainerState,
    TrainingError,
    TrainingInterrupted,
    TrainResult,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ProgressEvent",
    "RunConfig",
    "Task",
    "TrainResult",
    "Trainer",
    "TrainerState",
    "TrainingConfig",
    "TrainingError",
    "TrainingInterrupted",
    "apply_overrides",
    "build_scheduler",
    "build_task",
    "cosine_factor",
    "find_checkpoint",
    "load_config",
    "load_weights",
    "noam_factor",
    "save_checkpoint",
]
