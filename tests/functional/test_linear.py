"""The linear product kernel: oneDNN's products against F.linear in float64, and the choice between them."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from attnlab.functional.kernels import Thresholds, set_thresholds
from attnlab.functional.kernels.linear import OneDNNLinear, linear, matmul_t, uses_onednn
from attnlab.functional.kernels.thresholds import linear_onednn_rule
from attnlab.layers import FeedForward, MultiHeadAttention
from attnlab.training.linear_cross_entropy import linear_cross_entropy

ONEDNN = Thresholds(cpu_linear_onednn_min_rows=1, cpu_linear_onednn_min_macs=0)
BLAS = Thresholds(cpu_linear_onednn_min_rows=0)


@pytest.fixture
def onednn_products():
    previous = set_thresholds(ONEDNN)
    yield
    set_thresholds(previous)


def _reference(x, w, b):
    """F.linear and its gradients of sum(y * probe) in float64."""
    x, w = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b = None if b is None else b.detach().double().requires_grad_()
    y = F.linear(x, w, b)
    probe = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view_as(y)
    grads = torch.autograd.grad((y * probe).sum(), [t for t in (x, w, b) if t is not None])
    return y, grads, probe


@pytest.mark.parametrize(
    "x_shape, out_features, bias",
    [
        ((2, 5, 24), 40, True),  # 3-D input, out > in
        ((7, 40), 24, True),  # out < in
        ((6, 16), 16, False),  # square, no bias
        ((16,), 8, True),  # one row, 1-D input
    ],
)
def test_onednn_linear_matches_float64_linear(x_shape, out_features, bias, onednn_products):
    torch.manual_seed(0)
    x = torch.randn(*x_shape, requires_grad=True)
    w = torch.randn(out_features, x_shape[-1], requires_grad=True)
    b = torch.randn(out_features, requires_grad=True) if bias else None
    y_ref, grads_ref, probe = _reference(x, w, b)

    y = linear(x, w, b)
    assert type(y.grad_fn).__name__ == "OneDNNLinearBackward"
    grads = torch.autograd.grad((y * probe.float()).sum(), [t for t in (x, w, b) if t is not None])

    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert grads[1].is_contiguous()  # dW as the weight lies: the optimiser's side takes it without a copy


def test_onednn_linear_only_computes_the_gradients_asked(onednn_products):
    x, w = torch.randn(4, 8), torch.randn(6, 8, requires_grad=True)
    (grad_w,) = torch.autograd.grad(OneDNNLinear.apply(x, w, None).sum(), [w])
    torch.testing.assert_close(grad_w, torch.ones(4, 6).T @ x)


def test_linear_takes_oneDNN_only_where_it_applies(onednn_products):
    x, w, b = torch.randn(3, 8), torch.randn(5, 8, requires_grad=True), torch.randn(5)
    assert type(linear(x, w, b).grad_fn).__name__ == "OneDNNLinearBackward"
    # float64, autocast, and too few rows take F.linear
    assert type(linear(x.double(), w.double(), b.double()).grad_fn).__name__ == "AddmmBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w, b).dtype == torch.bfloat16
    # x W^T has 3 x 8 x 5 multiply-adds: oneDNN from that many on, the BLAS below
    set_thresholds(dataclasses.replace(ONEDNN, cpu_linear_onednn_min_macs=3 * 8 * 5))
    assert type(linear(x, w, b).grad_fn).__name__ == "OneDNNLinearBackward"
    set_thresholds(dataclasses.replace(ONEDNN, cpu_linear_onednn_min_macs=3 * 8 * 5 + 1))
    assert type(linear(x, w, b).grad_fn).__name__ == "AddmmBackward0"
    assert type(linear(x.view(1, 3, 8), w, b).grad_fn).__name__ == "ViewBackward0"  # F.linear of 3-D input
    set_thresholds(dataclasses.replace(ONEDNN, cpu_linear_onednn_min_rows=4))
    assert type(linear(x, w, b).grad_fn).__name__ == "AddmmBackward0"
    with pytest.raises(RuntimeError, match="cannot be multiplied"):  # F.linear's message
        linear(torch.randn(9, 7), w, b)
    set_thresholds(BLAS)
    assert not uses_onednn("cpu")
    assert type(linear(torch.randn(9, 8), w, b).grad_fn).__name__ == "AddmmBackward0"


def test_matmul_t_matches_float64(onednn_products):
    a, b, p, q = torch.randn(9, 12), torch.randn(7, 12), torch.randn(12, 9), torch.randn(12, 7)
    for x, y in ((a, b), (a.T.contiguous().T, b), (p.T, q.T)):  # strided operands too
        torch.testing.assert_close(matmul_t(x, y).double(), x.double() @ y.double().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("thresholds", [ONEDNN, BLAS], ids=["oneDNN", "BLAS"])
@pytest.mark.parametrize("make", [lambda: FeedForward(16, 32), lambda: MultiHeadAttention(16, 4, batch_first=True)])
def test_layers_compute_the_same_on_either_path(thresholds, make):
    """FeedForward and MultiHeadAttention (their products through ``linear``) against a float64 copy."""
    torch.manual_seed(0)
    set_thresholds(thresholds)
    module = make()
    twin = copy.deepcopy(module).double()

    def run(m, x):
        out = m(x) if isinstance(m, FeedForward) else m(x, x, x)[0]
        return out, torch.autograd.grad(out.sum(), [x])[0]

    x = torch.randn(2, 5, 16, requires_grad=True)
    out, grad = run(module, x)
    out_ref, grad_ref = run(twin, x.detach().double().requires_grad_())
    torch.testing.assert_close(out.double(), out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-5, atol=1e-5)


def test_linear_cross_entropy_on_oneDNN_matches_float64(onednn_products):
    torch.manual_seed(0)
    hidden, weight = torch.randn(10, 12, requires_grad=True), torch.randn(30, 12, requires_grad=True)
    targets = torch.randint(0, 30, (10,))
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=4)
    h, w = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    expected = F.cross_entropy(F.linear(h, w), targets, reduction="sum")
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(loss, [hidden, weight]), torch.autograd.grad(expected, [h, w])):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "vendor, flags, cap, expected",
    [
        ("AuthenticAMD", "fpu avx2 avx512f avx512bw", "", 1),
        ("AuthenticAMD", "fpu avx2 avx512f", "AVX2", 0),  # oneDNN held to AVX2: nothing to gain
        ("AuthenticAMD", "fpu avx2 avx512f", "avx512_core_bf16", 1),
        ("AuthenticAMD", "fpu avx2", "", 0),
        ("GenuineIntel", "fpu avx2 avx512f", "", 0),  # MKL runs its AVX-512 code on Intel
        ("", "", "", 0),
    ],
)
def test_linear_onednn_rule(vendor, flags, cap, expected):
    cpuinfo = f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n"
    assert linear_onednn_rule(cpuinfo, cap) == expected


def test_onednn_gets_row_or_column_major_operands():
    """Other layouts (an expanded gradient from ``out.sum().backward()``) take oneDNN's slow reference kernel."""
    from attnlab.functional.kernels.onednn import _dense

    a = torch.randn(6, 4)
    assert _dense(a) is a and _dense(a.t()) is not None and _dense(a.t()).data_ptr() == a.data_ptr()
    expanded = torch.ones(()).expand(6, 4)
    assert _dense(expanded).is_contiguous() and _dense(a[:, ::2]).is_contiguous()
    assert _dense(expanded).stride() == (4, 1)


def test_a_measured_table_takes_onednn_only_where_it_won_every_shape():
    from benchmarks.attention_kernels import linear_onednn_min_rows

    assert linear_onednn_min_rows([{"ratio": 1.93}, {"ratio": 1.66}]) == 1
    assert linear_onednn_min_rows([{"ratio": 1.93}, {"ratio": 1.04}]) == 0  # as with oneDNN held to AVX2
