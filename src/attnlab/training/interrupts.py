"""SIGINT and SIGTERM during training: finish the step, save, then stop.

While :class:`StopSignals` is active (the trainer's ``train()``), the first SIGINT (Ctrl-C) or
SIGTERM only records itself; the trainer checks :attr:`StopSignals.received` at each step
boundary, saves ``last`` and raises :class:`~attnlab.training.errors.TrainingInterrupted`. A
second signal restores the previous handlers and delivers itself again, so that a run stuck
inside a step can still be stopped at once (without saving). Signal handlers can only be set in
the main thread; elsewhere the class does nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["StopSignals"]

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """A context manager that turns SIGINT and SIGTERM into a request to stop at the next step.

    Attributes:
        received: the first signal number received, or None.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        self._previous = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = number
            logger.warning(
                "%s: saving at the end of this step; send it again to stop at once", signal.Signals(number).name
            )
            return
        self._restore()
        signal.raise_signal(number)
