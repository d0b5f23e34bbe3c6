"""The causal kernel against float64 ``F.scaled_dot_product_attention`` with the causal mask, and its dispatch;
the same compiled blocks over every key (``full_blocks``) against it without the mask."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from attnlab import MultiHeadAttention
from attnlab.functional.kernels import Thresholds, causal, choose_kernel, full_blocks, sdpa, set_thresholds
from attnlab.functional.kernels.causal import blocks_available, blocks_fit
from attnlab.functional.kernels.thresholds import causal_rule, full_blocks_rule

causal_module = importlib.import_module("attnlab.functional.kernels.causal")
kernels_package = importlib.import_module("attnlab.functional.kernels")

B, H, D = 2, 3, 8
DTYPES = [torch.float32, torch.bfloat16, torch.float64]
MASK_KINDS = ["none", "padding_bool", "padding_bias", "padding_empty_rows"]


def _qkv(n: int, dtype: torch.dtype, seed: int = 0, leading: tuple[int, ...] = (B, H)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*leading, n, D, generator=g).to(dtype) for _ in range(3)]


# The compiled blocks (fp32, head sizes that are multiples of 16): 64-row blocks, 4-query tiles.
needs_blocks = pytest.mark.skipif(not blocks_available(), reason="the compiled causal blocks need AVX2 and FMA")


def _blocks_qkv(n: int, d: int, seed: int = 0, heads: int = H) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, heads, n, d, generator=g) for _ in range(3)]


def _padding(kind: str, n: int) -> torch.Tensor | None:
    """A key-padding mask ``(B, 1, 1, n)``: bool True = may attend, or a float bias."""
    if kind == "none":
        return None
    allowed = torch.ones(B, 1, 1, n, dtype=torch.bool)
    if kind == "padding_empty_rows":
        allowed[1, ..., : min(3, n)] = False  # batch 1's first queries have no allowed key
    else:
        allowed[1, ..., n - n // 3 :] = False
        allowed[..., 0] = True
    if kind == "padding_bias":
        g = torch.Generator().manual_seed(3)
        return torch.randn(B, 1, 1, n, generator=g).masked_fill(~allowed, -math.inf)
    return allowed


def _reference(q, k, v, mask):
    """float64 SDPA under the causal mask and ``mask``; rows with no allowed key give zeros."""
    n = q.shape[-2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    bias = torch.zeros(n, n, dtype=torch.float64).masked_fill(~allowed, -math.inf)
    if mask is not None:
        bias = bias + (
            mask.double() if mask.is_floating_point() else torch.zeros(mask.shape).masked_fill(~mask, -math.inf)
        )
    q, k, v = (x.double() for x in (q, k, v))
    empty = (bias == -math.inf).all(-1, keepdim=True).expand(*q.shape[:-1], 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(empty, 0.0))
    return out.masked_fill(empty, 0.0)


@pytest.fixture(params=[2, 256], ids=["leaves_of_2", "default_leaves"])
def leaves(request):
    """Small leaves (several levels of halving even for short sequences) and the default."""
    previous = set_thresholds(Thresholds(cpu_causal_block_queries=request.param))
    yield request.param
    set_thresholds(previous)


def _tolerance(dtype: torch.dtype, factor: float) -> dict[str, float]:
    eps = torch.finfo(dtype).eps
    return {"atol": factor * eps, "rtol": factor * eps}


@pytest.mark.usefixtures("leaves")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 7, 13, 64])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_causal_equals_float64_sdpa_forward_and_backward(mask_kind, n, dtype):
    q, k, v = (x.requires_grad_() for x in _qkv(n, dtype))
    mask = _padding(mask_kind, n)
    out, weights = causal(q, k, v, mask, is_causal=True)
    ref_q, ref_k, ref_v = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = _reference(ref_q, ref_k, ref_v, mask)
    assert weights is None and out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, **_tolerance(dtype, 4))
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * grad_out).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), (ref_q, ref_k, ref_v))
    for got, expected, name in zip(grads, ref_grads, "qkv"):
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got.double(), expected, **_tolerance(dtype, 8), msg=name)


@pytest.mark.usefixtures("leaves")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_with_no_allowed_key_get_zero_context_and_gradients(dtype):
    q, k, v = (x.requires_grad_() for x in _qkv(9, dtype))
    out, _ = causal(q, k, v, _padding("padding_empty_rows", 9), is_causal=True)
    assert torch.equal(out[1, :, :3], torch.zeros_like(out[1, :, :3]))
    out.sum().backward()
    assert torch.equal(q.grad[1, :, :3], torch.zeros_like(q.grad[1, :, :3]))
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.usefixtures("leaves")
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_gradcheck_in_float64(mask_kind):
    q, k, v = (x[:1, :2, :, :4].requires_grad_() for x in _qkv(6, torch.float64))
    mask = _padding(mask_kind, 6)
    mask = None if mask is None else mask[:1]
    assert torch.autograd.gradcheck(lambda a, b, c: causal(a, b, c, mask, is_causal=True)[0], (q, k, v))


@pytest.mark.usefixtures("leaves")
@pytest.mark.parametrize("leading", [(B * H,), (B, H, 2), (1, H)], ids=str)
def test_leading_dims_broadcast_as_in_sdpa(leading):
    q, k, v = _qkv(11, torch.float32, leading=leading)
    expected, _ = sdpa(q, k.expand_as(q), v.expand_as(q), is_causal=True)
    torch.testing.assert_close(causal(q, k, v, is_causal=True)[0], expected)


@pytest.mark.parametrize(
    "call",
    ["not_causal", "full_mask", "fewer_queries", "weights", "dropout", "other_value_size"],
)
def test_calls_it_does_not_cover_equal_the_sdpa_kernel(call):
    q, k, v = _qkv(7, torch.float32)
    options = {"is_causal": call != "not_causal", "need_weights": call == "weights"}
    mask = torch.rand(B, H, 7, 7, generator=torch.Generator().manual_seed(1)) > 0.3 if call == "full_mask" else None
    if call == "fewer_queries":
        q = q[..., :4, :]
    if call == "other_value_size":
        v = torch.cat([v, v[..., :1]], dim=-1)
    torch.manual_seed(0)
    got = causal(q, k, v, mask, dropout_p=0.5 if call == "dropout" else 0.0, **options)
    torch.manual_seed(0)
    expected = sdpa(q, k, v, mask, dropout_p=0.5 if call == "dropout" else 0.0, **options)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@needs_blocks
@pytest.mark.parametrize("grad", [False, True])
def test_the_dispatcher_picks_it_only_where_it_applies(grad):
    on = Thresholds(cpu_causal_min_queries=16)
    q, k, v = (x.requires_grad_(grad) for x in _blocks_qkv(16, 16))
    padding = torch.ones(B, 1, 1, 16, dtype=torch.bool)
    assert choose_kernel(q, k, v, is_causal=True, thresholds=on) is causal
    assert choose_kernel(q, k, v, padding, is_causal=True, thresholds=on) is causal
    assert choose_kernel(q, k, v, padding.float(), is_causal=True, thresholds=on) is causal
    full = torch.ones(B, H, 16, 16, dtype=torch.bool)
    assert choose_kernel(q, k, v, full, is_causal=True, thresholds=on) is not causal
    assert choose_kernel(q, k, v, is_causal=False, thresholds=on) is not causal
    assert choose_kernel(q, k, v, is_causal=True, need_weights=True, weights_average_dim=1, thresholds=on) is not causal
    assert choose_kernel(q[..., :8, :], k, v, is_causal=True, thresholds=on) is not causal  # fewer queries
    assert choose_kernel(q, k, v, is_causal=True, thresholds=Thresholds(cpu_causal_min_queries=17)) is not causal
    assert choose_kernel(q, k, v, is_causal=True, thresholds=Thresholds(cpu_causal_min_queries=0)) is not causal
    # where the blocks do not fit: a head size of 8, bf16 (the halving tree never won against SDPA)
    assert choose_kernel(*_qkv(16, torch.float32), is_causal=True, thresholds=on) is not causal
    assert choose_kernel(*(x.bfloat16() for x in (q, k, v)), is_causal=True, thresholds=on) is not causal


def test_the_dispatcher_never_picks_it_without_the_compiled_blocks(monkeypatch):
    monkeypatch.setattr(causal_module, "blocks_available", lambda: False)
    q, k, v = _blocks_qkv(64, 64)
    assert choose_kernel(q, k, v, is_causal=True, thresholds=Thresholds(cpu_causal_min_queries=16)) is not causal
    expected, _ = sdpa(q, k, v, is_causal=True)  # and the kernel itself takes the halving tree
    torch.testing.assert_close(causal(q, k, v, is_causal=True)[0], expected, atol=1e-5, rtol=1e-5)


def test_blocks_min_queries_is_the_threshold_where_the_blocks_run_else_never(monkeypatch):
    set_thresholds(Thresholds(cpu_causal_min_queries=80))
    assert causal_module.blocks_min_queries() == (80 if blocks_available() else 0)
    monkeypatch.setattr(causal_module, "blocks_available", lambda: False)
    assert causal_module.blocks_min_queries() == 0


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx avx2 fma", 48),
        ("fpu sse2 avx avx2 fma avx512f", 48),  # measured ahead of the AVX-512 kernels too
        ("fpu sse2 avx", 0),
        ("fp asimd", 0),
    ],
)
def test_rule_turns_the_blocks_on_only_where_they_were_measured_ahead(flags, expected):
    assert causal_rule(f"vendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n") == expected


def test_a_leaf_size_below_one_is_refused_by_name():
    with pytest.raises(ValueError, match="cpu_causal_block_queries"):
        Thresholds(cpu_causal_block_queries=0)


@needs_blocks
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize(("n", "d"), [(1, 16), (7, 16), (64, 64), (65, 32), (130, 48), (200, 80), (129, 256)], ids=str)
def test_blocks_equal_float64_sdpa_forward_and_backward(n, d, mask_kind):
    assert blocks_fit(torch.empty(1, 1, n, d))
    q, k, v = (x.requires_grad_() for x in _blocks_qkv(n, d))
    mask = _padding(mask_kind, n)
    out, _ = causal(q, k, v, mask, is_causal=True)
    ref_q, ref_k, ref_v = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = _reference(ref_q, ref_k, ref_v, mask)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-5)
    grad_out = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = torch.autograd.grad((out * grad_out.float()).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * grad_out).sum(), (ref_q, ref_k, ref_v))
    for got, expected, name in zip(grads, ref_grads, "qkv"):
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=2e-4, msg=name)


@needs_blocks
def test_blocks_take_strided_heads_and_a_strided_gradient():
    """Heads as views of a (B, n, H, d) projection and a gradient with a zero stride, as a layer makes them."""
    n, d = 150, 32
    x = torch.randn(B, n, 3, H, d, generator=torch.Generator().manual_seed(4), requires_grad=True)
    q, k, v = x.unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, n, d), strided
    out, _ = causal(q, k, v, is_causal=True)
    out.sum().backward()  # grad_out is an expanded scalar: stride 0 everywhere
    ref_x = x.detach().double().requires_grad_()
    rq, rk, rv = (t.transpose(1, 2) for t in ref_x.unbind(2))
    ref = F.scaled_dot_product_attention(rq, rk, rv, is_causal=True)
    ref.sum().backward()
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-5)
    torch.testing.assert_close(x.grad.double(), ref_x.grad, atol=2e-5, rtol=2e-4)


@needs_blocks
def test_blocks_use_the_causal_mask_not_the_full_map():
    """A key after a query must not move it: changing the last key and value leaves every earlier
    output and the earlier keys' gradients as they were (the comparison can fail: the last
    query's output does move)."""
    q, k, v = _blocks_qkv(100, 16)
    k2, v2 = k.clone(), v.clone()
    k2[..., -1, :] += 5.0
    v2[..., -1, :] -= 5.0
    a, _ = causal(q, k, v, is_causal=True)
    b, _ = causal(q, k2, v2, is_causal=True)
    assert torch.equal(a[..., :-1, :], b[..., :-1, :])
    assert not torch.allclose(a[..., -1, :], b[..., -1, :])


