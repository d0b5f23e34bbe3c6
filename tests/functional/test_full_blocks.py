"""The compiled blocks over every key (``full_blocks``) against float64 SDPA, and their dispatch."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab import MultiHeadAttention
from attnlab.functional.kernels import Thresholds, choose_kernel, full_blocks, sdpa, set_thresholds
from attnlab.functional.kernels.causal import blocks_available
from attnlab.functional.kernels.thresholds import full_blocks_rule

causal_module = importlib.import_module("attnlab.functional.kernels.causal")

B, H = 2, 3
MASK_KINDS = ["none", "padding_bool", "padding_bias"]
needs_blocks = pytest.mark.skipif(not blocks_available(), reason="the compiled blocks need AVX2 and FMA")


def _qkv(n: int, d: int, seed: int = 0, heads: int = H) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, heads, n, d, generator=g) for _ in range(3)]


def _padding(kind: str, n: int) -> torch.Tensor | None:
    """A key-padding mask ``(B, 1, 1, n)``: bool True = may attend, or a float bias."""
    if kind == "none":
        return None
    allowed = torch.ones(B, 1, 1, n, dtype=torch.bool)
    allowed[1, ..., n - n // 3 :] = False
    allowed[..., 0] = True
    if kind == "padding_bias":
        return torch.randn(B, 1, 1, n, generator=torch.Generator().manual_seed(3)).masked_fill(~allowed, -math.inf)
    return allowed


def _reference(q, k, v, mask):
    """float64 SDPA, every query against every allowed key."""
    m = None if mask is None else (mask.double() if mask.is_floating_point() else mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m)


@needs_blocks
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize(("n", "d"), [(1, 16), (7, 16), (64, 64), (65, 32), (130, 48), (200, 80)], ids=str)
def test_full_blocks_equal_float64_sdpa_forward_and_backward(n, d, mask_kind):
    q, k, v = (x.requires_grad_() for x in _qkv(n, d))
    mask = _padding(mask_kind, n)
    out, weights = full_blocks(q, k, v, mask)
    assert weights is None
    assert type(out.grad_fn).__name__ == "_CompiledBlocksBackward"  # the blocks, not SDPA
    ref_q, ref_k, ref_v = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = _reference(ref_q, ref_k, ref_v, mask)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-6)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), grad.float())
    expected = torch.autograd.grad(ref, (ref_q, ref_k, ref_v), grad)
    for name, a, b in zip("qkv", got, expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=name)


@needs_blocks
def test_a_sentence_with_every_key_padded_gets_zero_context_and_gradients():
    q, k, v = (x.requires_grad_() for x in _qkv(70, 16))
    allowed = torch.ones(B, 1, 1, 70, dtype=torch.bool)
    allowed[1] = False
    out, _ = full_blocks(q, k, v, allowed)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(
        out[0].double(), _reference(*(x[:1].double() for x in (q, k, v)), None)[0], rtol=1e-5, atol=2e-6
    )
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for grad in grads:
        assert torch.isfinite(grad).all() and torch.equal(grad[1], torch.zeros_like(grad[1]))


@needs_blocks
@pytest.mark.parametrize("threads", [1, 3])
def test_full_blocks_agree_on_any_number_of_threads(threads):
    """One and three threads: by item, or a head's key blocks shared out (dq summed per thread)."""
    q, k, v = (x.requires_grad_() for x in _qkv(150, 32, heads=1))
    previous = torch.get_num_threads()
    results = []
    try:
        for count in (2, threads):
            torch.set_num_threads(count)
            out, _ = full_blocks(q, k, v)
            results.append((out, *torch.autograd.grad(out.sum(), (q, k, v))))
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_blocks
@pytest.mark.parametrize(
    "call",
    [
        dict(is_causal=True),
        dict(dropout_p=0.5),
        dict(need_weights=True),
        dict(lk=9),
        dict(dtype=torch.float64),
        dict(d=24),
        dict(full_mask=True),
    ],
    ids=["causal", "dropout", "weights", "cross", "float64", "head_size_24", "full_mask"],
)
def test_calls_it_does_not_cover_go_to_sdpa(call):
    d, lk, dtype = call.get("d", 16), call.get("lk", 7), call.get("dtype", torch.float32)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 7, d, generator=g).to(dtype)
    k, v = (torch.randn(B, H, lk, d, generator=g).to(dtype) for _ in range(2))
    mask = torch.rand(B, H, 7, lk, generator=g) > 0.3 if call.get("full_mask") else None
    options = {key: value for key, value in call.items() if key in ("is_causal", "dropout_p", "need_weights")}
    torch.manual_seed(5)
    out, w = full_blocks(q, k, v, mask, **options)
    torch.manual_seed(5)
    ref, ref_w = sdpa(q, k, v, mask, **options)
    assert torch.equal(out, ref) and (w is None) == (ref_w is None)


@needs_blocks
@pytest.mark.parametrize("grad", [False, True])
def test_the_dispatcher_picks_it_for_self_attention_from_the_threshold(grad):
    previous = set_thresholds(Thresholds(cpu_full_blocks_min_queries=32))
    try:
        q, k, v = (x.requires_grad_(grad) for x in _qkv(32, 16))
        with torch.set_grad_enabled(grad):
            assert choose_kernel(q, k, v) is full_blocks
            assert choose_kernel(q, k, v, _padding("padding_bool", 32)) is full_blocks
            assert choose_kernel(q[..., :31, :], k[..., :31, :], v[..., :31, :]) is not full_blocks  # below
            assert choose_kernel(q, k, v, is_causal=True) is not full_blocks
            assert choose_kernel(q.double(), k.double(), v.double()) is not full_blocks
        set_thresholds(Thresholds(cpu_full_blocks_min_queries=0))
        assert choose_kernel(q, k, v) is not full_blocks
    finally:
        set_thresholds(previous)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx avx2 fma", 32), ("fpu avx avx2 fma avx512f", 32), ("fpu avx avx2", 0), ("fpu sse4_2", 0), ("", 0)],
)
def test_rule_turns_the_blocks_on_only_with_avx2_and_fma(flags, expected):
    assert full_blocks_rule(f"flags\t\t: {flags}\n") == expected


@needs_blocks
@pytest.mark.parametrize("padding", [False, True])
def test_a_self_attention_layer_reaches_the_blocks_and_matches_torch(monkeypatch, padding):
    calls = []
    original = causal_module._CompiledBlocks.apply

    def counted(*args):
        calls.append(args[-1])  # the causal flag
        return original(*args)

    monkeypatch.setattr(causal_module._CompiledBlocks, "apply", counted)
    previous = set_thresholds(Thresholds(cpu_full_blocks_min_queries=32))
    try:
        torch.manual_seed(0)
        ref = nn.MultiheadAttention(64, 4, batch_first=True)
        ours = MultiHeadAttention.from_torch(ref)
        x = torch.randn(2, 40, 64, requires_grad=True)
        pad = torch.zeros(2, 40, dtype=torch.bool)
        if padding:
            pad[1, -9:] = True
        expected = ref(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        got = ours(x, x, x, key_padding_mask=pad)[0]
    finally:
        set_thresholds(previous)
    assert calls == [False]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(expected.sum(), x)[0], rtol=1e-4, atol=1e-5
    )
