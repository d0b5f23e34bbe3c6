"""Suite-wide fixtures, and the tiny translation runs that the trainer tests share (on CPU and on CUDA)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings

# Kernels are chosen by the default thresholds, never by a table measured on the machine at hand
# (a missing table gives the defaults; subprocesses such as torchrun workers inherit this).
os.environ["ATTNLAB_KERNEL_TABLE"] = str(Path(__file__).parent / "no-kernel-table.json")

from attnlab.functional.kernels import Thresholds, fused_step, onednn, set_thresholds, thin
from attnlab.functional.kernels.causal import blocks_min_queries
from attnlab.functional.kernels.linear import uses_onednn
from attnlab.inference import fused_decoder
from attnlab.training import RunConfig, Trainer
from attnlab.training.checkpoints import checkpoint_dir, load_trainer_state

# Property tests draw the same examples on every run, so a gate never fails by the luck of a draw;
# HYPOTHESIS_PROFILE=explore draws new ones (and a case it finds becomes an @example).
settings.register_profile("gate", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gate"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run tiny models of many small ops: one thread is faster, and steady when the machine is busy.

    Benchmarks, not tests, measure multi-threaded speed.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def kernel_defaults():
    """Hand the dispatcher the default thresholds for the test; restore what was in force after."""
    previous = set_thresholds(Thresholds())
    yield
    set_thresholds(previous)


def pytest_terminal_summary(terminalreporter) -> None:
    """Name the CPU kernels the suite ran on: rounding and bf16 support differ between them
    (``make test-isa`` emulates an older CPU's)."""
    bf16 = onednn.bf16_available()
    linear = "oneDNN" if uses_onednn("cpu") else "BLAS"
    rows, keys = thin.max_rows(), fused_step.max_keys()
    products = f"thin kernel up to {rows} rows" if rows else "oneDNN packed"
    pair_rows = thin.max_rows_bf16()
    products += f", bf16 pair panels up to {pair_rows} rows" if pair_rows else ""
    attention = f"fused kernel up to {keys} keys" if keys else "PyTorch's"
    fused_rows = fused_decoder.max_rows()
    steps = f"fused up to {fused_rows} rows" if fused_rows else "layer by layer"
    causal_queries = blocks_min_queries()
    causal_kernel = f"compiled blocks from {causal_queries} queries" if causal_queries else "SDPA's"
    terminalreporter.write_line(
        f"CPU kernels: {torch.backends.cpu.get_cpu_capability()}; oneDNN bf16: {bf16}; fp32 linear: {linear}; "
        f"decoding products: {products}; step attention: {attention}; decoder steps: {steps}; "
        f"causal attention: {causal_kernel}"
    )


class Stop(Exception):
    """Stands in for the process being killed."""


def make_tiny_translation_config(
    output_dir: Path, corpus: dict[str, Any] | None = None, **training: Any
) -> dict[str, Any]:
    """A 1+1-layer Transformer (d_model 32) with dropout on 300 generated pairs; fp32, one thread
    (``training`` keys override: ``device="cuda"``, ``precision="bf16"``...)."""
    return {
        "task": "translation",
        "seed": 0,
        "output_dir": str(output_dir),
        "model": {
            "type": "transformer",
            "preset": "tiny",
            "d_model": 32,
            "num_heads": 2,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "dim_feedforward": 64,
            "dropout": 0.1,
            "share_embeddings": True,
        },
        "data": {
            "corpus": corpus or {"name": "generated", "size": 300, "use_cache": False},
            "tokenizer": {"vocab_size": 400},
            "max_length": 32,
            "max_tokens": 256,
            "eval_max_sentences": 8,
            "max_decode_len_a": 1.0,
            "max_decode_len_b": 4,
        },
        "training": {
            "optimizer": "adam",
            "lr": 1.0,
            "schedule": "noam",
            "warmup_steps": 4,
            "label_smoothing": 0.1,
            "precision": "fp32",
            "num_threads": 1,
            "tensorboard": False,
            "final_split": None,
            "eval_at_epoch_end": False,
            "log_every": 2,
            **training,
        },
    }


def run_killed_then_resumed(config: RunConfig, kill_after: int) -> tuple[Trainer, int]:
    """Run ``config`` until the step event ``kill_after`` raises, then resume it in a new Trainer.

    Returns the resumed trainer and the step its ``last`` checkpoint held when it was killed.
    """

    def kill(event):
        if event.kind == "step" and event.step == kill_after:
            raise Stop

    with pytest.raises(Stop):
        Trainer(config, progress=kill).run()
    saved_step = load_trainer_state(checkpoint_dir(config.output_dir, "last"))["trainer"]["step"]
    resumed = Trainer(config)
    resumed.run()
    return resumed, saved_step


@pytest.fixture
def tiny_translation_config():
    """:func:`make_tiny_translation_config`, for tests (importlib mode cannot import conftest)."""
    return make_tiny_translation_config


@pytest.fixture
def killed_then_resumed():
    """:func:`run_killed_then_resumed`, for tests."""
    return run_killed_then_resumed
