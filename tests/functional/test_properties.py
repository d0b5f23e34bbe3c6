"""Properties of ``attention()`` and ``MultiHeadAttention`` (hypothesis) over random shapes, dtypes,
masks (fully masked rows included), every score and normaliser, and large magnitudes.

At moderate magnitudes both equal an explicit float64 reference written from the formulas, within
a tolerance of the dtype's epsilon times the size of the scores (the rounding of a score moves a
weight by about as much). At large magnitudes, where a rounded score may change which key wins,
they stay what the maths says: finite, a convex combination of the values, zero weight on masked
keys, rows summing to one or (no allowed key) zero, and finite gradients.

``MultiHeadAttention`` lives in ``layers/``; its properties are here because they rest on
``attention()``'s and share its reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from attnlab.functional import attention
from attnlab.layers import AdditiveScore, GeneralScore, MultiHeadAttention, TemperatureSoftmax, WeightedSoftmax

PROPERTIES = settings(max_examples=300, deadline=None, derandomize=True)
DTYPES = (torch.float32, torch.bfloat16, torch.float64)
SCORES = ("dot", "scaled_dot", "cosine", "additive", "general")
NORMALIZERS = ("softmax", "sparsemax", "temperature_softmax", "weighted_softmax")
MASKS = ("none", "bool", "bias", "padding")
MODERATE, LARGE = (0.1, 0.5, 1.0, 2.0), (1e2, 1e4, 1e6)
INF = float("inf")


@dataclass
class Case:
    """One drawn configuration; tensors come from ``seed``."""

    dtype: torch.dtype
    batch: int
    heads: int
    lq: int
    lk: int
    dim: int
    score: str
    normalize: str
    mask: str
    is_causal: bool
    magnitude: float
    fused: bool | None
    seed: int


@st.composite
def cases(draw, magnitudes: tuple[float, ...], max_dim: int = 8) -> Case:
    """A configuration of shapes, dtype, score, normaliser, mask and magnitude."""
    normalize = draw(st.sampled_from(NORMALIZERS))
    score = "additive" if normalize == "weighted_softmax" else draw(st.sampled_from(SCORES))
    return Case(
        dtype=draw(st.sampled_from(DTYPES)),
        batch=draw(st.integers(1, 2)),
        heads=draw(st.integers(1, 3)),
        lq=draw(st.integers(1, 5)),
        lk=draw(st.integers(1, 6)),
        dim=draw(st.integers(1, max_dim)),
        score=score,
        normalize=normalize,
        mask=draw(st.sampled_from(MASKS)),
        is_causal=draw(st.booleans()),
        magnitude=draw(st.sampled_from(magnitudes)),
        fused=draw(st.sampled_from((None, False, True))) if (score, normalize) == ("scaled_dot", "softmax") else None,
        seed=draw(st.integers(0, 2**16)),
    )


def build_score_and_normalizer(case: Case, dim: int) -> tuple[object, object]:
    """The score and normaliser of ``case`` for features of size ``dim``: names or seeded modules."""
    with torch.random.fork_rng():
        torch.manual_seed(case.seed)
        score = {
            "additive": lambda: AdditiveScore(dim, dim, 4, reduce=case.normalize != "weighted_softmax"),
            "general": lambda: GeneralScore(dim, dim),
        }.get(case.score, lambda: case.score)()
        normalize = {
            "temperature_softmax": lambda: TemperatureSoftmax(0.7, learnable=True),
            "weighted_softmax": lambda: WeightedSoftmax(4),
        }.get(case.normalize, lambda: case.normalize)()
    to_dtype = lambda m: m.to(case.dtype) if isinstance(m, torch.nn.Module) else m
    return to_dtype(score), to_dtype(normalize)


def draw_mask(case: Case, g: torch.Generator) -> Tensor | None:
    """A mask in ``attention``'s convention, each kind with a fully masked query row or batch element."""
    shape = (case.batch, case.heads, case.lq, case.lk)
    if case.mask == "none":
        return None
    if case.mask == "padding":  # (B, 1, 1, Lk); the first batch element may attend to nothing
        lengths = torch.randint(1, case.lk + 1, (case.batch,), generator=g)
        lengths[0] = 0
        return (torch.arange(case.lk) < lengths[:, None])[:, None, None, :]
    allowed = torch.rand(shape, generator=g) > 0.3
    allowed[..., 0, :] = False
    if case.mask == "bool":
        return allowed
    bias = torch.randn(shape, generator=g).masked_fill(~allowed, -INF)
    return bias.to(case.dtype) if case.seed % 2 else bias  # float32 biases meet bf16 and float64 scores too


