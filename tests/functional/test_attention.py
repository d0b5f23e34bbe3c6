"""attention(): the fused path against the explicit one and SDPA, masks, empty and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.functional import attention, attention_weights, causal_mask, nan_checks, sparsemax
from attnlab.functional.kernels import Thresholds, set_thresholds
from attnlab.layers import AdditiveScore, WeightedSoftmax

B, H, LQ, LK, D = 2, 3, 5, 7, 8


def _qkv(lq=LQ, lk=LK, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, lq, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, lk, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, lk, D + 1, generator=g, dtype=dtype)
    return q, k, v


def _masks(lq=LQ, lk=LK):
    g = torch.Generator().manual_seed(3)
    padding = torch.ones(B, 1, 1, lk, dtype=torch.bool)
    padding[1, ..., lk - 3 :] = False
    arbitrary = torch.rand(B, H, lq, lk, generator=g) > 0.4
    arbitrary[0, 1, 2] = False  # a query that may attend to nothing
    bias = torch.randn(B, H, lq, lk, generator=g)
    bias_inf = bias.masked_fill(~arbitrary, float("-inf"))
    return {"none": None, "padding": padding, "arbitrary": arbitrary, "bias": bias, "bias_inf": bias_inf}


def _reference(q, k, v, mask=None, is_causal=False):
    """softmax(QK^T / sqrt(d) + M) V written out in float64, M the mask as a bias."""
    lq, lk = q.shape[-2], k.shape[-2]
    bias = torch.zeros(lq, lk, dtype=torch.float64)
    if is_causal:
        bias = bias.masked_fill(~causal_mask(lq, lk), float("-inf"))
    if mask is not None:
        bias = bias + (torch.zeros(mask.shape).masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else mask)
    s = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias
    w = torch.softmax(s, -1).nan_to_num(0.0)  # rows with no allowed key: zeros
    return (w @ v.double()).float(), w.float()


@pytest.mark.parametrize("mask_kind", ["none", "padding", "arbitrary", "bias", "bias_inf"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("lk", [LQ, LK])
def test_fused_sdpa_explicit_and_reference_agree(mask_kind, is_causal, lk):
    q, k, v = _qkv(lk=lk)
    mask = _masks(lk=lk)[mask_kind]
    ref_out, ref_w = _reference(q, k, v, mask, is_causal)
    for fused in (True, False, None):
        out, w = attention(q, k, v, mask=mask, is_causal=is_causal, need_weights=True, fused=fused)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5, msg=f"fused={fused}")
        torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5, msg=f"fused={fused}")


@pytest.mark.parametrize("mask_kind", ["padding", "arbitrary", "bias_inf"])
def test_fused_and_explicit_gradients_agree_without_nan(mask_kind):
    mask = _masks()[mask_kind]
    grads = {}
    for fused in (True, False):
        q, k, v = (x.requires_grad_(True) for x in _qkv())
        out, w = attention(q, k, v, mask=mask, need_weights=True, fused=fused)
        (out.square().sum() + (w * torch.arange(LK)).sum()).backward()
        grads[fused] = (q.grad, k.grad, v.grad)
    for a, b in zip(grads[True], grads[False]):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fully_masked_query_gives_zero_context_and_weights():
    q, k, v = _qkv()
    mask = torch.ones(LQ, LK, dtype=torch.bool)
    mask[2] = False
    for fused in (True, False):
        out, w = attention(q, k, v, mask=mask, need_weights=True, fused=fused)
        assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
        assert torch.equal(w[..., 2, :], torch.zeros_like(w[..., 2, :]))


def test_matches_torch_sdpa_including_scale():
    q, k, v = _qkv(lk=300)  # long enough for the SDPA kernel under auto choice
    out, _ = attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)


def test_causal_aligns_last_query_with_last_key():
    assert torch.equal(causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    q, k, v = _qkv(lq=2, lk=4)
    out, w = attention(q, k, v, is_causal=True, need_weights=True)
    assert torch.equal(w[..., 0, 3], torch.zeros(B, H))
    # The last query sees everything, like an unmasked call.
    torch.testing.assert_close(out[..., 1, :], attention(q[..., 1:, :], k, v)[0][..., 0, :])


def test_chunked_weights_equal_whole_and_average_over_heads():
    q, k, _ = _qkv(lq=37, lk=11)
    mask = torch.rand(B, 1, 37, 11, generator=torch.Generator().manual_seed(0)) > 0.2
    whole = attention_weights(q, k, mask=mask)
    chunked = attention_weights(q, k, mask=mask, chunk_elements=B * H * 11 * 4)  # 4 queries a chunk
    torch.testing.assert_close(chunked, whole)
    averaged = attention_weights(q, k, mask=mask, average_dim=1, chunk_elements=B * H * 11 * 4)
    torch.testing.assert_close(averaged, whole.mean(1))
    _, w = attention(q, k, k, mask=mask, need_weights=True, weights_average_dim=1, fused=True)
    torch.testing.assert_close(w, whole.mean(1))


@pytest.mark.parametrize("lk", [16, 600])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_kernel_choice_agrees_with_both_paths(lk, grad, dtype):
    q, k, v = (x.to(dtype).requires_grad_(grad) for x in _qkv(lk=lk))
    if dtype == torch.bfloat16:
        fused = attention(q, k, v, is_causal=True, fused=True)[0]
        auto = attention(q, k, v, is_causal=True)[0]
        torch.testing.assert_close(auto.float(), fused.float(), atol=2e-2, rtol=2e-2)
        return
    auto, _ = attention(q, k, v, is_causal=True)
    torch.testing.assert_close(auto, attention(q, k, v, is_causal=True, fused=False)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(auto, attention(q, k, v, is_causal=True, fused=True)[0], atol=1e-5, rtol=1e-5)


def test_general_form_with_additive_score_and_weighted_softmax():
    torch.manual_seed(0)
    score = AdditiveScore(D, D, 4, reduce=False)
    norm = WeightedSoftmax(4)
    q, k, v = _qkv()
    out, w = attention(q, k, v, score=score, normalize=norm, need_weights=True)
    expected_w = torch.softmax(score(q, k) @ norm.weight, -1)
    torch.testing.assert_close(w, expected_w)
    torch.testing.assert_close(out, expected_w @ v)


def test_sparsemax_attention_and_dropout():
    q, k, v = _qkv()
    _out, w = attention(q, k, v, normalize="sparsemax", need_weights=True)
    torch.testing.assert_close(w, sparsemax(q @ k.transpose(-2, -1) / math.sqrt(D)))
    torch.manual_seed(0)
    dropped, w_drop = attention(q, k, v, dropout_p=0.5, need_weights=True, fused=False)
    torch.testing.assert_close(w_drop, attention(q, k, v, need_weights=True)[1])  # weights are pre-dropout
    assert not torch.allclose(dropped, attention(q, k, v)[0])


def test_custom_callables_are_used():
    q, k, v = _qkv()
    out, w = attention(q, k, v, score=lambda q, k: torch.zeros(*q.shape[:-1], k.shape[-2]), need_weights=True)
    torch.testing.assert_close(w, torch.full((B, H, LQ, LK), 1 / LK))
    torch.testing.assert_close(out, v.mean(-2, keepdim=True).expand_as(out))


def test_empty_sequences_give_well_defined_results():
    q, k, v = _qkv()
    out, w = attention(q[..., :0, :], k, v, need_weights=True)
    assert out.shape == (B, H, 0, D + 1) and w.shape == (B, H, 0, LK)
    out, w = attention(q, k[..., :0, :], v[..., :0, :], need_weights=True)
    assert out.shape == (B, H, LQ, D + 1) and torch.equal(out, torch.zeros_like(out))
    assert w.shape == (B, H, LQ, 0)


def test_any_number_of_batch_dims():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 2, 4, 8, generator=g) for _ in range(3))
    out_fused, _ = attention(q, k, v, fused=True)
    out_plain, _ = attention(q, k, v, fused=False)
    torch.testing.assert_close(out_fused, out_plain, atol=1e-6, rtol=1e-5)
    out2d, _ = attention(q[0, 0, 0], k[0, 0, 0], v[0, 0, 0], fused=True)
    torch.testing.assert_close(out2d, out_plain[0, 0, 0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda q, k, v: (q[0, 0], k, v), ValueError, "same rank"),
        (lambda q, k, v: (q, k, v[..., :3, :]), ValueError, r"same length Lk.*\(2, 3, 3, 9\)"),
        (lambda q, k, v: (q[:1].expand(1, H, LQ, D), k[:, :2], v[:, :2]), ValueError, "batch dims"),
        (lambda q, k, v: (q[..., :4], k, v), ValueError, r"query \(2, 3, 5, 4\) and key \(2, 3, 7, 8\)"),
        (lambda q, k, v: (q.long(), k, v), TypeError, "floating point"),
        (lambda q, k, v: (q[0, 0, 0], k, v), ValueError, r"must have shape \(\.\.\., L, d\), got \(8,\)"),
    ],
)
def test_bad_inputs_name_the_shapes(make, error, match):
    q, k, v = _qkv()
    with pytest.raises(error, match=match):
        attention(*make(q, k, v))


def test_bad_masks_name_the_shapes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"mask of shape \(5, 6\) does not broadcast to the scores .*\(2, 3, 5, 7\)"):
        attention(q, k, v, mask=torch.ones(5, 6, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.int64"):
        attention(q, k, v, mask=torch.ones(5, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="fused=True needs"):
        attention(q, k, v, score="dot", fused=True)


@pytest.mark.parametrize("fused", [True, False, None])
def test_nan_checks_name_the_input_inside_the_block_only(fused):
    q, k, v = _qkv()
    k = torch.full_like(k, float("nan"))
    with nan_checks(), pytest.raises(ValueError, match=r"key of shape \(2, 3, 7, 8\) contains NaN"):
        attention(q, k, v, fused=fused)
    out, _ = attention(q, k, v, fused=fused)  # off by default: the NaN goes through
    assert torch.isnan(out).all()
    with nan_checks(), nan_checks(enabled=False):
        assert torch.isnan(attention(q, k, v, fused=fused)[0]).all()


@pytest.mark.parametrize("mask_kind", ["none", "padding", "arbitrary", "bias_inf"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_blockwise_path_for_averaged_weights_equals_explicit(mask_kind, is_causal, kernel_defaults):
    set_thresholds(Thresholds(weights_chunk_elements=B * H * LK * 2))  # blocks of 2 queries: 3 blocks
    mask = _masks()[mask_kind]
    grads = []
    for fused in (None, False):  # None takes the blockwise path for averaged weights on CPU
        q, k, v = (x.requires_grad_(True) for x in _qkv())
        out, w = attention(
            q, k, v, mask=mask, is_causal=is_causal, need_weights=True, weights_average_dim=1, fused=fused
        )
        (out.sum() + (w * torch.arange(LK)).sum()).backward()
        grads.append((out, w, q.grad, k.grad, v.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False, None])
def test_gradcheck_attention_every_path(fused):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g, dtype=torch.float64, requires_grad=True) for n in (3, 5, 5))
    mask = torch.tensor([True, True, False, True, False])  # key padding, broadcast over queries

    def fn(q, k, v):
        out, w = attention(q, k, v, mask=mask, need_weights=True, weights_average_dim=1, fused=fused)
        return out, w

    assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("shape", [(LK,), (LQ, LK), (H, 1, LK), (B, 1, 1, LK), (B, H, LQ, LK)])
def test_masks_of_every_rank_agree_on_every_path(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(5)) > 0.3
    q, k, v = _qkv()
    ref_out, ref_w = _reference(q, k, v, mask)
    for fused in (True, False, None):
        out, w = attention(q, k, v, mask=mask, need_weights=True, fused=fused)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False, None])
@pytest.mark.parametrize("grad", [True, False])
def test_a_nan_query_is_named_on_every_kernel(fused, grad):
    # SDPA's CPU kernel gives a NaN query row zeros, not NaN: the check must look at the query too.
    q, k, v = _qkv()
    q = q.clone()
    q[1, 2, 3, 4] = float("nan")
    q.requires_grad_(grad)
    with nan_checks(), pytest.raises(ValueError, match=r"query of shape \(2, 3, 5, 8\) contains NaN"):
        attention(q, k, v, fused=fused)


@pytest.mark.parametrize("normalize", ["softmax", "sparsemax"])
@pytest.mark.parametrize("score", ["scaled_dot", "dot"])
def test_a_float32_bias_on_bf16_inputs_keeps_bf16(score, normalize):
    q, k, v = (x.bfloat16() for x in _qkv())
    bias = _masks()["bias_inf"]  # float32, with -inf and a fully masked row
    out, w = attention(q, k, v, score=score, normalize=normalize, mask=bias, need_weights=True)
    assert out.dtype == w.dtype == torch.bfloat16
    # The same numbers in float32, a path the reference tests above pin down.
    _, expected = attention(
        q.float(), k.float(), v.float(), score=score, normalize=normalize, mask=bias, need_weights=True
    )
    torch.testing.assert_close(w.float(), expected, atol=0.05, rtol=0)
