"""The fused step kernel (``attnlab.functional.kernels.fused_step``): a decoding step's attention
against SDPA in float64 for every mask kind, ragged key counts, strided caches and empty rows; its
refusals; the rule that turns it on; ``step_attention``'s choice of it; and the rows' layer norm
against ``F.layer_norm`` in float64."""

from __future__ import annotations

import math
import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from attnlab.functional.kernels import Thresholds, fused_step, set_thresholds
from attnlab.functional.kernels.step import step_attention
from attnlab.functional.kernels.thresholds import step_fused_rule

needs_fused = pytest.mark.skipif(not fused_step.available(), reason="the fused step kernel needs AVX2 and FMA")
TOLERANCE = dict(rtol=2e-6, atol=2e-6)  # fp32 sums of unit-scale terms, and the vector exp (~2e-7)


def _reference(q, k, v, mask):
    """SDPA in float64 (a bool mask as it is, a bias in float64)."""
    mask = None if mask is None else (mask if mask.dtype == torch.bool else mask.double())
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)


def _cache(batch, heads, keys, dim, spare, g):
    """Keys and values as the first ``keys`` positions of a cache with ``spare`` more: strided views."""
    k = torch.randn(batch, heads, keys + spare, dim, generator=g)
    v = torch.randn(batch, heads, keys + spare, dim, generator=g)
    return k[:, :, :keys], v[:, :, :keys]


@needs_fused
@pytest.mark.parametrize(
    ("batch", "heads", "n", "keys", "dim"),
    [(8, 8, 5, 128, 64), (2, 3, 1, 7, 16), (3, 2, 4, 37, 72), (1, 1, 2, 1, 8), (2, 4, 8, 300, 128), (4, 2, 3, 64, 136)],
)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "bias", "bool per head"])
def test_attention_matches_sdpa_in_float64(batch, heads, n, keys, dim, mask_kind):
    g = torch.Generator().manual_seed(keys + n)
    q = torch.randn(batch, heads, n, dim, generator=g)
    k, v = _cache(batch, heads, keys, dim, spare=5, g=g)
    allowed = torch.rand(batch, 1 if mask_kind != "bool per head" else heads, n, keys, generator=g) > 0.3
    allowed[..., 0] = True
    mask = {
        "none": None,
        "bool": allowed,
        "bool per head": allowed,
        "bias": torch.zeros(allowed.shape).masked_fill(~allowed, -math.inf),
    }[mask_kind]
    got = fused_step.attention(q, k, v, mask)
    assert got.shape == q.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _reference(q, k, v, mask), **TOLERANCE)


@needs_fused
@pytest.mark.parametrize("mask_kind", ["none", "bool"])
def test_strided_queries_and_outputs_are_read_and_written_where_they_lie(mask_kind):
    """Queries as one head-sized slice of fused projection rows, the context written into the rows'
    own layout (B, k, H, d), keys and values interleaved in one buffer: as the fused decoder calls it."""
    g = torch.Generator().manual_seed(0)
    batch, k, heads, dim, keys = 3, 4, 2, 16, 23
    rows = torch.randn(batch * k, 3 * heads * dim, generator=g)  # a qkv product's output
    q = rows[:, : heads * dim].view(batch, k, heads, dim).transpose(1, 2)  # (B, H, k, d), strided
    kv = torch.randn(batch, keys, 2, heads, dim, generator=g)
    key, value = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # (B, H, P, d), strided
    mask = None if mask_kind == "none" else torch.rand(batch, 1, 1, keys, generator=g) > 0.3
    context = torch.full((batch * k, heads * dim), math.nan)
    out = context.view(batch, k, heads, dim).transpose(1, 2)
    assert fused_step.attention(q, key, value, mask, out=out) is out
    torch.testing.assert_close(out.double(), _reference(q, key, value, mask), **TOLERANCE)
    assert not context.isnan().any()  # every element written
    full_mask = None if mask is None else mask.expand(batch, heads, k, keys)
    again = fused_step.unsafe_attention(q, key, value, full_mask, torch.empty(batch, heads, k, dim))
    assert torch.equal(again, out)
    with pytest.raises(ValueError, match=r"out of shape \(3, 2, 4, 16\) with unit stride along d, got \(3, 2, 4, 8\)"):
        fused_step.attention(q, key, value, mask, out=torch.empty(batch, heads, k, 8))