def reference_scores(score: object, q: Tensor, k: Tensor) -> Tensor:
    """f_sim in float64 by its formula; parametric scores read their module's weights."""
    if isinstance(score, GeneralScore):  # Luong et al. (2015), Eq. 8
        return q @ score.weight.double() @ k.mT
    if isinstance(score, AdditiveScore):  # Bahdanau et al. (2015), Eq. 6
        w1, w2 = score.query_proj.weight.double(), score.key_proj.weight.double()
        features = torch.tanh((q @ w1.T)[..., :, None, :] + (k @ w2.T + score.key_proj.bias.double())[..., None, :, :])
        return features if score.v is None else features @ score.v.weight.double()[0]
    if score == "cosine":
        unit = lambda x: x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return 10.0 * unit(q) @ unit(k).mT
    return q @ k.mT / (math.sqrt(q.shape[-1]) if score == "scaled_dot" else 1.0)


def reference_bias(mask: Tensor | None, is_causal: bool, lq: int, lk: int) -> Tensor:
    """The mask as a float64 bias: 0 where a query may attend, -inf where not."""
    bias = torch.zeros(lq, lk, dtype=torch.float64)
    if is_causal:  # key j is visible to query i iff j <= i + (Lk - Lq)
        bias = bias.masked_fill(torch.arange(lk)[None, :] > torch.arange(lq)[:, None] + (lk - lq), -INF)
    if mask is None:
        return bias
    return bias + (torch.zeros(mask.shape).masked_fill(~mask, -INF) if mask.dtype == torch.bool else mask).double()


def reference_weights(normalize: object, scores: Tensor, bias: Tensor, sparsemax_ref) -> Tensor:
    """f_norm in float64 on the scores plus the bias; rows with no allowed key are zeros."""
    if isinstance(normalize, WeightedSoftmax):
        scores = scores @ normalize.weight.double()
    if isinstance(normalize, TemperatureSoftmax):
        scores = scores / normalize.temperature.double()
    allowed = (bias != -INF).any(dim=-1, keepdim=True)
    scores = scores + bias.masked_fill(~allowed, 0.0)  # (..., Lq, Lk)
    weights = sparsemax_ref(scores) if normalize == "sparsemax" else torch.softmax(scores, dim=-1)
    return weights * allowed


def tolerance(dtype: torch.dtype, scores: Tensor) -> float:
    """How far rounding in ``dtype`` may move a weight: a few epsilons per unit of score."""
    eps = torch.finfo(dtype).eps
    return 16 * eps * (1.0 + float(scores.detach()[scores.isfinite()].abs().max()))


def draw_qkv(case: Case, g: torch.Generator, dim_v: int) -> tuple[Tensor, Tensor, Tensor]:
    """Q, K, V of ``case``'s magnitude in its dtype, as leaves."""
    shape = (case.batch, case.heads)
    q = case.magnitude * torch.randn(*shape, case.lq, case.dim, generator=g)
    k = case.magnitude * torch.randn(*shape, case.lk, case.dim, generator=g)
    v = torch.randn(*shape, case.lk, dim_v, generator=g)
    return tuple(x.to(case.dtype).requires_grad_(True) for x in (q, k, v))


def run_attention(case: Case) -> tuple[tuple[Tensor, ...], Tensor, Tensor, object, object, Tensor | None]:
    """``attention`` on a drawn case: inputs, context, weights, score, normaliser and mask."""
    g = torch.Generator().manual_seed(case.seed)
    q, k, v = draw_qkv(case, g, dim_v=3)
    mask = draw_mask(case, g)
    score, normalize = build_score_and_normalizer(case, case.dim)
    options = dict(mask=mask, is_causal=case.is_causal, need_weights=True, fused=case.fused)
    context, weights = attention(q, k, v, score=score, normalize=normalize, **options)
    return (q, k, v), context, weights, score, normalize, mask


