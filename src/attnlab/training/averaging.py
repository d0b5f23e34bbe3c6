"""Checkpoint averaging: the element-wise mean of the weights of a run's last saves.

Averaging the parameters of the last checkpoints of a run smooths out the noise of the final
updates and usually scores a little better than any one of them (Vaswani et al., 2017, Sec. 6.1:
the base model averages the last 5 checkpoints, the big one the last 20; Popel & Bojar, 2018,
Sec. 4.10). Floating-point tensors are averaged in float64 and cast back to their dtype; integer
and boolean buffers (counters, masks) are taken from the last checkpoint.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from attnlab.training import checkpoints as ckpt

__all__ = [
    "average_checkpoints",
    "average_state_dicts",
    "checkpoints_by_step",
    "keep_step_save",
    "load_averaged",
    "save_average",
    "step_save_name",
    "step_saves",
]

logger = logging.getLogger(__name__)


def average_state_dicts(
    state_dicts: Sequence[dict[str, Tensor]], names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """theta = (1/n) sum_i theta_i per tensor, summed in float64 and cast back to each tensor's dtype.

    Args:
        state_dicts: n >= 1 state dicts of one model, oldest first.
        names: what to call each in errors (paths); ``#i`` by default.

    Returns:
        The averaged state dict; integer and boolean tensors are those of the last one.

    Raises:
        ValueError: no state dicts.
        WeightsMismatchError: two differ in keys, shapes or dtypes (the key named).
    """
    if not state_dicts:
        raise ValueError("average_state_dicts needs at least one state dict, got none")
    names = list(names) if names is not None else [f"#{i}" for i in range(len(state_dicts))]
    first = state_dicts[0]
    for name, other in zip(names[1:], state_dicts[1:]):
        _check_same_layout(first, other, names[0], name)
    averaged = {}
    for key, last in state_dicts[-1].items():
        if not (last.is_floating_point() or last.is_complex()):
            averaged[key] = last.clone()
            continue
        total = torch.zeros_like(last, dtype=torch.complex128 if last.is_complex() else torch.float64)
        for state in state_dicts:
            total += state[key].to(total.dtype)
        averaged[key] = (total / len(state_dicts)).to(last.dtype)
    return averaged


def _check_same_layout(first: dict[str, Tensor], other: dict[str, Tensor], first_name: str, name: str) -> None:
    """Raise ``WeightsMismatchError`` naming the first key ``other`` lacks, adds, or holds in another shape or dtype."""
    if missing := sorted(first.keys() - other.keys()):
        raise ckpt.WeightsMismatchError(
            f"{name} has no tensor {missing[0]!r}, which {first_name} has: checkpoints of different models"
        )
    if extra := sorted(other.keys() - first.keys()):
        raise ckpt.WeightsMismatchError(
            f"{name} has a tensor {extra[0]!r} that {first_name} lacks: checkpoints of different models"
        )
    for key, tensor in first.items():
        theirs = other[key]
        if theirs.shape != tensor.shape or theirs.dtype != tensor.dtype:
            raise ckpt.WeightsMismatchError(
                f"{key!r} is {list(theirs.shape)} {theirs.dtype} in {name} but {list(tensor.shape)} {tensor.dtype} "
                f"in {first_name}: checkpoints of different models"
            )


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Tensor]:
    """The averaged weights (``model.safetensors``) of checkpoint directories, oldest first.

    Args:
        paths: checkpoint directories (``RUN_DIR/checkpoints/NAME``) of one model.

    Returns:
        A state dict with the keys of the files (tied tensors stored once, as saved).

    Raises:
        CheckpointError: a directory lacks its weights or config.
        WeightsMismatchError: the checkpoints differ in keys, shapes or dtypes (the key named).
    """
    for path in paths:
        ckpt.require_complete(path)
    weights = [load_file(str(Path(path) / ckpt.MODEL_FILE)) for path in paths]
    return average_state_dicts(weights, [str(p) for p in paths])


def checkpoints_by_step(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The trainer's checkpoints of a run as ``(step, directory)``, oldest first.

    Of several saved at one step (``best`` and ``last`` after the same evaluation) one is kept;
    directories without a trainer state (weights only, such as an earlier average) are left out.
    """
    found: dict[int, Path] = {}
    root = Path(run_dir) / "checkpoints"
    directories = (
        sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    )
    for directory in directories:
        if not all((directory / name).is_file() for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE)):
            continue
        step = int(ckpt.load_trainer_state(directory)["trainer"]["step"])
        if step in found:
            logger.info("%s was saved at step %d, as %s: averaged once", directory, step, found[step])
            continue
        found[step] = directory
    return sorted(found.items())


def step_save_name(step: int) -> str:
    """The name of the kept save of ``step`` (``step_0002800``): names sort by step."""
    return f"step_{step:07d}"


def step_saves(run_dir: str | Path) -> list[Path]:
    """The kept step saves of a run (``checkpoints/step_*``), oldest first."""
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step_*") if p.is_dir())


def keep_step_save(run_dir: str | Path, save: Callable[[Path], Path], step: int, keep: int) -> Path:
    """Write the save of ``step`` as ``checkpoints/step_<step>`` with ``save`` and delete all but the
    newest ``keep`` such saves, so that the last ``keep`` can be averaged.

    Args:
        run_dir: the run directory.
        save: writes a checkpoint directory (atomically) and returns it.
        step: the optimiser step saved.
        keep: how many step saves to keep, >= 1.
    """
    path = save(Path(run_dir) / "checkpoints" / step_save_name(step))
    for old in step_saves(run_dir)[:-keep]:
        logger.info("removing %s: only the last %d step saves are kept", old, keep)
        shutil.rmtree(old, ignore_errors=True)
    return path


def save_average(
    paths: Sequence[Path],
    model: nn.Module,
    directory: Path,
    config_yaml: str,
    write_extras: Callable[[Path], None] | None = None,
) -> Path:
    """Average the checkpoints ``paths`` (oldest first) into ``model`` and save it, weights only
    (nothing resumes from an average), as checkpoint ``directory``; returns ``directory``."""
    load_averaged(model, average_checkpoints(paths), paths[-1])
    return ckpt.save_checkpoint(directory, model, config_yaml, None, write_extras)


def load_averaged(model: nn.Module, averaged: dict[str, Tensor], source: str | Path) -> None:
    """Copy the averaged tensors into ``model``; tensors tied to one saved under another name follow it.

    Raises:
        WeightsMismatchError: the averaged weights miss (untied) tensors of ``model`` or hold others.
    """
    missing, unexpected = model.load_state_dict(averaged, strict=False)
    state = model.state_dict()
    loaded = {state[key].data_ptr() for key in averaged}
    untied = [key for key in missing if state[key].data_ptr() not in loaded]
    if untied or unexpected:
        raise ckpt.WeightsMismatchError(
            f"weights of {source} do not fit its model: "
            f"missing {sorted(untied)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
