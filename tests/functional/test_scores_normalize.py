"""Scores and normalisers against their formulas, and float64 gradcheck for each."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from attnlab.functional import (
    attention,
    cosine_score,
    dot_score,
    resolve_normalizer,
    resolve_score,
    scaled_dot_score,
    softmax,
    sparsemax,
)
from attnlab.layers import AdditiveScore, GeneralScore, TemperatureSoftmax, WeightedSoftmax


def _qk(dtype=torch.float64, lq=3, lk=4, d=5, batch=(2,)):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(*batch, lq, d, generator=g, dtype=dtype)
    k = torch.randn(*batch, lk, d, generator=g, dtype=dtype)
    return q, k


def test_dot_and_scaled_dot_match_the_formula():
    q, k = _qk()
    expected = torch.einsum("bid,bjd->bij", q, k)
    torch.testing.assert_close(dot_score(q, k), expected)
    torch.testing.assert_close(scaled_dot_score(q, k), expected / math.sqrt(5))
    torch.testing.assert_close(scaled_dot_score(q, k, scale=0.5), expected * 0.5)


def test_cosine_score_is_scaled_cosine():
    q, k = _qk()
    cos = torch.nn.functional.cosine_similarity(q.unsqueeze(-2), k.unsqueeze(-3), dim=-1)
    torch.testing.assert_close(cosine_score(q, k, scale=7.0), 7.0 * cos)


def test_general_score_is_bilinear_both_orders():
    torch.manual_seed(0)
    score = GeneralScore(5, 6).double()
    q = torch.randn(2, 3, 5, dtype=torch.float64)
    for lk in (2, 7):  # fewer and more keys than queries take different products
        k = torch.randn(2, lk, 6, dtype=torch.float64)
        expected = torch.einsum("bid,de,bje->bij", q, score.weight, k)
        torch.testing.assert_close(score(q, k), expected)


def test_additive_score_matches_bahdanau_formula():
    torch.manual_seed(0)
    score = AdditiveScore(5, 6, 7).double()
    q = torch.randn(2, 3, 5, dtype=torch.float64)
    k = torch.randn(2, 4, 6, dtype=torch.float64)
    w1, w2, b, v = score.query_proj.weight, score.key_proj.weight, score.key_proj.bias, score.v.weight[0]
    expected = torch.empty(2, 3, 4, dtype=torch.float64)
    for bi in range(2):
        for i in range(3):
            for j in range(4):
                expected[bi, i, j] = v @ torch.tanh(w1 @ q[bi, i] + w2 @ k[bi, j] + b)
    torch.testing.assert_close(score(q, k), expected)


def test_softmax_temperature_and_mask():
    s = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(softmax(s, temperature=2.0), torch.softmax(s / 2, -1))
    w = softmax(s, torch.tensor([[True, False, True]]))
    torch.testing.assert_close(w, torch.tensor([[math.exp(1), 0.0, math.exp(3)]]) / (math.exp(1) + math.exp(3)))
    bias = torch.tensor([[0.0, float("-inf"), 1.0]])
    torch.testing.assert_close(softmax(s, bias), torch.softmax(s + bias, -1))


def test_sparsemax_matches_projection_onto_simplex():
    s = torch.tensor([[0.5, 1.2, -0.3, 1.0], [3.0, 0.0, 0.0, 0.0]])
    w = sparsemax(s)
    # Reference: the Euclidean projection solved by bisection on tau, independent of the sort form.
    lo, hi = s.min(-1, keepdim=True).values - 1, s.max(-1, keepdim=True).values
    for _ in range(100):
        tau = (lo + hi) / 2
        over = (s - tau).clamp(min=0).sum(-1, keepdim=True) > 1
        lo, hi = torch.where(over, tau, lo), torch.where(over, hi, tau)
    torch.testing.assert_close(w, (s - (lo + hi) / 2).clamp(min=0), atol=1e-5, rtol=0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    assert (w == 0).any(), "sparsemax must give exact zeros to weak keys"
    assert torch.equal(w[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))


_SPARSEMAX_CASES = [
    (dtype, magnitude)
    for dtype, magnitudes in {
        torch.float16: (1.0, 300.0, 3e4),
        torch.bfloat16: (1.0, 300.0, 1.7e7, 1e30),
        torch.float32: (1.0, 300.0, 1.7e7, 1e30),
        torch.float64: (1.0, 300.0, 1.7e7, 1e30),
    }.items()
    for magnitude in magnitudes
]
_SPARSEMAX_TOLERANCE = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 2e-6, torch.float64: 1e-12}


def _large_scores(dtype, magnitude):
    """Rows of scores of about ``magnitude``: random, a tie at the top, a run of near ties, one masked key."""
    g = torch.Generator().manual_seed(4)
    s = magnitude * torch.randn(4, 6, generator=g, dtype=torch.float64)
    s[1, 3] = s[1].max()
    s[2] = magnitude + torch.tensor([0.0, -0.25, -0.5, -2.0, -3.0, 0.75], dtype=torch.float64)
    s[3, 0] = float("-inf")
    return s.to(dtype)


@pytest.mark.parametrize("dtype,magnitude", _SPARSEMAX_CASES, ids=lambda x: str(x).removeprefix("torch."))
def test_sparsemax_of_large_scores_is_the_papers_algorithm(dtype, magnitude, sparsemax_ref):
    s = _large_scores(dtype, magnitude).requires_grad_(True)
    g = torch.randn(4, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    w = sparsemax(s)
    w.backward(g)
    # The reference in float64 on the same numbers, shifted by the row maximum (exact in float64):
    # sparsemax(z + c) = sparsemax(z) (Martins & Astudillo, 2016, Prop. 2).
    s64 = s.detach().double()
    s64 = (s64 - s64.amax(-1, keepdim=True)).requires_grad_(True)
    expected = sparsemax_ref(s64)
    expected.backward(g.double())
    tolerance = _SPARSEMAX_TOLERANCE[dtype]
    assert w.dtype == dtype and s.grad.dtype == dtype
    torch.testing.assert_close(w.double(), expected, atol=tolerance, rtol=0)
    torch.testing.assert_close(s.grad.double(), s64.grad, atol=4 * tolerance, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_sparsemax_shares_the_weight_among_infinite_scores(dtype, sparsemax_ref):
    inf = float("inf")
    s = torch.tensor(
        [[inf, 0.0, 1.0, -inf], [inf, 5.0, inf, 0.0], [inf, 0.0, 1.0, 2.5], [inf, inf, 1.0, 0.0]], dtype=dtype
    ).requires_grad_(True)
    mask = torch.tensor([[True] * 4, [True] * 4, [False, True, True, True], [False] * 4])
    w = sparsemax(s, mask)
    # The limit of sparsemax as the +inf entries grow together: they share the weight equally.
    expected = torch.tensor([[1.0, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    expected[2, 1:] = sparsemax_ref(s.detach()[2, 1:])  # the +inf key masked out: the finite rest
    torch.testing.assert_close(w.double(), expected, atol=_SPARSEMAX_TOLERANCE[dtype], rtol=0)
    (w * torch.arange(16.0).view(4, 4).to(dtype)).sum().backward()
    assert torch.isfinite(s.grad).all()
    assert not s.grad[3].any() and not s.grad[2, 0], "masked keys and fully masked rows get no gradient"


def test_sparsemax_of_a_bf16_dot_score_under_autocast(sparsemax_ref):
    g = torch.Generator().manual_seed(6)
    q = (2 + torch.rand(2, 3, 64, generator=g)).requires_grad_(True)
    k = (2 + torch.rand(2, 5, 64, generator=g)).requires_grad_(True)
    v = torch.randn(2, 5, 4, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, w = attention(q, k, v, score="dot", normalize="sparsemax", need_weights=True)
    scores = dot_score(q.detach().bfloat16(), k.detach().bfloat16())  # (2, 3, 5): 256 and more
    assert scores.min() >= 256
    torch.testing.assert_close(w.double(), sparsemax_ref(scores.double()), atol=8e-3, rtol=0)
    out.float().sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_weighted_softmax_reduces_score_vectors():
    torch.manual_seed(0)
    norm = WeightedSoftmax(3)
    e = torch.randn(2, 4, 5, 3)
    torch.testing.assert_close(norm(e), torch.softmax(e @ norm.weight, -1))
    with pytest.raises(ValueError, match=r"\(\.\.\., Lq, Lk, 3\)"):
        norm(torch.randn(2, 4, 5))


@pytest.mark.parametrize("normalize", [softmax, sparsemax])
def test_fully_masked_rows_are_zero_without_nan(normalize):
    s = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, 1] = False
    w = normalize(s, mask)
    assert torch.equal(w[0, 1], torch.zeros(4))
    torch.testing.assert_close(w[0, 0].sum(), torch.tensor(1.0))
    (w * torch.randn_like(w)).sum().backward()
    assert torch.isfinite(s.grad).all()
    assert torch.equal(s.grad[0, 1], torch.zeros(4))


@pytest.mark.parametrize("name", ["dot", "scaled_dot", "cosine"])
def test_gradcheck_parameter_free_scores(name):
    q, k = _qk(batch=(2,))
    q.requires_grad_(True)
    k.requires_grad_(True)
    assert gradcheck(resolve_score(name), (q, k))


@pytest.mark.parametrize("cls,args", [(GeneralScore, (5, 6)), (AdditiveScore, (5, 6, 4))])
def test_gradcheck_parametric_scores(cls, args):
    torch.manual_seed(0)
    score = cls(*args).double()
    q = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    params = tuple(score.parameters())
    names = [n for n, _ in score.named_parameters()]

    def fn(q, k, *ps):
        return torch.func.functional_call(score, dict(zip(names, ps)), (q, k))

    assert gradcheck(fn, (q, k, *params))


@pytest.mark.parametrize("name", ["softmax", "sparsemax"])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_normalizers(name, masked):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 3, 6, generator=g) > 0.3 if masked else None
    if mask is not None:
        mask[0, 0] = False  # one fully masked row too
    assert gradcheck(lambda x: resolve_normalizer(name)(x, mask), (s,))


def test_gradcheck_weighted_and_temperature_softmax():
    torch.manual_seed(0)
    ws = WeightedSoftmax(3).double()
    e = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    w = ws.weight.detach().clone().requires_grad_(True)
    assert gradcheck(lambda e, w: torch.func.functional_call(ws, {"weight": w}, (e,)), (e, w))
    ts = TemperatureSoftmax(0.7, learnable=True).double()
    s = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    log_t = ts.log_temperature.detach().clone().requires_grad_(True)
    assert gradcheck(lambda s, t: torch.func.functional_call(ts, {"log_temperature": t}, (s,)), (s, log_t))
    torch.testing.assert_close(ts(s), torch.softmax(s / 0.7, -1))


def test_unknown_and_parametric_names_are_explained():
    with pytest.raises(
        ValueError,
        match=r"unknown score 'dott'; expected one of "
        r"\['additive', 'cosine', 'dot', 'general', 'scaled_dot'\] or a callable \(query, key\)",
    ):
        resolve_score("dott")
    with pytest.raises(ValueError, match=r"score 'additive' has learned weights: .*score=AdditiveScore\(\.\.\.\)"):
        resolve_score("additive")
    with pytest.raises(
        ValueError,
        match=r"unknown normalizer 'softmaks'; expected one of \['softmax', 'sparsemax', "
        r"'temperature_softmax', 'weighted_softmax'\] or a callable \(scores, mask\)",
    ):
        resolve_normalizer("softmaks")
    with pytest.raises(
        ValueError,
        match=r"normalizer 'weighted_softmax' has learned weights: "
        r".*normalize=WeightedSoftmax\(\.\.\.\)",
    ):
        resolve_normalizer("weighted_softmax")
    with pytest.raises(ValueError, match=r"query \(2, 3, 5\) and key \(2, 4, 6\)"):
        dot_score(torch.randn(2, 3, 5), torch.randn(2, 4, 6))


def test_names_resolve_to_the_functions_and_callables_pass_through():
    assert resolve_score("scaled_dot") is scaled_dot_score and resolve_normalizer("sparsemax") is sparsemax
    mine = lambda q, k: q @ k.transpose(-2, -1)
    assert resolve_score(mine) is mine and resolve_normalizer(softmax) is softmax


def test_additive_score_with_keys_projected_once_is_the_same():
    torch.manual_seed(0)
    score = AdditiveScore(5, 6, 7)
    q, k = torch.randn(2, 3, 5), torch.randn(2, 4, 6)
    torch.testing.assert_close(score(q, k, projected_keys=score.project_keys(k)), score(q, k))
    torch.testing.assert_close(score.project_keys(k), k @ score.key_proj.weight.T + score.key_proj.bias)
