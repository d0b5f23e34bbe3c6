"""Checkpoint averaging against the float64 mean computed by torch, and its refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from attnlab.training.averaging import average_checkpoints, average_state_dicts, checkpoints_by_step
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
