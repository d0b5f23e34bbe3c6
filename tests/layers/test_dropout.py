"""Dropout: the CPU fast path's keep rate, scaling, independence, gradient and reproducibility."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.layers.dropout import LEVELS, MIN_ELEMENTS, Dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_rate_and_scale_are_those_of_the_rounded_probability(p):
    torch.manual_seed(0)
    x = torch.ones(1 << 20)
    out = dropout(x, p)
    keep = round((1 - p) * LEVELS) / LEVELS
    kept = out != 0
    # Binomial(n, keep): within 5 standard deviations.
    n = x.numel()
    assert abs(kept.sum().item() - n * keep) < 5 * math.sqrt(n * keep * (1 - keep))
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / keep))  # exactly unbiased
    assert abs(keep - (1 - p)) <= 0.5 / LEVELS


def test_neighbours_and_lanes_of_one_draw_are_independent():
    """Four elements share a 64-bit draw: pairs at every offset 1-4 are kept together at keep^2."""
    torch.manual_seed(1)
    keep_levels = LEVELS // 2
    mask = keep_mask((1 << 20,), keep_levels).float()
    n = mask.numel()
    for offset in (1, 2, 3, 4, 5):
        both = (mask[:-offset] * mask[offset:]).mean().item()
        assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n), offset
    lanes = mask.view(-1, 4).mean(0)  # each 16-bit lane of the 64-bit words
    assert (lanes - 0.5).abs().max() < 5 * math.sqrt(0.25 / (n / 4))


def test_seeded_from_torch_so_manual_seed_and_rng_state_reproduce_masks():
    x = torch.randn(64, 128)
    torch.manual_seed(7)
    first, second = dropout(x, 0.2), dropout(x, 0.2)
    assert not torch.equal(first, second)  # each call draws a new mask
    torch.manual_seed(7)
    assert torch.equal(dropout(x, 0.2), first)
    state = torch.get_rng_state()
    again = dropout(x, 0.2)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.2), again)


def test_gradient_is_the_mask_times_the_scale(monkeypatch):
    x = torch.randn(32, 256, dtype=torch.float64, requires_grad=True)
    grad = torch.randn_like(x)
    torch.manual_seed(3)
    out = dropout(x, 0.25)
    out.backward(grad)
    scale = LEVELS / round(0.75 * LEVELS)
    assert torch.equal(x.grad, torch.where(out != 0, grad * scale, 0.0))

    def seeded(t):
        torch.manual_seed(3)
        return dropout(t, 0.25)

    monkeypatch.setattr("attnlab.layers.dropout.MIN_ELEMENTS", 1)  # the fast path for a small input
    assert torch.autograd.gradcheck(seeded, (torch.randn(6, 7, dtype=torch.float64, requires_grad=True),))


def test_dtype_shape_and_non_contiguous_inputs():
    base = torch.randn(16, 64, 33)
    x = base.transpose(0, 2)  # not contiguous
    torch.manual_seed(0)
    out = dropout(x, 0.5)
    assert out.shape == x.shape
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] * 2)
    assert dropout(torch.randn(64, 128, dtype=torch.bfloat16), 0.1).dtype == torch.bfloat16


def test_identity_zero_small_tensors_and_other_devices_follow_f_dropout():
    x = torch.randn(64, 128)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 1e-6) is x  # rounds to keeping every element
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    small = torch.randn(MIN_ELEMENTS - 1)
    torch.manual_seed(5)
    ours = dropout(small, 0.3)
    torch.manual_seed(5)
    assert torch.equal(ours, F.dropout(small, 0.3))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"got {p}"):
            dropout(x, p)


def test_module_is_nn_dropout_with_the_fast_path():
    module = Dropout(0.1)
    assert isinstance(module, nn.Dropout) and repr(module) == repr(nn.Dropout(0.1))
    x = torch.ones(64, 128)
    torch.manual_seed(0)
    out = module(x)
    assert set(out.unique().tolist()) == {0.0, torch.tensor(LEVELS / round(0.9 * LEVELS)).item()}
    assert torch.equal(module.eval()(x), x)
    inplace = Dropout(0.5, inplace=True).train()
    y = torch.ones(64, 128)
    assert inplace(y) is y and (y == 0).any()