@needs_blocks
def test_a_nan_reaches_exactly_the_queries_that_see_it():
    """A NaN key spoils the queries at or after it only (the causal mask keeps it from the others);
    a NaN query spoils its own row. Reference: the paper's formula in float64, masked scores
    replaced by -inf (replaced, not added to: NaN - inf would be NaN)."""
    n, d, bad_key, bad_query = 150, 32, 70, 20
    q, k, v = _blocks_qkv(n, d)
    k[0, 1, bad_key, 5] = math.nan
    q[1, 2, bad_query, 0] = math.nan
    out, _ = causal(q, k, v, is_causal=True)
    scores = (q.double() @ k.double().transpose(-2, -1)) * d**-0.5
    scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), -math.inf)
    ref = scores.softmax(-1) @ v.double()
    spoiled = out.isnan().any(-1)
    assert spoiled.equal(ref.isnan().any(-1))
    assert spoiled[0, 1].nonzero().flatten().tolist() == list(range(bad_key, n))
    assert spoiled[1, 2].nonzero().flatten().tolist() == [bad_query] and spoiled.sum() == n - bad_key + 1
    torch.testing.assert_close(out.double().nan_to_num(), ref.nan_to_num(), atol=2e-6, rtol=2e-5)


@needs_blocks
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_blocks_give_the_same_bits_on_any_number_of_threads(threads):
    q, k, v = (x.requires_grad_() for x in _blocks_qkv(130, 32, heads=5))

    def run():
        out, _ = causal(q, k, v, is_causal=True)
        return out, *torch.autograd.grad(out.square().sum(), (q, k, v))

    for one, many in zip(*_on_threads((1, threads), run)):
        assert torch.equal(one, many)