@needs_fused
def test_lines_read_each_key_from_the_row_that_holds_it():
    """With ``lines``, key and value j of row b come from row lines[b, j] (beam hypotheses reading
    their ancestors' keys in place): SDPA over the keys gathered that way."""
    g = torch.Generator().manual_seed(0)
    rows, heads, keys, dim = 6, 2, 19, 16
    q = torch.randn(rows, heads, 1, dim, generator=g)
    cache = torch.randn(keys + 4, rows, 2, heads, dim, generator=g)  # (capacity, R, 2, H, d), as the fused decoder's
    key, value = cache[:keys, :, 0].permute(1, 2, 0, 3), cache[:keys, :, 1].permute(1, 2, 0, 3)  # (R, H, P, d)
    lines = torch.randint(0, rows, (rows, keys + 4), generator=g)  # row stride keys + 4
    got = fused_step.unsafe_attention(q, key, value, None, torch.empty_like(q), lines)
    j = torch.arange(keys)
    gathered_k = key[lines[:, :keys], :, j].permute(0, 2, 1, 3)  # [b, j] -> key[lines[b, j], :, j]
    gathered_v = value[lines[:, :keys], :, j].permute(0, 2, 1, 3)
    torch.testing.assert_close(got.double(), _reference(q, gathered_k, gathered_v, None), **TOLERANCE)
    plain = fused_step.unsafe_attention(q, key, value, None, torch.empty_like(q))
    assert (got - plain).abs().max() > 1e-2  # the lines moved the keys


@needs_fused
def test_a_query_with_no_allowed_key_gets_zeros_as_in_sdpa():
    g = torch.Generator().manual_seed(0)
    q, (k, v) = torch.randn(2, 2, 3, 16, generator=g), _cache(2, 2, 20, 16, spare=0, g=g)
    allowed = torch.ones(2, 1, 3, 20, dtype=torch.bool)
    allowed[1, 0, 2] = False
    got = fused_step.attention(q, k, v, allowed)
    assert torch.equal(got[1, :, 2], torch.zeros(2, 16))
    torch.testing.assert_close(got.double(), _reference(q, k, v, allowed), **TOLERANCE)


@needs_fused
def test_large_and_small_scores_keep_the_softmax_exact():
    """Scores far apart (the vector exp over its whole range, underflow to zero) and a float bias
    with finite large negatives."""
    g = torch.Generator().manual_seed(1)
    q, (k, v) = 12 * torch.randn(2, 2, 4, 32, generator=g), _cache(2, 2, 50, 32, spare=3, g=g)
    bias = torch.where(torch.rand(2, 1, 4, 50, generator=g) > 0.5, 0.0, -1e4)
    for mask in (None, bias):
        torch.testing.assert_close(fused_step.attention(q, k, v, mask).double(), _reference(q, k, v, mask), **TOLERANCE)


@needs_fused
def test_a_nan_reaches_exactly_the_queries_that_may_attend_to_it():
    """As in the explicit kernel (masked scores are replaced, not added to): SDPA adds its mask,
    so there a NaN key also reaches the queries masked off it."""
    g = torch.Generator().manual_seed(5)
    q, (k, v) = torch.randn(1, 2, 2, 16, generator=g), _cache(1, 2, 12, 16, spare=0, g=g)
    k = k.clone()
    k[0, 1, 3, 0] = math.nan  # head 1, key 3
    allowed = torch.ones(1, 1, 2, 12, dtype=torch.bool)
    allowed[0, 0, 1, 3] = False  # query 1 does not see key 3
    got = fused_step.attention(q, k, v, allowed)
    assert got[0, 1, 0].isnan().all()
    assert not got[0, 1, 1].isnan().any() and not got[0, 0].isnan().any()
    scores = (q @ k.transpose(-1, -2) / 4).masked_fill(~allowed, -math.inf)
    torch.testing.assert_close(got, scores.softmax(-1) @ v, equal_nan=True, **TOLERANCE)


@needs_fused
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_any_thread_count_gives_the_same_result(threads):
    g = torch.Generator().manual_seed(2)
    q, (k, v) = torch.randn(3, 5, 2, 64, generator=g), _cache(3, 5, 90, 64, spare=7, g=g)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = fused_step.attention(q, k, v)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got.double(), _reference(q, k, v, None), **TOLERANCE)


@needs_fused
@pytest.mark.parametrize(("rows", "dim"), [(8, 512), (40, 512), (3, 20), (1, 7), (2, 1)])
@pytest.mark.parametrize("affine", ["weight and bias", "weight only", "none"])
def test_layer_norm_matches_pytorchs_in_float64(rows, dim, affine):
    g = torch.Generator().manual_seed(rows * dim)
    x = 3.0 + 2.0 * torch.randn(rows, dim, generator=g)  # an offset mean: the variance is taken about it
    weight = None if affine == "none" else torch.randn(dim, generator=g)
    bias = torch.randn(dim, generator=g) if affine == "weight and bias" else None
    got = fused_step.unsafe_layer_norm(x, weight, bias, 1e-5, torch.empty_like(x))
    expected = F.layer_norm(
        x.double(), (dim,), None if weight is None else weight.double(), None if bias is None else bias.double(), 1e-5
    )
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused_step.unsafe_layer_norm(x, weight, bias, 1e-5, x), got)  # written over its input


