"""The rollout_vs_raw experiment: its run is the shipped config, its maps and statistics the papers' formulas."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import spearmanr

from attnlab.experiments import rollout_vs_raw
from attnlab.inference import Classification
from attnlab.training import RunConfig, load_config
from attnlab.viz import AttentionMap, AttentionMaps

ROOT = Path(__file__).resolve().parents[2]


def test_the_full_run_is_configs_digits_vit_with_a_step_budget(tmp_path):
    ours = RunConfig.from_dict(rollout_vs_raw.run_config(tmp_path)).to_dict()
    shipped = load_config(ROOT / "configs" / "digits_vit.yaml", ["training.max_minutes=null", f"output_dir={tmp_path}"])
    assert ours == shipped.to_dict()


def test_spearman_matches_scipy():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(5, 16, generator=generator), torch.rand(5, 16, generator=generator)
    expected = [spearmanr(x.numpy(), y.numpy()).statistic for x, y in zip(a, b)]
    assert rollout_vs_raw.spearman(a, b).tolist() == pytest.approx(expected, abs=1e-12)
    assert rollout_vs_raw.spearman(a, a * 3 + 1).tolist() == pytest.approx([1.0] * 5)


def _fake_classifier(blocks: list[torch.Tensor]) -> SimpleNamespace:
    """A stand-in for ``Classifier`` whose one image has these ``(1, H, L, L)`` maps per block."""
    maps = [AttentionMap("vit", i, (0, 1), w) for i, w in enumerate(blocks)]
    result = Classification([("7", 0.9)], AttentionMaps(maps, grid=(2, 2), prefix_tokens=1))
    classes = SimpleNamespace(classes=list("0123456789"))
    return SimpleNamespace(classify=lambda images, top_k, attention: [result], spec=classes)


def test_read_maps_gives_the_last_block_and_the_rollout_of_abnar_and_zuidema():
    generator = torch.Generator().manual_seed(1)
    blocks = [torch.rand(1, 2, 5, 5, generator=generator, dtype=torch.float64).softmax(-1) for _ in range(3)]
    read = rollout_vs_raw.read_maps(_fake_classifier(blocks), torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    # By hand, section 3 of the paper: A = 0.5 W + 0.5 I per layer (W the head mean), multiplied up.
    rolled = torch.eye(5, dtype=torch.float64)
    for block in blocks:
        rolled = (0.5 * block[0].mean(0) + 0.5 * torch.eye(5, dtype=torch.float64)) @ rolled
    assert torch.allclose(read["rollout"][0], rolled[0, 1:].reshape(2, 2))
    assert torch.allclose(read["raw"][0], blocks[-1][0].mean(0)[0, 1:].reshape(2, 2))
    assert torch.allclose(read["heads"][0], blocks[-1][0][:, 0, 1:].reshape(2, 2, 2))
    assert read["predicted"].tolist() == [7]


def test_table_quotes_the_results_in_both_languages():
    results = {
        "test_images": 359,
        "test_accuracy": 0.9833,
        "spearman_median": 0.3559,
        "spearman_below_0.5": 0.6435,
        "top_patch_differs": 0.7047,
        "example": {"spearman": -0.4794},
    }
    english, japanese = rollout_vs_raw.table(results, "en"), rollout_vs_raw.table(results, "ja")
    for text in (english, japanese):
        assert "| 359 |" in text and "| 98.33% |" in text and "| +0.36 |" in text and "| -0.48 |" in text
        assert "| 70.5% |" in text and "| 64.3% |" in text
    assert "test accuracy" in english and "テスト正解率" in japanese


@pytest.mark.slow
def test_quick_run_draws_its_figures_and_reports_consistent_numbers(tmp_path):
    results = rollout_vs_raw.run(tmp_path, quick=True)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(rollout_vs_raw.FIGURES)
    assert results["steps"] == rollout_vs_raw.QUICK_STEPS and results["test_images"] == 359
    assert results["test_accuracy"] > 0.5  # 150 steps: well above chance (0.1)
    assert -1.0 <= results["example"]["spearman"] <= results["spearman_median"] <= 1.0
    assert 0.0 <= results["top_patch_differs"] <= 1.0
