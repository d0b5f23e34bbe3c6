"""Reading a finished (or running) run back for evaluation and inference (``attnlab.load`` builds on it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from attnlab.config import load_yaml
from attnlab.training import checkpoints as ckpt
from attnlab.training.config import ConfigError, RunConfig
from attnlab.training.devices import resolve_device
from attnlab.training.task import Task, build_task

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """A model restored from a checkpoint, with its task and config.

    Attributes:
        config: the resolved config saved in the checkpoint.
        task: the task, prepared (data loaded only if asked).
        model: the model in eval mode with the checkpoint's weights.
        checkpoint: the checkpoint directory read.
    """

    config: RunConfig
    task: Task
    model: nn.Module
    checkpoint: Path


def _checkpoint_of(run_dir: Path, which: str) -> Path:
    """The checkpoint ``which`` of ``run_dir`` (``best`` falls back to ``last``); errors name what is missing."""
    if not run_dir.exists():
        raise ckpt.CheckpointError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise ckpt.CheckpointError(f"{run_dir} is not a run directory but a file: pass the output_dir of a run")
    names = ("best", "last") if which == "best" else (which,)
    for name in names:
        found = ckpt.find_checkpoint(run_dir, name)
        if found is not None:
            return found
    held = _checkpoint_names(run_dir)
    if held:
        raise ckpt.CheckpointError(f"checkpoint {which!r} is not one of {held}, the checkpoints {run_dir} holds")
    wanted = " or ".join(f"checkpoints/{n}/" for n in names)
    raise ckpt.CheckpointError(
        f"{run_dir} holds no checkpoint, so it is not a trained run: missing {wanted} "
        f"(pass the output_dir of `attnlab train`, or one of its checkpoint directories)"
    )


def _checkpoint_names(run_dir: Path) -> list[str]:
    """The names of the checkpoints under ``run_dir/checkpoints/``, sorted (temporary folders left out)."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_run(
    run_dir: str | Path, which: str = "best", *, need_data: bool = False, device: str = "cpu", task: str | None = None
) -> LoadedRun:
    """Restore the model of a run directory.

    Args:
        run_dir: the run's ``output_dir``, or a checkpoint directory itself.
        which: ``best`` (falls back to ``last``), ``last`` or the name of another checkpoint of the run.
        need_data: also load the data set (for evaluation); inference needs only the checkpoint.
        device: ``cpu``, ``cuda`` or ``auto``.
        task: if given, the task the caller needs; another task fails naming both.

    Raises:
        CheckpointError: no checkpoint, a checkpoint ``which`` the run does not hold (naming those
            it holds), or a missing/corrupt file (named).
        ConfigError: the saved config is unreadable, or the run is not a ``task`` run.
    """
    run_dir = Path(run_dir)
    directory = run_dir if (run_dir / ckpt.MODEL_FILE).exists() else _checkpoint_of(run_dir, which)
    ckpt.require_complete(directory)
    try:
        config = RunConfig.from_dict(load_yaml(ckpt.read_config_text(directory)))
    except yaml.YAMLError as error:
        raise ConfigError(f"{directory / ckpt.CONFIG_FILE} is not valid YAML: {error}") from error
    if task is not None and config.task != task:
        raise ConfigError(f"{run_dir} is a {config.task} run ({config.model.type} model); expected a {task} run")
    built = build_task(config)
    built.prepare(resolve_device(device), restore_from=directory, need_data=need_data)
    torch.manual_seed(config.seed)
    model = built.build_model()
    ckpt.load_weights(model, directory)
    model.eval()
    return LoadedRun(config, built, model, directory)


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth printing: scalars and signatures (no matrices)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