@needs_fused
def test_operands_it_cannot_take_are_refused_with_what_was_expected():
    q, k = torch.randn(1, 2, 1, 12), torch.randn(1, 2, 5, 12)
    assert not fused_step.fits(q, k, k, None)  # head size not a multiple of 8
    with pytest.raises(ValueError, match=r"d a multiple of 8 .* got \(1, 2, 1, 12\) torch.float32"):
        fused_step.attention(q, k, k)
    q, k = torch.randn(1, 2, 1, 16, dtype=torch.float64), torch.randn(1, 2, 5, 16, dtype=torch.float64)
    assert not fused_step.fits(q, k, k, None)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 5, 16)
    assert not fused_step.fits(q, k, torch.randn(1, 2, 5, 8), None)  # d_v != d
    assert not fused_step.fits(q, k, k, torch.zeros(1, 1, 1, 5, dtype=torch.float16))
    assert not fused_step.fits(q, k.transpose(-1, -2).contiguous().transpose(-1, -2), k, None)  # strided d
    assert fused_step.fits(q, k, k, torch.ones(1, 1, 1, 5, dtype=torch.bool))
    assert not fused_step.fits(q, k, k, torch.ones(1, 1, 1, 6, dtype=torch.bool))  # 6 keys in the mask, 5 cached
    assert not fused_step.fits(q, torch.randn(3, 2, 5, 16), torch.randn(3, 2, 5, 16), None)  # batch 3 vs 1
    with pytest.raises(ValueError, match=r"broadcasting to \(B, H, n, P\); got \(1, 2, 1, 16\)"):
        fused_step.attention(q, k, k, torch.ones(1, 1, 2, 5, dtype=torch.bool))
    broadcast_keys = torch.randn(1, 1, 5, 16)  # one head of keys for every head
    torch.testing.assert_close(
        fused_step.attention(q, broadcast_keys, broadcast_keys).double(),
        _reference(q, broadcast_keys.expand(1, 2, 5, 16), broadcast_keys.expand(1, 2, 5, 16), None),
        **TOLERANCE,
    )


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx avx2 fma", 1024),
        ("fpu sse2 avx avx2 fma avx512f", 1024),  # measured ahead of the AVX-512 kernels too
        ("fpu sse2 avx", 0),
        ("fp asimd", 0),
    ],
)
def test_rule_turns_the_kernel_on_only_where_it_was_measured_ahead(flags, expected):
    assert step_fused_rule(f"vendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n") == expected


@needs_fused
@pytest.mark.parametrize(
    ("max_keys", "queries", "keys", "fused"),
    [(64, 1, 64, True), (64, 5, 65, False), (0, 1, 8, False), (1024, 9, 8, False)],
)
def test_step_attention_takes_the_kernel_within_the_thresholds(monkeypatch, max_keys, queries, keys, fused):
    calls = []
    original = fused_step.try_attention
    monkeypatch.setattr(fused_step, "try_attention", lambda *args: calls.append(args) or original(*args))
    set_thresholds(Thresholds(cpu_step_fused_max_keys=max_keys, cpu_step_plain_max_queries=8))
    g = torch.Generator().manual_seed(3)
    q, (k, v) = torch.randn(2, 4, queries, 32, generator=g), _cache(2, 4, keys, 32, spare=2, g=g)
    mask = torch.rand(2, 1, queries, keys, generator=g) > 0.2
    mask[..., 0] = True
    got = step_attention(q, k, v, mask)
    assert bool(calls) == fused
    torch.testing.assert_close(got.double(), _reference(q, k, v, mask), **TOLERANCE)


def test_without_the_kernel_step_attention_takes_pytorchs(monkeypatch):
    """Not built (no compiler at install time) or no AVX2: the plain products or SDPA, same result."""
    monkeypatch.setattr(fused_step, "available", lambda: False)
    monkeypatch.setattr(fused_step, "_step", None)  # as if not built: any call into it would fail
    set_thresholds(Thresholds(cpu_step_fused_max_keys=1024))
    g = torch.Generator().manual_seed(4)
    q, (k, v) = torch.randn(2, 4, 3, 32, generator=g), _cache(2, 4, 50, 32, spare=2, g=g)
    torch.testing.assert_close(step_attention(q, k, v).double(), _reference(q, k, v, None), **TOLERANCE)


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64", reason="built on x86-64 Linux")
def test_the_extension_is_built_here():
    assert fused_step.built(), "attnlab.functional.kernels._step was not compiled by pip install (no C compiler?)"


def test_a_measured_table_takes_the_fused_kernel_up_to_where_it_stopped_winning():
    from benchmarks.attention_kernels import step_fused_max_keys

    def cells(ratios):
        return [{"queries": q, "keys": k, "fused_ratio": r} for q, k, r in ratios]

    won = cells([(1, 32, 0.6), (1, 1024, 0.8), (5, 32, 0.5), (5, 1024, 0.9)])
    assert step_fused_max_keys(won, max_queries=8) == 1024
    lost_late = won + cells([(5, 512, 1.1)])
    assert step_fused_max_keys(lost_late, max_queries=8) == 32  # the rectangle below the first loss
    assert step_fused_max_keys(lost_late, max_queries=4) == 1024  # that loss had more queries
    assert step_fused_max_keys(cells([(1, 32, None)]), max_queries=8) == 0  # the kernel does not run here
