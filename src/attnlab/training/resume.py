"""Exact resume: everything a checkpoint holds besides the weights, and putting it back.

A checkpoint holds the optimiser, scheduler, step, epoch, batches done in the epoch and every RNG
state; tasks yield batches as a pure function of ``(seed, epoch, batch)``. A run stopped after a
checkpoint and resumed therefore takes the same steps, with the same dropout masks, as one that
never stopped (bit-identical on CPU in fp32).

A resume is checked before anything in the run directory changes: a checkpoint of another task or
model type, or weights of another shape, fail naming the run and the way out (``--fresh`` or
another ``output_dir``). Only then does the trainer write the run's files (:func:`write_run_config`,
:func:`drop_metrics_after`).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from attnlab.config import ConfigError, load_yaml
from attnlab.data.cache import atomic_write_text
from attnlab.training import checkpoints as ckpt
from attnlab.training.config import RunConfig
from attnlab.training.state import TrainerState

__all__ = [
    "check_resumable",
    "drop_metrics_after",
    "prepare_run_dir",
    "restore_training",
    "training_state",
    "write_run_config",
]

RUN_CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
_WAY_OUT = "use --fresh (Trainer(fresh=True)) to start over there, or another output_dir"

logger = logging.getLogger(__name__)


def prepare_run_dir(run_dir: Path, fresh: bool) -> Path | None:
    """Create ``run_dir``; its ``last`` checkpoint to resume from, or None. ``fresh`` removes the
    checkpoints and metrics of an earlier run there first."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output_dir {run_dir} is a file, not a folder: set output_dir to a folder for the run")
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for name in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        (run_dir / METRICS).unlink(missing_ok=True)
    return ckpt.find_checkpoint(run_dir, "last")


def check_resumable(directory: Path, config: RunConfig) -> None:
    """Raise unless checkpoint ``directory`` holds a run of ``config``'s task and model type.

    Raises:
        CheckpointError: the saved config is unreadable.
        ConfigError: another task or model type, naming both and the way out.
    """
    try:
        saved = RunConfig.from_dict(load_yaml(ckpt.read_config_text(directory)))
    except (ConfigError, yaml.YAMLError) as error:
        raise ckpt.CheckpointError(f"cannot read the config of checkpoint {directory}: {error}") from error
    if (saved.task, saved.model.type) != (config.task, config.model.type):
        raise ConfigError(
            f"{config.output_dir} holds a {saved.task} run of a {saved.model.type} model, not the "
            f"{config.task} {config.model.type} run of this config: {_WAY_OUT}"
        )


def write_run_config(run_dir: Path, config_yaml: str, output_dir: str) -> bool:
    """Write ``RUN_DIR/config.yaml`` atomically, unless a file the run did not write is there (the
    user's own config, when ``output_dir`` is its folder): that one is kept, with a warning.

    Returns:
        Whether the file was written.
    """
    path = run_dir / RUN_CONFIG
    header = f"# attnlab train: the resolved config of the run in {output_dir}\n"
    if path.exists() and not _written_by_the_run(path, header):
        logger.warning(
            "kept %s, which this run did not write; the resolved config is in %s/*/%s",
            path,
            run_dir / "checkpoints",
            ckpt.CONFIG_FILE,
        )
        return False
    atomic_write_text(path, header + config_yaml)
    return True


def _written_by_the_run(path: Path, header: str) -> bool:
    """Whether ``path`` starts with ``header``, or (written before the header existed) equals the
    config saved in the run's ``last`` checkpoint."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith(header):
        return True
    last = ckpt.checkpoint_dir(path.parent, "last") / ckpt.CONFIG_FILE
    return last.is_file() and last.read_text(encoding="utf-8", errors="replace") == text


def drop_metrics_after(run_dir: Path, step: int) -> int:
    """Remove the records of ``metrics.jsonl`` past ``step`` (those a resumed run writes again);
    the count removed. A line that is not a record (cut short by a kill) goes too."""
    path = run_dir / METRICS
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
    if len(kept) < len(lines):
        atomic_write_text(path, "".join(kept))
    return len(lines) - len(kept)


def _step_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step") if isinstance(record, dict) else None


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
        CheckpointError: the saved weights or state do not fit this model, optimiser or schedule, or
            a file is damaged (then the message says so and names the file).
    """
    try:
        ckpt.load_weights(model, directory)
    except ckpt.WeightsMismatchError as error:  # a damaged file keeps its own message and way out
        first = (str(error).splitlines() or [""])[0]
        raise ckpt.CheckpointError(
            f"checkpoint {directory} holds another model than this config builds: {_WAY_OUT} ({first})"
        ) from error
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
