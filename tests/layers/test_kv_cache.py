"""The decoding-step attention kernel (step_attention) against SDPA."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.functional.kernels import Thresholds, step_attention


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
