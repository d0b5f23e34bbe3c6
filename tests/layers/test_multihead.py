"""MultiHeadAttention against torch.nn.MultiheadAttention, the KV cache, every score, bad input."""

import pytest
import torch
from torch import nn

from attnlab import KVCache, MultiHeadAttention
from attnlab.functional import causal_mask, nan_checks

E, H, B, LQ, LK = 16, 4, 3, 5, 7


def _pair(kdim=None, vdim=None, bias=True, batch_first=True, seed=0):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, bias=bias, batch_first=batch_first)
    return ref, MultiHeadAttention.from_torch(ref)


def _inputs(kdim=E, vdim=E, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, LQ, E, generator=g)
    k = torch.randn(B, LK, kdim, generator=g)
    v = torch.randn(B, LK, vdim, generator=g)
    return x, k, v


def _padding(lk=LK):
    mask = torch.zeros(B, lk, dtype=torch.bool)
    mask[1, -2:] = True
    mask[2, 1] = True
    return mask


def _run_both(ref, ours, q, k, v, **kw):
    """Outputs, weights and input/parameter gradients of both modules for one call."""
    results = []
    for module, extra in ((ref, {}), (ours, {})):
        module.zero_grad()
        inputs = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        if q is k is v:
            inputs = [inputs[0]] * 3
        out, w = module(*inputs, **kw, **extra)
        loss = out.square().sum() + (0.0 if w is None else (w * torch.linspace(0, 1, w.shape[-1])).sum())
        loss.backward()
        grads = [t.grad for t in inputs] + [p.grad for _, p in sorted(module.named_parameters())]
        results.append((out, w, grads))
    return results


