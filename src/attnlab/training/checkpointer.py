"""The checkpoints a :class:`~attnlab.training.trainer.Trainer` writes, averages and loads back.

One :class:`Checkpointer` per run, built in ``setup()`` once the model, optimiser and schedule exist
(torchtune's recipes hold theirs the same way). It writes ``last`` and ``best`` with the training
state (:mod:`~attnlab.training.checkpoints` makes each save atomic), keeps ``step_<step>`` saves for
averaging, averages them into ``averaged`` (:mod:`~attnlab.training.averaging`), and loads ``best``
back for the final evaluation. Each save and average is reported as a ``checkpoint`` event. It also
writes the run directory's other files once a resume has been checked: the resolved ``config.yaml``,
no metrics past the resumed step, no leftovers of interrupted saves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.training import checkpoints as ckpt
from attnlab.training.averaging import keep_step_save, save_average, step_saves
from attnlab.training.reporting import Reporter
from attnlab.training.resume import drop_metrics_after, training_state, write_run_config
from attnlab.training.state import TrainerState

__all__ = ["Checkpointer"]


class Checkpointer:
    """Saves of one run directory: ``last``, ``best``, the kept ``step_<step>`` saves and their average.

    Args:
        run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
        model: the model whose weights are saved (and into which averages and ``best`` are loaded).
        optimizer: saved with ``last`` and ``best``, for exact resume.
        scheduler: saved with them, likewise.
        config_yaml: the resolved run config, written into every checkpoint.
        write_extras: writes the task's files (tokenizer, labels) into a checkpoint directory.
        keep: ``training.keep_checkpoints``: how many ``step_<step>`` saves to keep (0: none).
        report: where each save is reported.
    """

    def __init__(
        self,
        run_dir: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        config_yaml: str,
        write_extras: Callable[[Path], None],
        keep: int,
        report: Reporter,
    ) -> None:
        self.run_dir = run_dir
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.config_yaml = config_yaml
        self.write_extras = write_extras
        self.keep = keep
        self.report = report

    def write_run_files(self, output_dir: str, resumed_step: int | None) -> None:
        """After the resume was checked: the resolved config, no records past ``resumed_step`` (when
        resuming), no leftovers of interrupted saves."""
        write_run_config(self.run_dir, self.config_yaml, output_dir)
        if resumed_step is not None:
            drop_metrics_after(self.run_dir, resumed_step)
        ckpt.remove_interrupted_saves(self.run_dir)

    def save(self, name: str, state: TrainerState) -> Path:
        """Write checkpoint ``name`` with ``state``; a save of ``last`` is also kept as ``step_<step>``
        when ``keep`` asks for it."""
        path = self._save_to(ckpt.checkpoint_dir(self.run_dir, name), state)
        if name == "last" and self.keep:
            keep_step_save(self.run_dir, lambda directory: self._save_to(directory, state), state.step, self.keep)
        self.report.event("checkpoint", state, message=f"saved {path} at step {state.step}")
        return path

    def _save_to(self, directory: Path, state: TrainerState) -> Path:
        training = training_state(self.optimizer, self.scheduler, state)
        return ckpt.save_checkpoint(directory, self.model, self.config_yaml, training, self.write_extras)

    def average_last(self, count: int, state: TrainerState) -> Path:
        """Average the last ``count`` kept saves into ``averaged``, leave the average in the model, and
        return its directory."""
        paths = step_saves(self.run_dir)[-count:]
        directory = ckpt.checkpoint_dir(self.run_dir, "averaged")
        out = save_average(paths, self.model, directory, self.config_yaml, self.write_extras)
        names = ", ".join(path.name for path in paths)
        self.report.event("checkpoint", state, message=f"averaged {len(paths)} saves ({names}) into {out}")
        return out

    def load_best(self) -> Path | None:
        """Load the weights of ``best`` into the model, if the run has one; returns its path."""
        best = ckpt.find_checkpoint(self.run_dir, "best")
        if best is not None:
            ckpt.load_weights(self.model, best)
        return best
