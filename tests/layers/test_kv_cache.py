"""The decoding-step attention kernel (step_attention) against SDPA."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.functional.kernels import Thresholds, step_attention
from attnlab.functional.kernels.thresholds import plain_step_fits, set_thresholds


@pytest.mark.parametrize(
    "queries", [1, 2, 5, Thresholds().cpu_step_plain_max_queries, Thresholds().cpu_step_plain_max_queries + 1]
)
@pytest.mark.parametrize("keys", [11, Thresholds().cpu_step_plain_max_keys + 1])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_step_attention_equals_sdpa(queries, keys, mask_kind):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(3, 2, queries, 8, generator=g)
    k, v = torch.randn(3, 2, keys, 8, generator=g), torch.randn(3, 2, keys, 8, generator=g)
    mask = None
    if mask_kind != "none":
        mask = torch.rand(3, 1, queries, keys, generator=g) > 0.5
        mask[..., 0] = True
        if mask_kind == "float":
            mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    ref_mask = mask.double() if mask_kind == "float" else mask  # SDPA wants a float mask of the inputs' dtype
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=ref_mask).float()
    torch.testing.assert_close(step_attention(q, k, v, mask), expected, atol=1e-5, rtol=1e-5)


def test_step_attention_gives_zeros_where_no_key_is_allowed():
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    mask = torch.ones(1, 1, 3, 5, dtype=torch.bool)
    mask[0, 0, 1] = False
    out = step_attention(q, k, v, mask)
    assert torch.equal(out[0, 0, 1], torch.zeros(4))
    torch.testing.assert_close(out[0, 0, [0, 2]], F.scaled_dot_product_attention(q, k, v)[0, 0, [0, 2]])


BF16_STEP_LIMIT = 64  # set here: the default is 0 on CPUs without native bf16


@pytest.fixture
def bf16_step_limit():
    """The bf16 step kernel's key bound set to ``BF16_STEP_LIMIT`` for one test."""
    previous = set_thresholds(Thresholds(cpu_step_plain_max_keys_bfloat16=BF16_STEP_LIMIT))
    yield BF16_STEP_LIMIT
    set_thresholds(previous)


@pytest.mark.parametrize("queries", [1, 5])
@pytest.mark.parametrize("keys", [11, BF16_STEP_LIMIT + 1])  # either side of the bound
@pytest.mark.parametrize("masked", [False, True])
def test_bf16_step_attention_equals_sdpa_within_bf16_rounding(queries, keys, masked, bf16_step_limit):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 2, queries, 16, generator=g).bfloat16()
    k, v = (torch.randn(3, 2, keys, 16, generator=g).bfloat16() for _ in range(2))
    mask = torch.rand(3, 1, queries, keys, generator=g) > 0.3 if masked else None
    if mask is not None:
        mask[..., 0] = True
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    out = step_attention(q, k, v, mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)


def test_bf16_steps_take_the_plain_products_up_to_their_key_bound(bf16_step_limit):
    limit = bf16_step_limit
    one_query = torch.zeros(2, 2, 1, 8, dtype=torch.bfloat16)
    assert plain_step_fits(one_query, torch.zeros(2, 2, limit, 8, dtype=torch.bfloat16))
    assert not plain_step_fits(one_query, torch.zeros(2, 2, limit + 1, 8, dtype=torch.bfloat16))
    assert not plain_step_fits(one_query.float(), torch.zeros(2, 2, 8, 8))  # fp32 starts at 2 queries
    assert not plain_step_fits(one_query.expand(2, 2, 5, 8), torch.zeros(2, 2, 8, 8, dtype=torch.bfloat16))
    previous = set_thresholds(Thresholds(cpu_step_plain_max_keys_bfloat16=0))
    try:
        assert not plain_step_fits(one_query, torch.zeros(2, 2, 8, 8, dtype=torch.bfloat16))
    finally:
        set_thresholds(previous)