CASES = {
    "self": dict(),
    "self_padding": dict(key_padding_mask=_padding(LQ)),
    "self_causal": dict(attn_mask=~causal_mask(LQ), is_causal=True),
    "self_float_mask": dict(attn_mask=torch.randn(LQ, LQ, generator=torch.Generator().manual_seed(2))),
    "self_per_head_mask": dict(attn_mask=torch.rand(B * H, LQ, LQ, generator=torch.Generator().manual_seed(3)) > 0.7),
    "self_padding_and_float": dict(key_padding_mask=_padding(LQ), attn_mask=torch.randn(LQ, LQ)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("need_weights,average", [(False, True), (True, True), (True, False)])
def test_self_attention_matches_torch(case, need_weights, average):
    ref, ours = _pair()
    x, _, _ = _inputs()
    kw = dict(CASES[case], need_weights=need_weights, average_attn_weights=average)
    (r_out, r_w, r_g), (o_out, o_w, o_g) = _run_both(ref, ours, x, x, x, **kw)
    torch.testing.assert_close(o_out, r_out, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(o_w, r_w, atol=1e-6, rtol=1e-5)
    else:
        assert o_w is None
    for a, b in zip(o_g, r_g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kdim,vdim", [(E, E), (6, 10)])
@pytest.mark.parametrize("need_weights", [False, True])
def test_cross_attention_matches_torch(kdim, vdim, need_weights):
    ref, ours = _pair(kdim=kdim, vdim=vdim)
    q, k, v = _inputs(kdim, vdim)
    kw = dict(key_padding_mask=_padding(), need_weights=need_weights)
    (r_out, r_w, r_g), (o_out, o_w, o_g) = _run_both(ref, ours, q, k, v, **kw)
    torch.testing.assert_close(o_out, r_out, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(o_w, r_w, atol=1e-6, rtol=1e-5)
    for a, b in zip(o_g, r_g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_sequence_first_and_unbatched_match_torch():
    ref, ours = _pair(batch_first=False)
    q, k, v = (t.transpose(0, 1) for t in _inputs())
    r_out, r_w = ref(q, k, v, need_weights=True)
    o_out, o_w = ours(q, k, v, need_weights=True)
    torch.testing.assert_close(o_out, r_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o_w, r_w, atol=1e-6, rtol=1e-5)
    r_out, r_w = ref(q[:, 0], k[:, 0], v[:, 0], need_weights=True)
    o_out, o_w = ours(q[:, 0], k[:, 0], v[:, 0], need_weights=True)
    torch.testing.assert_close(o_out, r_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o_w, r_w, atol=1e-6, rtol=1e-5)


def test_no_bias_and_eval_mode_match_torch():
    ref, ours = _pair(bias=False)
    ref.eval(), ours.eval()
    x, _, _ = _inputs()
    with torch.no_grad():  # torch takes its fused inference kernel here
        torch.testing.assert_close(ours(x, x, x)[0], ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


def test_fused_switch_gives_the_same_module_output():
    _, ours = _pair()
    x, _, _ = _inputs()
    outs = []
    for fused in (True, False):
        ours.fused = fused
        outs.append(ours(x, x, x, key_padding_mask=_padding(LQ), is_causal=True, need_weights=True))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_step_by_step_equals_full_causal_pass(rope):
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, rope=rope).eval()
    x = torch.randn(B, 9, E)
    full, full_w = mha(x, x, x, is_causal=True, need_weights=True)
    cache, steps, weights = KVCache(), [], []
    with torch.no_grad():
        prefix = x[:, :3]  # a prompt of 3 positions, then one at a time
        out, _ = mha(prefix, prefix, prefix, is_causal=True, cache=cache)
        steps.append(out)
        for t in range(3, 9):
            xt = x[:, t : t + 1]
            out, w = mha(xt, xt, xt, is_causal=True, cache=cache, need_weights=True)
            steps.append(out)
            weights.append(w)
    torch.testing.assert_close(torch.cat(steps, 1), full.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights[-1][:, 0], full_w[:, -1].detach(), atol=1e-6, rtol=1e-5)
    assert len(cache) == 9


def test_static_cache_projects_memory_once_and_reorders():
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, kdim=6, vdim=10).eval()
    q, k, v = _inputs(6, 10)
    cache = KVCache(static=True)
    with torch.no_grad():
        first, _ = mha(q, k, v, cache=cache, key_padding_mask=_padding())
        # Later steps need no key/value at all: the cache already holds their projections.
        again, _ = mha(q, k[:, :0], v[:, :0], cache=cache, key_padding_mask=_padding())
        torch.testing.assert_close(again, first)
        cache.reorder(torch.tensor([2, 2, 0]))
        reordered, _ = mha(q[[2, 2, 0]], k, v, cache=cache, key_padding_mask=_padding()[[2, 2, 0]])
    torch.testing.assert_close(reordered, first[[2, 2, 0]])


def test_cache_reserves_a_minimum_then_doubles_and_keeps_earlier_entries():
    from attnlab.layers.kv_cache import MIN_CAPACITY

    cache = KVCache()
    keys = [torch.randn(2, 3, 1, 4) for _ in range(MIN_CAPACITY + 1)]
    capacities = []
    for k in keys:
        all_k, _ = cache.update(k, k)
        capacities.append(cache._key.shape[2])
    torch.testing.assert_close(all_k, torch.cat(keys, 2))
    assert capacities[0] == 1  # the first keys are kept as given
    assert set(capacities[1:MIN_CAPACITY]) == {MIN_CAPACITY}  # one buffer up to MIN_CAPACITY positions
    assert capacities[MIN_CAPACITY] == 2 * MIN_CAPACITY


@pytest.mark.parametrize(
    "score,normalize",
    [
        ("dot", "softmax"),
        ("cosine", "softmax"),
        ("general", "softmax"),
        ("additive", "softmax"),
        ("additive", "weighted_softmax"),
        ("scaled_dot", "sparsemax"),
        ("scaled_dot", "temperature_softmax"),
    ],
)
def test_every_score_and_normalizer_trains(score, normalize):
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, score=score, normalize=normalize)
    x, _, _ = _inputs()
    out, w = mha(x, x, x, key_padding_mask=_padding(LQ), is_causal=True, need_weights=True)
    assert out.shape == (B, LQ, E) and torch.isfinite(out).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(B, LQ))
    assert torch.equal(w[1, -1, -2:], torch.zeros(2))  # padded keys get no weight
    out.sum().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_dot_score_equals_scaled_dot_with_rescaled_queries():
    torch.manual_seed(0)
    dot = MultiHeadAttention(E, H, score="dot")
    scaled = MultiHeadAttention(E, H)
    scaled.load_state_dict(dot.state_dict())
    with torch.no_grad():
        scaled.in_proj_weight[:E] *= (E // H) ** 0.5
        scaled.in_proj_bias[:E] *= (E // H) ** 0.5
    x, _, _ = _inputs()
    torch.testing.assert_close(dot(x, x, x)[0], scaled(x, x, x)[0], atol=1e-5, rtol=1e-5)


def test_bad_construction_and_inputs_name_the_values():
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(3\)"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"unknown score 'bilinear'; expected one of \[.*'additive'.*'general'"):
        MultiHeadAttention(E, H, score="bilinear")
    with pytest.raises(ValueError, match=r"unknown normalizer 'softmaks'; expected one of \[.*'weighted_softmax'"):
        MultiHeadAttention(E, H, normalize="softmaks")
    with pytest.raises(ValueError, match="weighted_softmax"):
        MultiHeadAttention(E, H, normalize="weighted_softmax")
    mha = MultiHeadAttention(E, H)
    x, _, _ = _inputs()
    with pytest.raises(ValueError, match=r"query must be \(B, L, 16\), got shape \(3, 5, 8\)"):
        mha(x[..., :8], x, x)
    with pytest.raises(ValueError, match="batch sizes differ"):
        mha(x, x[:2], x[:2])
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(B, Lk\) = \(3, 5\), got shape \(3, 4\)"):
        mha(x, x, x, key_padding_mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask must be \(Lq, Lk\) = \(5, 5\).*got shape \(4, 5\)"):
        mha(x, x, x, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask must be bool"):
        mha(x, x, x, key_padding_mask=torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="query must be 3-D"):
        mha(x[None], x[None], x[None])
    with nan_checks(), pytest.raises(ValueError, match="contains NaN"):
        mha(x.masked_fill(x > 1, float("nan")), x, x)
    with pytest.raises(ValueError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(E, H, add_bias_kv=True))


def test_empty_sequences():
    mha = MultiHeadAttention(E, H)
    x, _, _ = _inputs()
    out, w = mha(x[:, :0], x, x, need_weights=True)
    assert out.shape == (B, 0, E) and w.shape == (B, 0, LQ)
    out, _ = mha(x, x[:, :0], x[:, :0])
    torch.testing.assert_close(out, mha.out_proj.bias.expand(B, LQ, E))


def test_cache_reorder_in_place_equals_index_select_and_leaves_the_callers_tensors_alone():
    torch.manual_seed(0)
    cache = KVCache()
    first_k, first_v = torch.randn(4, 2, 3, 5), torch.randn(4, 2, 3, 5)
    kept_k = first_k.clone()
    with torch.no_grad():
        cache.update(first_k, first_v)  # holds the caller's tensors as they are
        cache.reorder(torch.tensor([1, 1, 3, 0]))
        assert torch.equal(first_k, kept_k)
        step_k, step_v = torch.randn(4, 2, 1, 5), torch.randn(4, 2, 1, 5)
        cache.update(step_k, step_v)  # now in its own, larger buffer
        expected_k, expected_v = cache.key.clone(), cache.value.clone()
        index = torch.tensor([0, 0, 2, 1])  # rows 0 and 2 stay: only 1 and 3 are copied
        cache.reorder(index)
    torch.testing.assert_close(cache.key, expected_k[index], rtol=0, atol=0)
    torch.testing.assert_close(cache.value, expected_v[index], rtol=0, atol=0)
    assert len(cache) == 4
