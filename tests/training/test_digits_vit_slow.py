"""configs/digits_vit.yaml reaches its target: >= 97% test accuracy on average over seeds.

One seed's accuracy moves by about a point with the CPU's summation order (AVX2 or AVX-512
kernels give different rounding, hence different runs): seed 0 gives 98.3% on one machine and
96.1% on another. The mean of three seeds is what the config promises on every machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.training import Trainer, load_config

CONFIG = Path(__file__).parents[2] / "configs" / "digits_vit.yaml"


@pytest.mark.slow
def test_digits_vit_reaches_97_percent_on_average(tmp_path):
    accuracies = []
    for seed in (0, 1, 2):
        # max_minutes lifted: on a shared CPU the step budget, not the clock, should decide the result
        overrides = [f"output_dir={tmp_path / str(seed)}", f"seed={seed}", "training.max_minutes=null"]
        accuracies.append(Trainer(load_config(CONFIG, overrides)).run().final_metrics["accuracy"])
    assert sum(accuracies) / len(accuracies) >= 0.97, accuracies
    assert min(accuracies) >= 0.95, accuracies
