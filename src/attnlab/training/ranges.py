"""The allowed range of every numeric key of a run config, and the check that names the key.

A config dataclass lists its numeric fields with an :class:`Interval` each and calls
:func:`check_ranges` in ``__post_init__``; a value outside fails with ``"{field} ({value}) must be
{range}"``; :func:`attnlab.config.read_dataclass` puts the section in front
(``training.grad_clip (-1.0) must be > 0``).
``None`` always passes: for an optional key it means "off" or "unbounded".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["COUNT", "FRACTION", "NON_NEGATIVE", "POSITIVE", "UNIT", "Interval", "check_ranges"]


@dataclass(frozen=True)
class Interval:
    """A range of real numbers; NaN lies in none.

    Attributes:
        low: lower bound.
        high: upper bound (``inf``: none).
        low_open: whether ``low`` itself is excluded.
        high_open: whether ``high`` itself is excluded.
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = True

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Interval(0.0, low_open=True)  # finite and > 0
NON_NEGATIVE = Interval(0.0)
COUNT = Interval(1.0)  # a number of steps, items, threads
FRACTION = Interval(0.0, 1.0)  # [0, 1): probabilities that must leave something
UNIT = Interval(0.0, 1.0, high_open=False)


def check_ranges(config: Any, ranges: Mapping[str, Interval]) -> None:
    """Raise ``ValueError`` naming the first field of ``config`` outside its interval.

    A tuple field (``betas``) is checked element by element; ``None`` passes.
    """
    for name, interval in ranges.items():
        value = getattr(config, name)
        values: Iterable[Any] = value if isinstance(value, (tuple, list)) else (value,)
        if value is not None and not all(v in interval for v in values):
            shown = list(value) if isinstance(value, (tuple, list)) else value
            raise ValueError(f"{name} ({shown!r}) must be {interval}")
