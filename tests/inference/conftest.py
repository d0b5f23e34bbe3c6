"""Tiny trained runs for the inference tests, trained once per session and shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.training import RunConfig, Trainer

_RUNS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def model() -> Transformer:
    """A random ``small`` Transformer (vocabularies of 1000, shared embeddings), in eval mode."""
    config = TransformerConfig.from_preset("small", src_vocab_size=1000, tgt_vocab_size=1000, share_embeddings=True)
    torch.manual_seed(0)
    return Transformer(config).eval()


@pytest.fixture
def translation_run(tiny_translation_config, tmp_path_factory) -> Path:
    """The suite's tiny Transformer (tests/conftest.py) trained 30 steps; its run directory."""
    if "translation" not in _RUNS:
        path = tmp_path_factory.mktemp("translation_run")
        Trainer(RunConfig.from_dict(tiny_translation_config(path, max_steps=30, eval_every=30))).run()
        _RUNS["translation"] = path
    return _RUNS["translation"]


@pytest.fixture
def vit_run(tmp_path_factory) -> Path:
    """A one-block ViT (width 16) trained 4 steps on 8x8 digits; its run directory."""
    if "vit" not in _RUNS:
        path = tmp_path_factory.mktemp("vit_run")
        config = {
            "task": "classification",
            "output_dir": str(path),
            "model": {"type": "vit", "preset": "vit_digits_patch2_8", "embed_dim": 16, "depth": 1, "num_heads": 2},
            "data": {"dataset": "digits", "batch_size": 64, "augment": False},
            "training": {
                "max_steps": 4,
                "eval_every": 4,
                "schedule": "constant",
                "num_threads": 1,
                "tensorboard": False,
                "final_split": None,
                "eval_at_epoch_end": False,
            },
        }
        Trainer(RunConfig.from_dict(config)).run()
        _RUNS["vit"] = path
    return _RUNS["vit"]
