"""One optimiser step: forward, backward, clip and update over one batch or, with
``training.accumulate_batches`` and under ``torchrun``, over several (the data-parallel step).

The loss is checked for NaN and infinity once per step, not inside every attention call: a
non-finite value anywhere in the forward pass reaches the loss, so one check (one device
synchronisation) a step catches it, where a check per attention call would synchronise the device
in every layer of every step. ``debug=True`` adds those per-call checks
(``attnlab.functional.nan_checks``) to name the input that first holds a NaN.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import attnlab.functional
from attnlab.training import distributed
from attnlab.training.config import RunConfig, TrainingConfig
from attnlab.training.devices import autocast_to
from attnlab.training.errors import BadBatch, TrainingError, is_data_error
from attnlab.training.task import Task

__all__ = ["GradientStep", "StepResult", "build_optimizer", "step_batches"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepResult:
    """What one optimiser step did.

    Attributes:
        loss: the mean loss over the step's tokens (images), in all processes.
        grad_norm: the global gradient norm before clipping.
        units: tokens (images) of the step's batches, in all processes.
    """

    loss: float
    grad_norm: float
    units: int


def build_optimizer(model: nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters, fused where PyTorch has a fused kernel."""
    params = [p for p in model.parameters() if p.requires_grad]
    # One fused kernel for all parameters where PyTorch has it (CPU and CUDA, floating point)
    # instead of one update per tensor.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
    return optimizer(
        params,
        lr=training.lr,
        betas=training.betas,
        eps=training.eps,
        weight_decay=training.weight_decay,
        fused=fused,
    )


def step_batches(batches: Iterable[Any], per_process: int, world_size: int = 1, rank: int = 0) -> Iterator[list[Any]]:
    """This process's batches of each step: ``per_process`` consecutive ones, or under ``torchrun``
    the rank-th run of them in every ``world_size`` runs (an incomplete last group is left out)."""
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == world_size * per_process:
            yield group[rank * per_process : (rank + 1) * per_process]
            group = []


class GradientStep:
    """Takes optimiser steps for a :class:`~attnlab.training.trainer.Trainer`.

    A failed step leaves no gradient behind and raises: :class:`BadBatch` (non-finite loss or
    gradient, or a batch that failed in another process), the data error of this process's batch,
    or the bug (see :func:`~attnlab.training.errors.is_data_error`); under ``torchrun`` a bug in
    another process raises :class:`TrainingError` here.

    Args:
        task: gives the loss and the units of a batch.
        model: the model; under ``torchrun`` wrapped here in ``DistributedDataParallel``.
        optimizer: its optimiser.
        scheduler: the learning-rate schedule, stepped after each update.
        config: the run: its ``training`` section (clipping) and ``seed`` (dropout of each process
            under ``torchrun``).
        dist: this process's place in a ``torchrun`` group, or None.
        device: where the model lives.
        autocast_dtype: bf16 autocast, or None for fp32.
        debug: run the forward pass under ``attnlab.functional.nan_checks()``.
    """

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        config: RunConfig,
        dist: distributed.Distributed | None,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        debug: bool = False,
    ) -> None:
        self.task, self.model, self.optimizer, self.scheduler = task, model, optimizer, scheduler
        self.training, self.seed, self.dist, self.device = config.training, config.seed, dist, device
        self.autocast_dtype = autocast_dtype
        self.debug = debug
        self.world = 1 if dist is None else dist.world_size
        # What the loss runs: the model, or under torchrun its DistributedDataParallel, without
        # broadcast_buffers: no collective in forward, so a process whose batch fails before its
        # forward still meets the others at the step's all-reduce.
        self.trained = (
            model
            if dist is None
            else nn.parallel.DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        )

    def __call__(self, batches: list[Any], step: int) -> StepResult:
        """One optimiser step over this process's ``batches`` of step ``step``."""
        try:
            with self._checks():
                if self.dist is None and len(batches) == 1:
                    result = self._one_batch(batches[0])
                else:
                    result = self._accumulated(batches, step)
        except BaseException:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return result

    def _checks(self) -> contextlib.AbstractContextManager:
        return attnlab.functional.nan_checks() if self.debug else contextlib.nullcontext()

    def _loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        with autocast_to(self.autocast_dtype, self.device):
            loss_sum, count = self.task.loss(self.trained, batch)
        return loss_sum.float(), count

    def _one_batch(self, batch: Any) -> StepResult:
        loss_sum, count = self._loss(batch)
        loss = loss_sum / max(count, 1)
        if not torch.isfinite(loss):
            raise BadBatch(f"non-finite loss {loss.item()}")
        loss.backward()
        return StepResult(loss.item(), self._clipped_grad_norm(), self.task.batch_units(batch))

    def _accumulated(self, batches: list[Any], step: int) -> StepResult:
        """The step over this process's ``accumulate_batches`` and, under ``torchrun``, the other
        processes' ones. The gradient is the mean over all their tokens: each batch's summed loss
        is backpropagated (the processes synchronise on the last one; ``DistributedDataParallel``
        averages over processes) and the sum divided by the tokens of all. The processes agree on
        the outcome before that last backward: a failed batch anywhere skips the step everywhere,
        a bug anywhere stops every process."""
        if self.dist is not None:
            self.dist.reseed(self.seed, step)
        error, summed, count, units = None, None, 0, 0
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            local_only = self.trained.no_sync() if self.dist is not None and not last else contextlib.nullcontext()
            try:
                with local_only:
                    loss_sum, batch_count = self._loss(batch)
                    if not last:
                        (loss_sum * self.world).backward()
            except Exception as caught:  # the processes must agree before anyone raises
                error = caught
                break
            summed = loss_sum.detach() if summed is None else summed + loss_sum.detach()
            count, units = count + batch_count, units + self.task.batch_units(batch)
        failed, bugs = float(error is not None), float(error is not None and not is_data_error(error))
        local = [failed, bugs, 0.0 if summed is None or error else summed.item(), count, units]
        totals = local if self.dist is None else self.dist.all_sum(local, self.device)
        failed, bugs, total_loss, total_count, units = totals
        self._raise_failure(error, failed, bugs)
        if not math.isfinite(total_loss):
            raise BadBatch(f"non-finite loss {total_loss}")
        (loss_sum * self.world).backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        torch._foreach_mul_(grads, 1.0 / max(total_count, 1))
        return StepResult(total_loss / max(total_count, 1), self._clipped_grad_norm(), int(units))

    @staticmethod
    def _raise_failure(error: Exception | None, failed: float, bugs: float) -> None:
        """This process's error, or the news that another process failed; nothing if none did."""
        if error is not None and (bugs or failed):
            if bugs and is_data_error(error):
                raise TrainingError(f"{int(bugs)} other process(es) stopped on a bug") from error
            raise error
        if bugs:
            raise TrainingError(f"{int(bugs)} other process(es) stopped on a bug; see their traceback")
        if failed:
            raise BadBatch(f"{int(failed)} process(es) failed on their batch of this step")

    def _clipped_grad_norm(self) -> float:
        """Clip the gradients to ``training.grad_clip``; their norm before clipping (a
        ``BadBatch`` when it is not finite: the same gradients everywhere, the same decision)."""
        clip = self.training.grad_clip
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else math.inf)
        if not torch.isfinite(grad_norm):
            raise BadBatch(f"non-finite gradient norm {grad_norm.item()}")
        return grad_norm.item()
