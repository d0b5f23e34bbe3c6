"""Checkpoint averaging against the float64 mean computed by torch, and its refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from attnlab.training import RunConfig, Trainer
from attnlab.training.averaging import (
    average_checkpoints,
    average_state_dicts,
    checkpoints_by_step,
    keep_step_save,
    step_save_name,
)
from attnlab.training.checkpoints import MODEL_FILE, WeightsMismatchError, checkpoint_dir, save_checkpoint


class Mixed(nn.Module):
    """fp32 and bf16 parameters, an integer buffer and weights tied under two names."""

    def __init__(self, seed: int, width: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(5, width)
        self.out = nn.Linear(width, 5, bias=False)
        self.out.weight = self.embed.weight  # tied: stored once
        self.low = nn.Parameter(torch.randn(4, width).to(torch.bfloat16))
        self.register_buffer("count", torch.tensor([seed * 7 + 1]))


def saved(tmp_path, name: str, model: nn.Module, step: int | None = None):
    state = None if step is None else {"trainer": {"step": step}}
    return save_checkpoint(checkpoint_dir(tmp_path, name), model, "task: translation\n", state)


def test_two_identical_checkpoints_average_to_the_same_weights_bit_for_bit(tmp_path):
    model = Mixed(0)
    paths = [saved(tmp_path, "a", model), saved(tmp_path, "b", model)]
    averaged = average_checkpoints(paths)
    original = load_file(str(paths[0] / MODEL_FILE))
    assert averaged.keys() == original.keys()
    for key, tensor in original.items():
        assert averaged[key].dtype == tensor.dtype and torch.equal(averaged[key], tensor), key


def test_known_checkpoints_average_to_their_float64_mean_cast_back(tmp_path):
    models = [Mixed(seed) for seed in (1, 2, 3)]
    paths = [saved(tmp_path, f"c{i}", m) for i, m in enumerate(models)]
    averaged = average_checkpoints(paths)
    for key, tensor in models[-1].state_dict().items():
        if key not in averaged:  # the tied alias
            continue
        if tensor.is_floating_point():
            mean = sum(m.state_dict()[key].double() for m in models) / 3
            assert torch.equal(averaged[key], mean.to(tensor.dtype)), key
        else:
            assert torch.equal(averaged[key], tensor), key  # integer buffers: the last checkpoint's
    assert averaged["low"].dtype == torch.bfloat16


def test_the_float64_mean_is_not_the_mean_in_the_tensors_own_dtype():
    """Three bf16 values whose bf16 running sum rounds: only a wider sum gives the true mean's rounding."""
    values = [torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([2**-8], dtype=torch.bfloat16)] * 2
    values.append(torch.tensor([2**-8], dtype=torch.bfloat16))
    averaged = average_state_dicts([{"w": v} for v in values])["w"]
    exact = (sum(v.double() for v in values) / len(values)).to(torch.bfloat16)
    assert torch.equal(averaged, exact)
    in_bf16 = values[0].clone()
    for v in values[1:]:
        in_bf16 = in_bf16 + v
    assert not torch.equal(in_bf16 / len(values), exact)


def test_checkpoints_of_different_models_are_refused_naming_the_key(tmp_path):
    narrow, wide = saved(tmp_path, "narrow", Mixed(0)), saved(tmp_path, "wide", Mixed(0, width=4))
    with pytest.raises(WeightsMismatchError, match=r"'embed.weight' is \[5, 4\].* but \[5, 3\]"):
        average_checkpoints([narrow, wide])
    other = nn.Module()
    other.embed = nn.Embedding(5, 3)
    with pytest.raises(WeightsMismatchError, match="has no tensor 'count'"):
        average_checkpoints([narrow, saved(tmp_path, "other", other)])
    with pytest.raises(ValueError, match="at least one"):
        average_state_dicts([])


def test_checkpoints_by_step_orders_by_step_and_counts_a_step_once(tmp_path):
    saved(tmp_path, "last", Mixed(0), step=30)
    saved(tmp_path, "best", Mixed(0), step=30)
    saved(tmp_path, "step10", Mixed(1), step=10)
    saved(tmp_path, "averaged", Mixed(2))  # weights only: not a save of the trainer
    found = checkpoints_by_step(tmp_path)
    assert [(step, path.name) for step, path in found] in (
        [(10, "step10"), (30, "best")],
        [(10, "step10"), (30, "last")],
    )


def test_keep_step_save_keeps_the_newest_saves_only(tmp_path):
    model = Mixed(0)
    for step in (5, 10, 15, 20):
        keep_step_save(tmp_path, lambda d, s=step: saved(tmp_path, d.name, model, s), step, keep=2)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == [step_save_name(15), step_save_name(20)]


def test_the_trainer_keeps_its_last_saves_and_scores_their_average(tmp_path, tiny_translation_config):
    """Six steps, a save every two: steps 2, 4, 6 kept, the last two averaged; the final test pass
    scores exactly the weights of ``averaged``, which are the float64 mean of the two saves."""
    config = RunConfig.from_dict(
        tiny_translation_config(
            tmp_path, max_steps=6, checkpoint_every=2, keep_checkpoints=2, average_last=2, final_split="test"
        )
    )
    trainer = Trainer(config)
    trainer.run()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == [step_save_name(4), step_save_name(6)]
    two = [load_file(str(root / step_save_name(s) / MODEL_FILE)) for s in (4, 6)]
    averaged = load_file(str(root / "averaged" / MODEL_FILE))
    assert not all(torch.equal(two[0][key], two[1][key]) for key in two[0])  # the saves differ
    for key, tensor in averaged.items():
        mean = ((two[0][key].double() + two[1][key].double()) / 2).to(tensor.dtype)
        assert torch.equal(tensor, mean), key
    in_model = trainer.model.state_dict()
    assert all(torch.equal(in_model[key], tensor) for key, tensor in averaged.items())


@pytest.mark.parametrize(
    "training, words",
    [
        ({"max_steps": 4, "keep_checkpoints": 2}, "set checkpoint_every"),
        ({"max_steps": 4, "checkpoint_every": 2, "keep_checkpoints": 1, "average_last": 2}, "keep_checkpoints >= 2"),
        ({"max_steps": 4, "clock": "gpu"}, "clock 'gpu' is not one of"),
    ],
)
def test_averaging_and_clock_options_are_checked(tmp_path, tiny_translation_config, training, words):
    with pytest.raises(ValueError, match=words):
        RunConfig.from_dict(tiny_translation_config(tmp_path, **training))


def test_a_cpu_clock_budget_counts_this_process_cpu_time(tmp_path, monkeypatch, tiny_translation_config):
    """With ``clock: cpu`` the budget reads ``time.process_time``: a clock that jumps a minute a call
    stops the run at its first step, while the wall clock stays still."""
    seconds = iter(range(0, 10**6, 60))
    monkeypatch.setattr("attnlab.training.trainer.time.process_time", lambda: float(next(seconds)))
    config = RunConfig.from_dict(tiny_translation_config(tmp_path, max_minutes=0.5, clock="cpu"))
    result = Trainer(config).run()
    assert result.stop_reason == "max_minutes" and result.step == 1
