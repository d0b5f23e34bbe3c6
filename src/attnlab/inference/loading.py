"""``attnlab.load(run_dir)``: a trained run as a :class:`Translator` or a :class:`Classifier`."""

from __future__ import annotations

from pathlib import Path

import torch

from attnlab.inference.classifier import Classifier
from attnlab.inference.translator import Translator
from attnlab.training.config import RunConfig
from attnlab.training.devices import resolve_precision
from attnlab.training.runs import load_run

__all__ = ["PRECISIONS", "load", "run_precision"]

PRECISIONS = ("run", "fp32", "bf16", "auto", "int8")


def run_precision(precision: str, config: RunConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: fp32); ``run`` takes the run's own
    ``training.precision``, the one its final test was scored in; ``int8`` (int8 products in
    the decoding engine) runs without autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "int8":
        return None
    return resolve_precision(config.training.precision if precision == "run" else precision, device)


def load(
    run_dir: str | Path,
    checkpoint: str = "best",
    device: str = "cpu",
    precision: str = "run",
    *,
    task: str | None = None,
) -> Translator | Classifier:
    """A trained run, ready for inference: a translation run gives a :class:`Translator`, a
    classification run a :class:`Classifier`.

    Args:
        run_dir: the run's ``output_dir``, or one of its checkpoint directories.
        checkpoint: ``best`` (falls back to ``last``), ``last`` or another checkpoint of the run by name.
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA where available).
        precision: ``run`` (the run's ``training.precision``), ``fp32``, ``bf16`` (autocast) or
            ``auto`` (bf16 where the hardware has it), or ``int8`` (translation runs on CPU: the
            decoder's products in int8, ``attnlab.inference.quantized``).
        task: if given, the task the caller needs (``translation``, ``classification``);
            a run of another task fails naming both.

    Raises:
        CheckpointError: no such run directory, no checkpoint, a ``checkpoint`` the run does not hold
            (the message lists those it holds), or a missing/corrupt file (named).
        ConfigError: the saved config is unreadable, or the run is not a ``task`` run.
        ValueError: an unknown ``precision`` (the known ones listed), or ``int8`` for a run that
            is not a Transformer translation run on CPU.

    Example:
        >>> attnlab.load("runs/en_ja").translate(["March 15, 2024"], beam=5)
    """
    loaded = load_run(run_dir, checkpoint, device=device, task=task)
    dtype = run_precision(precision, loaded.config, next(loaded.model.parameters()).device)
    int8 = precision == "int8"
    if loaded.config.task == "translation":
        return Translator(loaded.model, loaded.task.tokenizer, loaded.config.data, precision=dtype, int8=int8)
    if int8:
        raise ValueError(f"precision int8 is for translation runs; {run_dir} is a {loaded.config.task} run")
    return Classifier(loaded.model, loaded.task.spec, precision=dtype)
