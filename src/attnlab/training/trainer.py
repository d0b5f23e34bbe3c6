"""One training loop for every task, in the shape of torchtune's recipes: ``setup / train / cleanup``.

The :class:`Trainer` owns what is common to all tasks (optimiser, schedule, clipping, precision,
evaluation cadence, early stopping, budgets, checkpoints, exact resume, metrics); a
:class:`~attnlab.training.task.Task` owns data, model, loss and metrics.

Its pieces: :mod:`~attnlab.training.step` (one optimiser step, data-parallel included),
:mod:`~attnlab.training.checkpointer` (saves, kept saves, their average), :mod:`~attnlab.training.resume`
(exact resume), :mod:`~attnlab.training.devices` (device, precision, seeds),
:mod:`~attnlab.training.errors` (which failures skip a batch, which stop), :mod:`~attnlab.training.state`
and :mod:`~attnlab.training.reporting` (counters and records).

Under ``torchrun`` the same loop runs data-parallel (:mod:`attnlab.training.distributed`): each
process takes every N-th batch of the one batch order, gradients are averaged over the
processes' tokens, and rank 0 evaluates, saves and decides when to stop. With
``training.accumulate_batches`` a step takes several batches (in each process), its gradient
the mean over all their tokens.

SIGINT and SIGTERM end training at the next step boundary with ``last`` saved
(:mod:`~attnlab.training.interrupts`): ``train()`` then raises :class:`TrainingInterrupted`.

The library never prints: progress goes to an optional callback of :class:`ProgressEvent`,
metrics to ``metrics.jsonl`` (and TensorBoard), messages to ``logging``.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.training import checkpoints as ckpt
from attnlab.training import distributed
from attnlab.training.checkpointer import Checkpointer
from attnlab.training.config import RunConfig
from attnlab.training.devices import autocast_to, cpu_has_bf16, resolve_device, resolve_precision, seed_everything
from attnlab.training.errors import BadBatch, TrainingError, TrainingInterrupted, is_data_error
from attnlab.training.interrupts import StopSignals
from attnlab.training.memory import fix_mmap_threshold, loaded_allocator
from attnlab.training.metrics import scalar_metrics
from attnlab.training.reporting import Reporter
from attnlab.training.resume import check_resumable, prepare_run_dir, restore_training
from attnlab.training.schedules import build_scheduler
from attnlab.training.state import ProgressEvent, TrainerState, TrainResult, budget_reason, total_steps
from attnlab.training.step import GradientStep, build_optimizer, step_batches
from attnlab.training.task import Task, build_task

__all__ = [
    "BadBatch",
    "ProgressEvent",
    "TrainResult",
    "Trainer",
    "TrainerState",
    "TrainingError",
    "TrainingInterrupted",
    "autocast_to",
    "cpu_has_bf16",
    "resolve_device",
    "resolve_precision",
    "seed_everything",
]


class Trainer:
    """Train any :class:`~attnlab.training.task.Task` from a :class:`RunConfig`.

    Usage::

        trainer = Trainer(load_config("configs/digits_vit.yaml"), progress=print)
        result = trainer.run()          # setup(), train(), cleanup()

    Args:
        config: the run config; ``config.output_dir`` is the run directory.
        task: the task; built from ``config.task`` when None.
        progress: called with a :class:`ProgressEvent` at each step, evaluation, skip and end.
        fresh: start over even if the run directory holds a ``last`` checkpoint (the old
            checkpoints and metrics are removed); otherwise such a run is resumed.
        debug: run attention with NaN checks (``attnlab.functional.nan_checks()``), which name
            the input that first holds a NaN; the loss alone is checked once a step otherwise.

    Nothing in the run directory changes before a resume has been checked (another task, model
    type or model shape fails first), and ``RUN_DIR/config.yaml`` is written only when it is the
    run's own (:func:`~attnlab.training.resume.write_run_config`).

    A batch whose loss or gradient is not finite, or whose data raises, is skipped and counted;
    more than ``training.max_bad_batches`` of them stop the run with a :class:`TrainingError`
    chained to the last failure. A bug (:func:`~attnlab.training.errors.is_data_error`) is not
    skipped: it propagates at once.
    """

    def __init__(
        self,
        config: RunConfig,
        task: Task | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
        fresh: bool = False,
        debug: bool = False,
    ) -> None:
        self.config = config
        self.task = task if task is not None else build_task(config)
        self.report = Reporter(self.task, config.training, progress)
        self.fresh = fresh
        self.debug = debug
        self.run_dir = Path(config.output_dir)
        self.state = TrainerState()
        self.resumed_from: Path | None = None
        self.stop_reason = ""
        # Set by setup():
        self.dist: distributed.Distributed | None = None
        self.device = torch.device("cpu")
        self.autocast_dtype: torch.dtype | None = None
        self.model: nn.Module | None = None
        self.config_yaml = ""
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.gradient_step: GradientStep | None = None
        self.checkpointer: Checkpointer | None = None
        # Set by train():
        self._session_start = 0.0
        self._elapsed_before = 0.0
        self._last_eval_step: int | None = None
        self._signals = StopSignals()

    @property
    def is_main(self) -> bool:
        """Whether this process evaluates, saves and reports (always, unless under ``torchrun``)."""
        return self.dist is None or self.dist.is_main

    # ----------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Devices and threads, data, model, optimiser and schedule; restore ``last`` if resuming."""
        t = self.config.training
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        if t.malloc_mmap_threshold:
            fix_mmap_threshold(t.malloc_mmap_threshold)
        device = resolve_device(t.device)
        self.dist = distributed.from_environment(device)
        self.device = device if self.dist is None else self.dist.device(device)
        self.autocast_dtype = resolve_precision(t.precision, self.device)
        seed_everything(self.config.seed)
        self._prepare()
        self.model = self.task.build_model()
        self.config = self.task.resolved_config()
        self.config_yaml = self.config.to_yaml()
        self.optimizer = build_optimizer(self.model, t)
        self.scheduler = build_scheduler(
            self.optimizer,
            t.schedule,
            warmup_steps=t.warmup_steps,
            total_steps=t.max_steps,
            d_model=t.schedule_d_model or self.task.model_width(),
            min_ratio=t.min_lr_ratio,
        )
        self.checkpointer = Checkpointer(
            self.run_dir,
            self.model,
            self.optimizer,
            self.scheduler,
            self.config_yaml,
            self.task.write_extras,
            t.keep_checkpoints,
            self.report,
        )
        if self.resumed_from is not None:
            self.state = restore_training(self.resumed_from, self.model, self.optimizer, self.scheduler)
            self.report.resume_window(self.state.loss_window)
        if self.is_main:
            resumed_step = self.state.step if self.resumed_from is not None else None
            self.checkpointer.write_run_files(self.config.output_dir, resumed_step)
        self.gradient_step = GradientStep(
            self.task,
            self.model,
            self.optimizer,
            self.scheduler,
            self.config,
            self.dist,
            self.device,
            self.autocast_dtype,
            self.debug,
        )
        self.report.open(self.run_dir, self.is_main)
        self.report.event("start", self.state, message=self._start_message())

    def _prepare(self) -> None:
        """The run directory and the task's data; under ``torchrun`` rank 0 first (it may cache the
        corpus and train the tokenizer), then the others, with the tokenizer rank 0 wrote."""
        if self.is_main:
            self.resumed_from = prepare_run_dir(self.run_dir, self.fresh)
            if self.resumed_from is not None:
                check_resumable(self.resumed_from, self.config)
            self.task.prepare(self.device, restore_from=self.resumed_from)
            if self.dist is not None:
                self.task.write_extras(self._shared_dir())
                self.dist.barrier()
            return
        self.dist.barrier()
        self.resumed_from = ckpt.find_checkpoint(self.run_dir, "last")
        self.task.prepare(self.device, restore_from=self.resumed_from or self._shared_dir())

    def _shared_dir(self) -> Path:
        directory = self.run_dir / ".distributed"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _start_message(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        how = f"resumed from {self.resumed_from} at step {self.state.step}" if self.resumed_from else "fresh start"
        dtype = "bf16 autocast" if self.autocast_dtype else "fp32"
        processes = f", {self.dist.world_size} processes" if self.dist is not None else ""
        malloc = f", malloc {loaded_allocator() or 'system'}" if self.device.type == "cpu" else ""
        return (
            f"{self.config.task}: {self.config.model.type} with {params:,} parameters on {self.device} "
            f"({dtype}, {torch.get_num_threads()} threads{processes}{malloc}); {how}"
        )

    # ----------------------------------------------------------------------------- train
    def train(self) -> str:
        """Run epochs until a budget or early stopping ends the run; returns the stop reason."""
        self._session_start = self._clock()
        self._elapsed_before = self.state.elapsed_seconds
        self.model.train()
        with self._signals:
            while not self._budget_reason():
                self._train_epoch()
                if self.stop_reason:
                    break
        if self.stop_reason == "interrupted":
            self._stop_on_signal()
        self.stop_reason = self.stop_reason or self._budget_reason()
        if self._evaluates() and self.stop_reason != "early_stopping" and self._last_eval_step != self.state.step:
            # A run stopped by its budget between evaluations would keep a stale "best": judge the
            # final weights too (the evaluation runs after the time budget).
            self._evaluate_and_checkpoint()
        return self.stop_reason

    def _evaluates(self) -> bool:
        t = self.config.training
        return bool(t.eval_every) or t.eval_at_epoch_end

    def _train_epoch(self) -> None:
        batches = self.task.train_batches(self.state.epoch, self.state.batch_in_epoch)
        world, rank = (1, 0) if self.dist is None else (self.dist.world_size, self.dist.rank)
        for batches_of_step in step_batches(batches, self.config.training.accumulate_batches, world, rank):
            stepped = self._train_step(batches_of_step)
            self.state.elapsed_seconds = self._elapsed_before + self._clock() - self._session_start
            interrupted = "interrupted" if self._signals.received is not None else ""
            self.stop_reason = self._agreed(interrupted or (self._after_step() if stepped else self._budget_reason()))
            if self.stop_reason:
                return
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        if self.config.training.eval_at_epoch_end and self._last_eval_step != self.state.step:
            self.stop_reason = self._agreed(self._evaluate_and_checkpoint())

    def _stop_on_signal(self) -> None:
        """Save ``last`` (the main process), close the logs and raise :class:`TrainingInterrupted`."""
        saved = self.save("last") if self.is_main else None
        self.report.metrics.close()
        if self.dist is not None:
            self.dist.close()
        number = self._signals.received if self._signals.received is not None else signal.SIGTERM
        raise TrainingInterrupted(number, self.state.step, saved)

    def _agreed(self, reason: str) -> str:
        """Rank 0's stop reason and training time in every process, so that all stop together."""
        if self.dist is None:
            return reason
        reason, self.state.elapsed_seconds = self.dist.from_main((reason, self.state.elapsed_seconds))
        return reason

    def _clock(self) -> float:
        """Seconds on the clock ``training.clock`` names: wall time, or this process's CPU time."""
        return time.process_time() if self.config.training.clock == "cpu" else time.monotonic()

    def _autocast(self) -> Any:
        return autocast_to(self.autocast_dtype, self.device)

    def _train_step(self, batches: list[Any]) -> bool:
        """One optimiser step; a bad batch is reported and skipped (returns False), a bug raised."""
        world = 1 if self.dist is None else self.dist.world_size
        self.state.batch_in_epoch += world * len(batches)
        try:
            result = self.gradient_step(batches, self.state.step)
        except Exception as error:
            if not is_data_error(error):
                raise
            self._skip_batch(error)  # one bad example must not end a long run
            return False
        self.state.step += 1
        self.report.step(self.state, result, self.scheduler.get_last_lr()[0])
        return True

    def _skip_batch(self, error: Exception) -> None:
        self.state.bad_batches += 1
        message = self.report.skip(self.state, error)
        if self.state.bad_batches > self.config.training.max_bad_batches:
            raise TrainingError(
                f"{self.state.bad_batches} bad batches, more than training.max_bad_batches "
                f"({self.config.training.max_bad_batches}); last: {message}"
            ) from error

    def _after_step(self) -> str:
        """Periodic evaluation and checkpoints after an optimiser step; returns a stop reason or ''."""
        t, step = self.config.training, self.state.step
        reason = self._budget_reason()
        if t.eval_every and step % t.eval_every == 0:
            reason = self._evaluate_and_checkpoint() or reason
        elif t.checkpoint_every and step % t.checkpoint_every == 0 and self.is_main:
            self.save("last")
        return reason

    def _budget_reason(self) -> str:
        return budget_reason(self.config.training, self.state)

    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, split: str | None = None, output_dir: Path | None = None) -> dict[str, Any]:
        """The task's metrics on ``split`` (default the task's ``eval_split``), in eval mode."""
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return self.task.evaluate(self.model, split or self.task.eval_split, output_dir)
        finally:
            self.model.train()

    def _evaluate_and_checkpoint(self) -> str:
        """Evaluate, keep ``best``, save ``last``; returns ``early_stopping`` when patience runs out.
        Only the main process evaluates (the others wait for its decision)."""
        if not self.is_main:
            self._last_eval_step = self.state.step
            return ""
        metrics = self.evaluate()
        self._last_eval_step = self.state.step
        record = {"epoch": self.state.epoch, **scalar_metrics(metrics)}
        self.report.metrics.log(self.task.eval_split, self.state.step, record)
        self.report.event("eval", self.state, metrics=metrics)
        if self.state.record_evaluation(metrics.get(self.task.selection_metric), self.task.selection_mode):
            self.save("best")
        self.save("last")
        patience = self.config.training.early_stopping_patience
        if patience is not None and self.state.evals_without_improvement >= patience:
            return "early_stopping"
        return ""

    # ----------------------------------------------------------------------------- checkpoints
    def save(self, name: str) -> Path:
        """Write checkpoint ``name`` (``last`` or ``best``) atomically; a save of ``last`` is also
        kept as ``step_<step>`` when ``training.keep_checkpoints`` asks for it."""
        self.state.loss_window = self.report.pending_window()
        return self.checkpointer.save(name, self.state)

    # ----------------------------------------------------------------------------- cleanup
    def cleanup(self) -> TrainResult:
        """Save ``last``, average the last saves if asked, evaluate the average (or else ``best``) on
        ``training.final_split``, close the logs
        (the main process; under ``torchrun`` the others leave the process group)."""
        final: dict[str, Any] = {}
        split = self.config.training.final_split if self.is_main else None
        averaged = self.is_main and self.config.training.average_last is not None
        if self.is_main:
            self.save("last")
        if averaged:
            self.checkpointer.average_last(self.config.training.average_last, self.state)
        if self.dist is not None:
            self.dist.close()
            if self.is_main:
                shutil.rmtree(self._shared_dir(), ignore_errors=True)
        if split:
            if not averaged:
                self.checkpointer.load_best()
            final = self.evaluate(split, output_dir=self.run_dir)
            self.report.metrics.log(split, self.state.step, scalar_metrics(final))
            (self.run_dir / f"{split}_metrics.json").write_text(json.dumps(final, indent=2, ensure_ascii=False))
        self.report.metrics.close()
        result = TrainResult.of(self.run_dir, self.state, self.stop_reason, final)
        self.report.event("end", self.state, metrics=final, message=self.stop_reason)
        return result

    def run(self) -> TrainResult:
        """``setup()``, ``train()``, ``cleanup()``."""
        self.setup()
        self.train()
        return self.cleanup()

    # ----------------------------------------------------------------------------- progress
    def total_steps(self) -> int | None:
        """The step budget, if steps or epochs bound the run."""
        return total_steps(self.config.training, self.task.batches_per_epoch())
