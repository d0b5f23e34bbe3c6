"""Tiny digits runs shared by the training tests: fast enough for CPU, with dropout so RNG matters."""

from __future__ import annotations

from typing import Any

import pytest
import torch


def make_tiny_digits_config(output_dir: str, **training: Any) -> dict[str, Any]:
    """A 2-block ViT (width 16) on 8x8 digits, augmented, with dropout; fp32 on one thread."""
    return {
        "task": "classification",
        "seed": 0,
        "output_dir": output_dir,
        "model": {
            "type": "vit",
            "preset": "vit_digits_patch2_8",
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
            "dropout": 0.1,
        },
        "data": {"dataset": "digits", "batch_size": 128, "eval_batch_size": 512, "augment": True},
        "training": {
            "lr": 3e-3,
            "schedule": "constant",
            "warmup_steps": 3,
            "precision": "fp32",
            "num_threads": 1,
            "tensorboard": False,
            "final_split": None,
            "eval_at_epoch_end": False,
            "log_every": 2,
            **training,
        },
    }


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_digits_config():
    """:func:`make_tiny_digits_config`, for tests (importlib mode cannot import conftest)."""
    return make_tiny_digits_config