def _on_threads(counts: tuple[int, ...], run) -> list:
    """``run()``'s result on each thread count in turn; the thread count is restored after."""
    previous, results = torch.get_num_threads(), []
    try:
        for count in counts:
            torch.set_num_threads(count)
            results.append(run())
    finally:
        torch.set_num_threads(previous)
    return results


def test_blocks_fit_only_fp32_cpu_head_sizes_of_16s():
    fits = blocks_fit(torch.empty(1, 1, 4, 64))
    assert fits == blocks_available()
    for shape_dtype in [((1, 1, 4, 8), torch.float32), ((1, 1, 4, 272), torch.float32), ((1, 1, 4, 64), torch.float64)]:
        shape, dtype = shape_dtype
        assert not blocks_fit(torch.empty(shape, dtype=dtype))


@needs_blocks
def test_the_compiled_call_refuses_a_head_size_it_cannot_take():
    from attnlab.functional.kernels import _causal

    q = torch.zeros(1, 1, 4, 8)
    view = (q.data_ptr(), *q.stride()[:3])
    with pytest.raises(ValueError, match="d=8"):
        _causal.forward(view, view, view, view, (0, 0, 0, 0), view, 1, 1, 4, 8, 1.0, 1, True)


@needs_blocks
@pytest.mark.parametrize("threads", [2, 3])
def test_blocks_split_few_heads_over_threads_by_key_block(threads):
    """One (batch, head) and more threads: the key blocks are shared out, each thread summing its
    part of dq; the gradients still equal float64 SDPA's."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 1, 300, 32, generator=g).requires_grad_() for _ in range(3))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out, _ = causal(q, k, v, is_causal=True)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    finally:
        torch.set_num_threads(previous)
    ref_q, ref_k, ref_v = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = F.scaled_dot_product_attention(ref_q, ref_k, ref_v, is_causal=True)
    ref_grads = torch.autograd.grad(ref.square().sum(), (ref_q, ref_k, ref_v))
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-5)
    for got, expected, name in zip(grads, ref_grads, "qkv"):
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=2e-4, msg=name)


def test_a_measured_table_takes_the_blocks_from_where_they_won_every_longer_cell():
    from benchmarks.attention_kernels import causal_min_queries

    def cells(ratios):
        return [{"N": n, "backward": backward, "ratio": r} for n, backward, r in ratios]

    both = [(32, False, 1.1), (32, True, 0.9), (48, False, 0.7), (48, True, 0.6), (1024, False, 0.5)]
    assert causal_min_queries(cells(both)) == 48  # a loss in either mode at 32 starts it above
    assert causal_min_queries(cells([(32, False, 0.9), (64, True, 0.8)])) == 32
    assert causal_min_queries(cells([(32, False, 0.9), (64, True, 1.2)])) == 0  # lost at the longest
    assert causal_min_queries([]) == 0  # the blocks do not run here


@needs_blocks
def test_a_causal_layer_reaches_the_blocks_and_matches_torch(monkeypatch):
    """``MultiHeadAttention(is_causal=True)`` goes through ``attention()`` and the dispatcher to the
    blocks (spied), with a key-padding mask, and gives ``nn.MultiheadAttention``'s output and gradients."""
    chosen = []
    choose = kernels_package.choose_kernel

    def spy(*args, **kwargs):
        chosen.append(choose(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(kernels_package, "choose_kernel", spy)
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(64, 4, batch_first=True)  # head size 16
    ours = MultiHeadAttention.from_torch(ref)
    n = 100
    x = torch.randn(B, n, 64, generator=torch.Generator().manual_seed(6))
    padding = torch.zeros(B, n, dtype=torch.bool)
    padding[1, -30:] = True  # torch's sense: True = padded
    results = []
    for module, extra in ((ref, {"attn_mask": ~torch.ones(n, n, dtype=torch.bool).tril()}), (ours, {})):
        inputs = x.clone().requires_grad_()
        out, _ = module(inputs, inputs, inputs, key_padding_mask=padding, is_causal=True, need_weights=False, **extra)
        results.append((out, torch.autograd.grad(out.square().sum(), inputs)[0]))
    assert causal in chosen
    (ref_out, ref_grad), (out, grad) = results
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-4)


# --- the same compiled blocks over every key (``full_blocks``) --------------------------------


def _full_reference(q, k, v, mask):
    """float64 SDPA, every query against every allowed key."""
    m = None if mask is None else (mask.double() if mask.is_floating_point() else mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=m)


@needs_blocks
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize(("n", "d"), [(1, 16), (7, 16), (64, 64), (65, 32), (130, 48), (200, 80)], ids=str)
def test_full_blocks_equal_float64_sdpa_forward_and_backward(n, d, mask_kind):
    q, k, v = (x.requires_grad_() for x in _blocks_qkv(n, d))
    mask = _padding(mask_kind, n)
    out, weights = full_blocks(q, k, v, mask)
    assert weights is None
    assert type(out.grad_fn).__name__ == "_CompiledBlocksBackward"  # the blocks, not SDPA
    ref_q, ref_k, ref_v = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = _full_reference(ref_q, ref_k, ref_v, mask)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-6)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), grad.float())
    expected = torch.autograd.grad(ref, (ref_q, ref_k, ref_v), grad)
    for name, a, b in zip("qkv", got, expected):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=name)


