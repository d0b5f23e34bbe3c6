"""configs/digits_vit.yaml reaches its target: >= 97% test accuracy (about 1.5 minutes on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.training import Trainer, load_config

CONFIG = Path(__file__).parents[2] / "configs" / "digits_vit.yaml"


@pytest.mark.slow
def test_digits_vit_reaches_97_percent(tmp_path):
    # max_minutes lifted: on a shared CPU the step budget, not the clock, should decide the result
    config = load_config(CONFIG, [f"output_dir={tmp_path}", "training.max_minutes=null"])
    result = Trainer(config).run()
    assert result.final_metrics["accuracy"] >= 0.97, result.final_metrics
