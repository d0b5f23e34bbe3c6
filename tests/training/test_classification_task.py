"""ClassificationTask through the Trainer: metrics agree with each other, bf16 autocast trains, bad splits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from attnlab.training import RunConfig, Trainer


def test_metrics_are_consistent_and_the_confusion_png_is_written(tiny_digits_config, tmp_path):
    config = RunConfig.from_dict(
        tiny_digits_config(str(tmp_path / "run"), max_steps=4, eval_every=2, final_split="test")
    )
    result = Trainer(config, fresh=True).run()
    test = result.final_metrics
    matrix = np.array(test["confusion_matrix"])  # (K, K), row = true class
    assert matrix.shape == (10, 10) and matrix.sum() == test["examples"] == 359
    assert test["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    recall = np.diag(matrix) / matrix.sum(axis=1)
    assert list(test["per_class_accuracy"]) == [str(d) for d in range(10)]
    np.testing.assert_allclose(list(test["per_class_accuracy"].values()), recall)
    assert (tmp_path / "run" / "confusion_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert saved["per_class_accuracy"] == test["per_class_accuracy"]


def test_bf16_autocast_trains_with_finite_losses(tiny_digits_config, tmp_path):
    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path / "run"), max_steps=6, eval_every=3, precision="bf16"))
    trainer = Trainer(config, fresh=True)
    result = trainer.run()
    assert result.step == 6 and result.bad_batches == 0
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert 0.0 <= result.best_metric <= 1.0


def test_evaluate_rejects_an_unknown_split(tiny_digits_config, tmp_path):
    trainer = Trainer(RunConfig.from_dict(tiny_digits_config(str(tmp_path / "run"), max_steps=1)), fresh=True)
    trainer.setup()
    with pytest.raises(ValueError, match=r"split 'dev' is not one of \['test', 'train', 'val'\]"):
        trainer.evaluate("dev")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({}, (1, False)), ({"crop_padding": 0}, (0, False)), ({"crop_padding": 3, "horizontal_flip": True}, (3, True))],
)
def test_augmentation_keys_replace_the_recommended_ones(tiny_digits_config, tmp_path, overrides, expected):
    values = tiny_digits_config(str(tmp_path / "run"), max_steps=1)
    values["data"].update(overrides)
    trainer = Trainer(RunConfig.from_dict(values), fresh=True)
    trainer.run()
    augmentation = trainer.task._train_loader().augmentation
    # digits recommend 1-pixel crops and no flips (a mirrored digit is another symbol)
    assert (augmentation.crop_padding, augmentation.horizontal_flip) == expected