def check_gradients_finite(outputs: tuple[Tensor, ...], inputs: list[Tensor], seed: int) -> None:
    """Backpropagate a random projection of the outputs; every input gets a finite gradient."""
    g = torch.Generator().manual_seed(seed)
    loss = sum((x.double() * torch.randn(x.shape, generator=g, dtype=torch.float64)).sum() for x in outputs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    for x, grad in zip(inputs, grads):
        assert grad is None or torch.isfinite(grad).all(), f"non-finite gradient for a leaf of shape {tuple(x.shape)}"


@PROPERTIES
@given(case=cases(MODERATE))
def test_attention_equals_the_float64_reference(case, sparsemax_ref):
    (q, k, v), context, weights, score, normalize, mask = run_attention(case)
    with torch.no_grad():
        scores = reference_scores(score, q.double(), k.double())
        bias = reference_bias(mask, case.is_causal, case.lq, case.lk)
        expected = reference_weights(normalize, scores, bias, sparsemax_ref)
    tol = tolerance(case.dtype, scores)
    assert context.dtype == case.dtype and weights.shape == expected.shape
    torch.testing.assert_close(weights.double(), expected, atol=tol, rtol=0)
    v_max = float(v.detach().abs().max())
    torch.testing.assert_close(context.double(), expected @ v.detach().double(), atol=tol * case.lk * v_max, rtol=0)
    check_gradients_finite((context, weights), [q, k, v], case.seed)


@PROPERTIES
@given(case=cases(LARGE))
def test_attention_at_large_magnitudes_is_finite_and_convex(case):
    (q, k, v), context, weights, _, _, mask = run_attention(case)
    bias = reference_bias(mask, case.is_causal, case.lq, case.lk).expand(weights.shape)
    assert torch.isfinite(context).all() and torch.isfinite(weights).all()
    assert not weights[bias == -INF].any(), "a masked key got weight"
    eps = torch.finfo(case.dtype).eps
    assert (weights >= 0).all() and (weights <= 1 + 4 * eps).all()
    rows = (bias != -INF).any(dim=-1).double()  # 1 where a query may attend somewhere, else 0
    torch.testing.assert_close(weights.double().sum(-1), rows, atol=16 * eps * case.lk, rtol=0)
    bound = float(v.detach().abs().max()) * (1 + 16 * eps * case.lk)
    assert (context.abs() <= bound).all(), "the context left the convex hull of the values"
    check_gradients_finite((context, weights), [q, k, v], case.seed)


def reference_multihead(module: MultiHeadAttention, x: Tensor, memory: Tensor, mask: Tensor, sparsemax_ref):
    """MultiHead(Q, K, V) = Concat(head_1..h) W^O in float64 from the module's weights (Vaswani et al., 2017)."""
    d64 = lambda t: None if t is None else t.detach().double()
    w_q, w_k, w_v = d64(module.in_proj_weight).chunk(3)
    b_q, b_k, b_v = d64(module.in_proj_bias).chunk(3)
    batch, lq, _ = x.shape
    heads = lambda t: t.view(batch, t.shape[1], module.num_heads, module.head_dim).transpose(1, 2)  # (B, H, L, hd)
    q, k, v = heads(d64(x) @ w_q.T + b_q), heads(d64(memory) @ w_k.T + b_k), heads(d64(memory) @ w_v.T + b_v)
    scores = reference_scores(module.score, q, k)  # (B, H, Lq, Lk[, E])
    weights = reference_weights(module.normalize, scores, mask, sparsemax_ref)  # (B, H, Lq, Lk)
    context = (weights @ v).transpose(1, 2).reshape(batch, lq, module.embed_dim)  # (B, Lq, E)
    return context @ d64(module.out_proj.weight).T + d64(module.out_proj.bias), weights, scores


@PROPERTIES
@given(case=cases(MODERATE + LARGE, max_dim=3), self_attention=st.booleans())
def test_multihead_attention_equals_the_float64_reference_and_stays_finite(case, self_attention, sparsemax_ref):
    g = torch.Generator().manual_seed(case.seed)
    embed = case.heads * case.dim
    score, normalize = build_score_and_normalizer(case, case.dim)
    with torch.random.fork_rng():
        torch.manual_seed(case.seed)
        module = MultiHeadAttention(embed, case.heads, score=score, normalize=normalize).to(case.dtype)
        torch.nn.init.normal_(module.in_proj_bias)
    x = (case.magnitude * torch.randn(case.batch, case.lq, embed, generator=g)).to(case.dtype).requires_grad_(True)
    lk = case.lq if self_attention else case.lk
    memory = x if self_attention else torch.randn(case.batch, lk, embed, generator=g).to(case.dtype)
    padding = torch.arange(lk) >= torch.randint(0, lk + 1, (case.batch,), generator=g)[:, None]  # (B, Lk), may be all
    options = dict(key_padding_mask=padding, is_causal=case.is_causal, need_weights=True, average_attn_weights=False)
    out, weights = module(x, memory, memory, **options)
    bias = reference_bias(~padding[:, None, None, :], case.is_causal, case.lq, lk)  # (B, 1, Lq, Lk)
    with torch.no_grad():
        expected, expected_weights, scores = reference_multihead(module, x, memory, bias, sparsemax_ref)
    assert torch.isfinite(out).all() and out.dtype == case.dtype
    if case.magnitude in MODERATE:
        tol = tolerance(case.dtype, scores)
        torch.testing.assert_close(weights.double(), expected_weights, atol=tol, rtol=0)
        scale = 1 + float(expected.abs().max())
        torch.testing.assert_close(out.double(), expected, atol=tol * lk * embed * scale, rtol=0)
    check_gradients_finite((out, weights), [x, *module.parameters()], case.seed)
