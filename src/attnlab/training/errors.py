"""What stops a training run, and which failures of one batch the trainer may skip.

A long run should survive one corrupt example, so a batch whose loss or gradient is not finite,
or whose data raises, is skipped and counted (``training.max_bad_batches``). A bug must not hide
among those skips: an exception that says the code is wrong (a wrong type or attribute, a
missing name, a failed assertion), or a lookup error raised inside the model's own modules (an
embedding index out of range: a vocabulary that does not fit the model), stops the run at once.
"""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["BadBatch", "TrainingError", "TrainingInterrupted", "is_data_error"]

# Exceptions that mean the code, not the batch, is wrong, wherever they are raised.
_BUGS = (TypeError, AttributeError, NameError, AssertionError, NotImplementedError, ImportError, RecursionError)
# ``torch.nn.Module.__call__`` lives here: a traceback through it passed through model code.
_MODULE_CALL = "torch.nn.modules.module"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many bad batches); the message says why."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training at a step boundary, after ``last`` was saved.

    Attributes:
        signal_number: the signal received.
        exit_code: the shell's code for a process ended by that signal (130 SIGINT, 143 SIGTERM).
    """

    def __init__(self, signal_number: int, step: int, checkpoint: Path | None) -> None:
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number
        saved = f"saved {checkpoint}; run the same command again to resume" if checkpoint else "nothing saved"
        super().__init__(f"interrupted by {signal.Signals(signal_number).name} at step {step}: {saved}")


class BadBatch(RuntimeError):
    """One batch (or one step's batches) gave a non-finite loss or gradient, or failed on its data."""


def _raised_in_model(error: BaseException) -> bool:
    """Whether ``error``'s traceback passes through an ``nn.Module`` call."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_globals.get("__name__") == _MODULE_CALL:
            return True
        frame = frame.tb_next
    return False


def is_data_error(error: BaseException) -> bool:
    """Whether the trainer may skip the batch that raised ``error`` (see the module docstring).

    ``BadBatch`` and errors raised while the task reads a batch (``ValueError``, ``RuntimeError``,
    an ``IndexError`` of the data pipeline...) are data errors; ``TypeError``, ``AttributeError``,
    ``NameError``, ``AssertionError``, ``NotImplementedError``, ``ImportError`` and
    ``RecursionError`` are bugs anywhere, a :class:`TrainingError` stops the run, and an
    ``IndexError`` or ``KeyError`` raised inside an ``nn.Module`` is a bug of the model.
    """
    if isinstance(error, BadBatch):
        return True
    if not isinstance(error, Exception) or isinstance(error, (*_BUGS, TrainingError)):
        return False
    return not (isinstance(error, LookupError) and _raised_in_model(error))
