"""What a training run writes while it trains: the loss window between two ``train`` records of
``metrics.jsonl``, and the silent log of the processes other than rank 0."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["LossWindow", "NoMetrics"]


class NoMetrics:
    """The metrics log of a process other than rank 0: writes nothing."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class LossWindow:
    """The mean loss and throughput over the steps since the last ``train`` record.

    Args:
        unit: what throughput counts (``tokens``, ``images``): the record's key is ``{unit}_per_second``.
    """

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.loss, self.steps, self.units = 0.0, 0, 0
        self.started = time.monotonic()

    def add(self, loss: float, units: int) -> None:
        """Count one step's mean loss and its tokens (images)."""
        if self.steps == 0:
            self.started = time.monotonic()
        self.loss, self.steps, self.units = self.loss + loss, self.steps + 1, self.units + units

    def record(self) -> dict[str, float]:
        """The window's mean loss and throughput; starts a new window."""
        seconds = max(time.monotonic() - self.started, 1e-9)
        values = {"loss": self.loss / max(self.steps, 1), f"{self.unit}_per_second": self.units / seconds}
        self.loss, self.steps, self.units = 0.0, 0, 0
        return values
