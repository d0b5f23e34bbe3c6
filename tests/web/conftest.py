"""Tiny trained runs for the viewer's tests: a 2+2-layer Transformer and a 2-block ViT on 8x8
digits, trained once per session, and the models served over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnlab.training import Trainer, load_config
from attnlab.web import load_models

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = [
    "training.max_minutes=null",
    "training.final_split=null",
    "training.tensorboard=false",
    "training.num_threads=1",
]
# The shipped configs, shrunk: a 2+2-layer Transformer of width 32, a 2-block ViT of width 16, and a
# 2-block CNN with spatial attention on 8x8 digits.
TINY_TRANSLATION = [
    *SMALL,
    *("model.d_model=32", "model.num_heads=2", "model.dim_feedforward=64"),
    *("data.corpus.size=300", "data.corpus.use_cache=false", "data.max_length=24", "data.max_tokens=512"),
    *("training.max_steps=20", "training.warmup_steps=10", "training.eval_every=null", "training.precision=fp32"),
]
TINY_VIT = [*SMALL, "model.embed_dim=16", "model.depth=2", "model.num_heads=2", "training.max_steps=4"]
TINY_CNN = [
    *SMALL,
    *("data.dataset=digits", "data.augment=false", "training.max_steps=4", "training.eval_every=4"),
    *("model.channels=[8, 8]", "model.blocks=[1, 1]", "model.spatial_kernel=3", "training.precision=fp32"),
]
TINY = {"en_ja": ("generated_transformer", TINY_TRANSLATION), "digits_vit": ("digits_vit", TINY_VIT)}
TINY["digits_cnn"] = ("fashion_cnn_spatial", TINY_CNN)


@pytest.fixture(scope="session")
def web_runs(tmp_path_factory) -> dict[str, Path]:
    """``{"en_ja": translation run, "digits_vit": ViT run, "digits_cnn": spatial-attention CNN run}``,
    each trained once (a few seconds)."""
    root = tmp_path_factory.mktemp("web_runs")
    for name, (config, overrides) in TINY.items():
        Trainer(load_config(CONFIGS / f"{config}.yaml", [*overrides, f"output_dir={root / name}"])).run()
    return {name: root / name for name in TINY}


@pytest.fixture(scope="session")
def served_models(web_runs):
    """The runs loaded as ``attnlab serve`` loads them."""
    return load_models(list(web_runs.values()))


@pytest.fixture(scope="session")
def seven_png(tmp_path_factory) -> bytes:
    """The bytes of a 32x32 PNG: a white-on-black '7'-like stroke."""
    path, size = tmp_path_factory.mktemp("png") / "seven.png", 32
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[size // 6 : size // 6 + 3, size // 5 : -size // 5] = 255
    for row in range(size // 6, size - size // 8):
        col = size - size // 5 - (row - size // 6) // 2
        pixels[row, col - 2 : col + 1] = 255
    Image.fromarray(pixels, "L").save(path)
    return path.read_bytes()
