"""Checkpoints: a directory per checkpoint, written whole or not at all.

Layout of ``RUN_DIR/checkpoints/{last,best}/``::

    model.safetensors    the weights (shared tensors, e.g. tied embeddings, stored once)
    config.yaml          the resolved run config
    trainer_state.pt     optimiser, scheduler, step, epoch, batch-in-epoch, RNG states,
                         best metric, early-stopping counter (loads with weights_only=True)
    ...                  task extras: tokenizer/, image_spec.json

A save writes a temporary sibling directory (``.last.tmp-*``), fsyncs every file and the directory, then swaps it
in with two ``os.replace`` calls (``last`` -> ``.last.old``, temporary -> ``last``) and removes
the old one. A crash between the two renames leaves ``.last.old``, which :func:`find_checkpoint`
puts back; a failure while writing leaves the previous checkpoint untouched, and a process killed
while writing leaves its temporary directory, which :func:`remove_interrupted_saves` deletes.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "CheckpointError",
    "WeightsMismatchError",
    "capture_rng_state",
    "checkpoint_dir",
    "find_checkpoint",
    "load_trainer_state",
    "load_weights",
    "read_config_text",
    "remove_interrupted_saves",
    "require_complete",
    "restore_rng_state",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
STATE_FILE = "trainer_state.pt"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unreadable; the message names the path."""


class WeightsMismatchError(CheckpointError):
    """Readable weights of another model: names or shapes that the model does not have."""


def checkpoint_dir(run_dir: str | Path, name: str) -> Path:
    """``RUN_DIR/checkpoints/NAME``."""
    return Path(run_dir) / "checkpoints" / name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    config_yaml: str,
    trainer_state: dict[str, Any] | None = None,
    write_extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see the module docstring).

    Args:
        directory: the final path, e.g. ``RUN_DIR/checkpoints/last``.
        model: its ``state_dict`` goes to ``model.safetensors``.
        config_yaml: the resolved run config.
        trainer_state: what :func:`load_trainer_state` returns on resume; None for weights only.
        write_extras: writes task files (tokenizer, image spec) into the directory it is given.

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_model(model, str(tmp / MODEL_FILE))
        (tmp / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        if write_extras is not None:
            write_extras(tmp)
        _fsync_tree(tmp)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_disk_full(error):
            raise CheckpointError(
                f"no space left on device in {directory.parent}: checkpoint {directory.name} was not saved "
                f"(the previous one is intact); free some space and rerun to resume"
            ) from error
        raise
    _swap_in(tmp, directory)
    return directory


# torch.save reports a full disk without errno, as a failed write of its zip stream
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "No space left on device")


def _is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for want of space (``OSError(ENOSPC)`` or torch's words)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, Exception) and any(words in str(error) for words in _TORCH_WRITE_FAILED)


def remove_interrupted_saves(run_dir: str | Path) -> list[Path]:
    """Delete the temporary checkpoint directories (``checkpoints/.last.tmp-*``) and files
    (``.config.yaml.*.tmp``, see :func:`~attnlab.data.cache.atomic_write_text`) that killed saves
    left in ``run_dir``."""
    run_dir = Path(run_dir)
    found = [*run_dir.glob(".*.tmp"), *(run_dir / "checkpoints").glob(".*.tmp-*")]
    for path in found:
        logger.info("removing %s, left by an interrupted save", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def _swap_in(tmp: Path, directory: Path) -> None:
    old = directory.with_name(f".{directory.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    _fsync_dir(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: str | Path, name: str = "last") -> Path | None:
    """The checkpoint ``name`` of a run, restoring one left half-swapped by a crash; None if absent."""
    directory = checkpoint_dir(run_dir, name)
    old = directory.with_name(f".{name}.old")
    if not directory.exists() and old.is_dir():
        logger.warning("restoring %s from %s (a save was interrupted)", directory, old)
        os.replace(old, directory)
    return directory if directory.is_dir() else None


def _require(directory: Path, files: tuple[str, ...]) -> None:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist")
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {directory} is incomplete: missing {', '.join(missing)}")


def require_complete(directory: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``directory`` holds the weights and config, naming what is missing."""
    _require(Path(directory), (CONFIG_FILE, MODEL_FILE))


def read_config_text(directory: str | Path) -> str:
    """The ``config.yaml`` text of a checkpoint."""
    directory = Path(directory)
    _require(directory, (CONFIG_FILE,))
    return (directory / CONFIG_FILE).read_text(encoding="utf-8")


def load_weights(model: torch.nn.Module, directory: str | Path) -> None:
    """Load ``model.safetensors`` into ``model`` (strict).

    Raises:
        CheckpointError: the file is missing or damaged (cut short, not safetensors); the message
            names it and the ways to recover.
        WeightsMismatchError: the file reads but holds another model's names or shapes.
    """
    directory = Path(directory)
    _require(directory, (MODEL_FILE,))
    path = directory / MODEL_FILE
    try:
        with safe_open(str(path), framework="pt") as weights:  # reads the header only
            shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118 (not a dict)
    except Exception as error:  # safetensors raises several types for a damaged file
        raise _damaged(path, error) from error
    _check_shapes(model, shapes, path)
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as error:
        raise _damaged(path, error) from error
    if missing or unexpected:
        raise WeightsMismatchError(
            f"weights {path} do not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def _damaged(path: Path, error: BaseException) -> CheckpointError:
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    return CheckpointError(f"cannot read weights {path}: the file is damaged ({reason}); {_recovery(path.parent)}")


def _check_shapes(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Raise :class:`WeightsMismatchError` naming the first tensor whose saved shape differs from the model's."""
    for name, tensor in model.state_dict().items():
        if name in shapes and shapes[name] != tuple(tensor.shape):
            raise WeightsMismatchError(
                f"weights {path} do not fit the model: {name} is {list(shapes[name])} there, "
                f"{list(tensor.shape)} in the model"
            )


def load_trainer_state(directory: str | Path) -> dict[str, Any]:
    """The ``trainer_state.pt`` dict of a checkpoint (safe load: tensors and plain values only).

    Raises:
        CheckpointError: the file is missing or damaged; the message names it and the ways to recover.
    """
    directory = Path(directory)
    _require(directory, (STATE_FILE,))
    try:
        return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle / zip errors of a damaged file; torch's text advises an unsafe load
        raise CheckpointError(
            f"cannot read trainer state {directory / STATE_FILE}: the file is damaged; {_recovery(directory)}"
        ) from error


def _recovery(directory: Path) -> str:
    """How to go on without ``directory``'s trainer state: from the run's other checkpoint, or afresh."""
    other = directory.with_name({"last": "best", "best": "last"}.get(directory.name, "best"))
    if other != directory and (other / STATE_FILE).is_file():
        return (
            f"to resume from the other checkpoint, replace {directory} by a copy of {other}; or start over with --fresh"
        )
    return "start over with --fresh (or another output_dir)"


def capture_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
