"""Learning-rate schedules as multipliers of the optimiser's base LR, for ``LambdaLR``.

Steps count optimiser updates from 1: the first ``optimizer.step()`` uses the factor of step 1
(``LambdaLR`` calls the function with 0 at construction, hence the ``+ 1`` below).
"""

from __future__ import annotations

import math

import torch

__all__ = ["build_scheduler", "constant_factor", "cosine_factor", "noam_factor"]


def noam_factor(step: int, d_model: int, warmup_steps: int) -> float:
    """lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5) (Vaswani et al., 2017, Eq. 3).

    Args:
        step: optimiser step, from 1.
        d_model: the model width.
        warmup_steps: steps of linear increase before the inverse-square-root decay.
    """
    step = max(step, 1)
    return d_model**-0.5 * min(step**-0.5, step * max(warmup_steps, 1) ** -1.5)


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step <= warmup_steps:
        return step / max(warmup_steps, 1)
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then constant."""
    return min(step / max(warmup_steps, 1), 1.0) if warmup_steps > 0 else 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    warmup_steps: int,
    total_steps: int | None = None,
    d_model: int | None = None,
    min_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` for ``noam`` (needs ``d_model``), ``cosine`` (needs ``total_steps``) or ``constant``."""
    if name == "noam":
        if not d_model:
            raise ValueError("the noam schedule needs d_model")
        factor = lambda i: noam_factor(i + 1, d_model, warmup_steps)
    elif name == "cosine":
        if not total_steps:
            raise ValueError("the cosine schedule needs total_steps (training.max_steps)")
        factor = lambda i: cosine_factor(i + 1, warmup_steps, total_steps, min_ratio)
    elif name == "constant":
        factor = lambda i: constant_factor(i + 1, warmup_steps)
    else:
        raise ValueError(f"unknown schedule {name!r}; expected noam, cosine or constant")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