@needs_blocks
def test_a_sentence_with_every_key_padded_gets_zero_context_and_gradients():
    q, k, v = (x.requires_grad_() for x in _blocks_qkv(70, 16))
    allowed = torch.ones(B, 1, 1, 70, dtype=torch.bool)
    allowed[1] = False
    out, _ = full_blocks(q, k, v, allowed)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    torch.testing.assert_close(
        out[0].double(), _full_reference(*(x[:1].double() for x in (q, k, v)), None)[0], rtol=1e-5, atol=2e-6
    )
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for grad in grads:
        assert torch.isfinite(grad).all() and torch.equal(grad[1], torch.zeros_like(grad[1]))


@needs_blocks
@pytest.mark.parametrize("threads", [1, 3])
def test_full_blocks_agree_on_any_number_of_threads(threads):
    """One and three threads: by item, or a head's key blocks shared out (dq summed per thread)."""
    q, k, v = (x.requires_grad_() for x in _blocks_qkv(150, 32, heads=1))

    def run():
        out, _ = full_blocks(q, k, v)
        return out, *torch.autograd.grad(out.sum(), (q, k, v))

    for a, b in zip(*_on_threads((2, threads), run)):
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
        q, k, v = (x.requires_grad_(grad) for x in _blocks_qkv(32, 16))
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
        ref = torch.nn.MultiheadAttention(64, 4, batch_first=True)
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
