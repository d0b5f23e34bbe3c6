"""Where and in which precision a run computes: device, bf16 autocast, seeds."""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch

from attnlab.functional.kernels import thresholds
from attnlab.training.errors import TrainingError

__all__ = ["autocast_to", "cpu_has_bf16", "resolve_device", "resolve_precision", "seed_everything"]

logger = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX, not held below them by
    ``ONEDNN_MAX_CPU_ISA``): the attention dispatcher's notion, ``thresholds.default_native_bf16``."""
    return thresholds.default_native_bf16()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; ``cuda`` without a GPU fails naming it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is 'cuda' but torch.cuda.is_available() is False")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``fp32``/``bf16``/``auto``) on ``device``; None is fp32."""
    if name == "fp32":
        return None
    has_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()
    if name == "bf16" and not has_bf16:
        logger.warning("precision bf16 asked for, but %s lacks native bf16; autocast will be slow", device)
    return torch.bfloat16 if (name == "bf16" or has_bf16) else None


def autocast_to(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op context for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
