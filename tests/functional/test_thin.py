"""The thin-product kernel (``attnlab.functional.kernels.thin``): its products against F.linear in
float64 for every row-block shape and a partial last panel, its int8 products against PyTorch's
dynamic int8 linear, its packing, its refusals, and the rule that turns it on."""

from __future__ import annotations

import math
import platform
import sys

import pytest
import torch
import torch.nn.functional as F

from attnlab.functional.kernels import Thresholds, set_thresholds, thin
from attnlab.functional.kernels.thresholds import thin_rule
from attnlab.inference import quantized
from attnlab.inference.packed import PackedWeights


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def _cpu_has_avx2_fma() -> bool:
    return {"avx2", "fma"} <= _cpu_flags()


X86_LINUX = sys.platform == "linux" and platform.machine() == "x86_64"


def _tolerance(inner: int) -> dict[str, float]:
    """fp32 sums of ``inner`` unit-scale products against float64: errors grow as sqrt(inner) eps."""
    eps = torch.finfo(torch.float32).eps
    return dict(rtol=8 * eps * inner**0.5, atol=8 * eps * inner**0.5)


@pytest.mark.skipif(not X86_LINUX, reason="the extension is built and tested on x86-64 Linux")
def test_the_extension_is_built_and_runs_here():
    """A silent build failure at install time would leave decoding on oneDNN: make it loud here."""
    assert thin.built(), "attnlab.functional.kernels._thin was not compiled by pip install (no C compiler?)"
    assert thin.available() == _cpu_has_avx2_fma()
    pair_flags = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}
    assert thin.pairs_available() == (_cpu_has_avx2_fma() and pair_flags <= _cpu_flags())
    quad_flags = {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    assert thin.int8_available() == (_cpu_has_avx2_fma() and quad_flags <= _cpu_flags())


needs_thin = pytest.mark.skipif(not thin.available(), reason="the thin kernel needs AVX2 and FMA")


needs_wide = pytest.mark.skipif(not thin.wide_available(), reason="wide fp32 panels need AVX-512")
# panels of 8 columns, or wide ones of 16 (AVX-512)
WIDTHS = [False, pytest.param(True, marks=needs_wide)]


@needs_thin
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 21, 40])
@pytest.mark.parametrize(("in_features", "out_features"), [(64, 96), (37, 13), (200, 8), (30, 33)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("wide", WIDTHS)
def test_products_match_f_linear_in_float64(rows, in_features, out_features, with_bias, wide):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, in_features, generator=g)
    weight = torch.randn(out_features, in_features, generator=g)
    bias = torch.randn(out_features, generator=g) if with_bias else None
    packed = thin.pack(weight, wide=wide)
    assert packed.shape[-1] == (16 if wide else 8)
    got = thin.linear(x, packed, out_features, bias)
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, **_tolerance(in_features))


needs_pairs = pytest.mark.skipif(not thin.pairs_available(), reason="bf16 pair panels need AVX-512 BF16")


@needs_pairs
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 40])
@pytest.mark.parametrize(("in_features", "out_features"), [(64, 96), (38, 13), (200, 16), (30, 33)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_pair_panels_multiply_the_rows_and_weights_rounded_to_bf16(rows, in_features, out_features, with_bias):
    """The products of bf16 autocast: rows and weights rounded to bf16 (to nearest even), each
    product exact in fp32, the sums fp32; the reference sums in float64."""
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, in_features, generator=g)
    weight = torch.randn(out_features, in_features, generator=g)
    bias = torch.randn(out_features, generator=g) if with_bias else None
    got = thin.linear(x, thin.pack_pairs(weight), out_features, bias)
    rounded = F.linear(x.bfloat16().double(), weight.bfloat16().double(), None if bias is None else bias.double())
    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), rounded, **_tolerance(in_features))
    if rows:  # the rows are rounded: fp32 rows by the rounded weights differ by far more than the tolerance
        unrounded = F.linear(x.double(), weight.bfloat16().double(), None if bias is None else bias.double())
        assert (got.double() - unrounded).abs().max() > 100 * _tolerance(in_features)["atol"]


def _epilogue_operands(rows: int) -> tuple[torch.Tensor, ...]:
    """x (rows, 48), a weight of 21 outputs (a partial panel), its bias and a residual (rows, 21)."""
    g = torch.Generator().manual_seed(rows)
    shapes = [(rows, 48), (21, 48), (21,), (rows, 21)]
    return tuple(torch.randn(*shape, generator=g) for shape in shapes)


@needs_pairs
@pytest.mark.parametrize("rows", [1, 8, 9, 20])
@pytest.mark.parametrize("relu", [False, True])
def test_pair_panels_fuse_the_residual_and_the_relu(rows, relu):
    x, weight, bias, residual = _epilogue_operands(rows)
    product = F.linear(x.bfloat16().double(), weight.bfloat16().double(), bias.double()) + residual.double()
    expected = product.relu() if relu else product
    out = residual.clone()
    got = thin.linear(x, thin.pack_pairs(weight), 21, bias, residual=out, relu=relu, out=out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got.double(), expected, **_tolerance(48))


needs_quads = pytest.mark.skipif(not thin.int8_available(), reason="int8 quad panels need AVX-512 VNNI")


def _int8_reference(x, weight, bias, residual=None, relu=False):
    """PyTorch's dynamic int8 linear of the same int8 weight (8-bit rows: a VNNI CPU), then the epilogues."""
    y = torch.ops.quantized.linear_dynamic(x, quantized.prepack(weight, bias), False)
    y = y if residual is None else y + residual
    return y.relu() if relu else y


@needs_quads
@pytest.mark.parametrize("rows", [0, 1, 5, 8, 9, 16, 17, 40])
@pytest.mark.parametrize(("in_features", "out_features"), [(64, 96), (30, 37), (256, 1024), (7, 16)])
@pytest.mark.parametrize("rows_kind", ["centred", "positive", "negative", "tiny", "zeros"])
def test_int8_quads_compute_pytorchs_dynamic_int8_linear(rows, in_features, out_features, rows_kind):
    """The same quantisation of the rows (scale, zero point, rounding) and exact int32 sums: equal
    to PyTorch's result but for the last bits of its fp32 scaling, over every range kind that
    takes another branch of the choice of scale and zero point."""
    g = torch.Generator().manual_seed(rows * in_features)
    x = torch.randn(rows, in_features, generator=g)
    x = {"centred": x, "positive": x.abs() + 1, "negative": -x.abs() - 1, "tiny": 1e-6 * x, "zeros": 0 * x}[rows_kind]
    weight, bias = torch.randn(out_features, in_features, generator=g), torch.randn(out_features, generator=g)
    got = thin.linear_int8(x, thin.pack_int8(*quantized.quantize_weight(weight)), bias)
    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    if rows:
        torch.testing.assert_close(got, _int8_reference(x, weight, bias), rtol=1e-6, atol=1e-5)


@needs_quads
def test_int8_quads_round_the_rows_where_pytorch_does():
    """Rows that land near a rounding tie once scaled: one row element quantised differently moves
    a product by a whole step, far outside the tolerance. Many random draws meet such ties."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 256, generator=g)
    packed = thin.pack_int8(*quantized.quantize_weight(weight))
    for _ in range(1000):
        x = torch.randn(9, 256, generator=g)
        torch.testing.assert_close(thin.linear_int8(x, packed), _int8_reference(x, weight, None), rtol=1e-6, atol=1e-5)


@needs_quads
@pytest.mark.parametrize("rows", [1, 8, 9, 20])
@pytest.mark.parametrize("relu", [False, True])
def test_int8_quads_fuse_the_residual_and_the_relu(rows, relu):
    x, weight, bias, residual = _epilogue_operands(rows)
    got = thin.linear_int8(x, thin.pack_int8(*quantized.quantize_weight(weight)), bias, residual=residual, relu=relu)
    torch.testing.assert_close(got, _int8_reference(x, weight, bias, residual, relu), rtol=1e-6, atol=1e-5)


def test_quad_panels_lay_out_quads_of_inputs_for_sixteen_outputs():
    q = torch.randint(-127, 128, (21, 6), dtype=torch.int8)
    scales = torch.rand(21) + 0.1
    packed = thin.pack_int8(q, scales)
    assert packed.panels.shape == (2, 2, 16, 4) and packed.panels.dtype == torch.int8
    for n in range(32):
        for k in range(8):
            expected = q[n, k] if n < 21 and k < 6 else 0
            assert packed.panels[n // 16, k // 4, n % 16, k % 4] == expected, (n, k)
    assert torch.equal(packed.sums, q.sum(1, dtype=torch.int32)) and torch.equal(packed.scales, scales)
    with pytest.raises(ValueError, match=r"fp32 scales \(out,\), got \(21, 6\) torch.float32"):
        thin.pack_int8(q.float(), scales)


@needs_quads
def test_int8_products_refuse_rows_of_another_width():
    packed = thin.pack_int8(*quantized.quantize_weight(torch.randn(16, 32)))
    with pytest.raises(ValueError, match=r"fp32 CPU input of 32 features, got \(2, 31\)"):
        thin.linear_int8(torch.randn(2, 31), packed)


def test_pair_panels_lay_out_pairs_of_inputs_for_sixteen_outputs():
    weight = torch.randn(21, 6)
    packed = thin.pack_pairs(weight)
    assert packed.shape == (2, 3, 16, 2) and packed.dtype == torch.bfloat16 and packed.is_contiguous()
    for n in range(32):
        for k in range(6):
            expected = weight[n, k].bfloat16() if n < 21 else torch.tensor(0.0, dtype=torch.bfloat16)
            assert torch.equal(packed[n // 16, k // 2, n % 16, k % 2], expected), (n, k)
    with pytest.raises(ValueError, match=r"even number of inputs, got \(16, 7\)"):
        thin.pack_pairs(torch.randn(16, 7))


@needs_thin
@pytest.mark.parametrize("rows", [1, 5, 8, 9, 20])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("wide", [False, pytest.param(True, marks=needs_wide)])
def test_residual_and_relu_epilogues_match_their_definition_in_float64(rows, relu, in_place, wide):
    """relu(x W^T + b + r) with a partial last panel, written over ``r`` or into a new tensor."""
    g = torch.Generator().manual_seed(rows)
    x, weight, bias = torch.randn(rows, 48, generator=g), torch.randn(21, 48, generator=g), torch.randn(21, generator=g)
    residual = torch.randn(rows, 21, generator=g)
    product = F.linear(x.double(), weight.double(), bias.double())
    expected = product + residual.double()
    expected = expected.clamp_min(0) if relu else expected
    out = residual if in_place else None
    packed = thin.pack(weight, wide=wide)
    got = thin.linear(x, packed, 21, bias, residual=residual, relu=relu, out=out)
    assert (got.data_ptr() == residual.data_ptr()) == in_place
    torch.testing.assert_close(got.double(), expected, **_tolerance(48))
    assert (got.min() >= 0) == relu  # a random sum of 21 columns has negatives unless ReLU'd
    got_unsafe = thin.unsafe_linear(x, packed, 21, bias, torch.empty(rows, 21), None, relu)
    torch.testing.assert_close(got_unsafe.double(), product.clamp_min(0) if relu else product, **_tolerance(48))


@needs_thin
@pytest.mark.parametrize("wide", [False, pytest.param(True, marks=needs_wide)])
def test_relu_keeps_a_nan_as_torch_relu_does(wide):
    x, weight = torch.ones(1, 8), torch.full((8, 8), -1.0)
    x[0, 3] = math.nan
    packed = thin.pack(weight, wide=wide)
    got = thin.linear(x, packed, 8, relu=True)
    assert torch.isnan(got).all() and torch.isnan(torch.relu(F.linear(x, weight))).all()
    assert torch.equal(thin.linear(torch.ones(1, 8), packed, 8, relu=True), torch.zeros(1, 8))


@needs_thin
def test_bad_epilogue_operands_are_refused_with_what_was_expected():
    x, packed = torch.randn(3, 16), thin.pack(torch.randn(8, 16))
    with pytest.raises(ValueError, match=r"contiguous fp32 CPU residual of shape \(3, 8\), got \(3, 9\)"):
        thin.linear(x, packed, 8, residual=torch.randn(3, 9))
    with pytest.raises(ValueError, match=r"out of shape \(3, 8\), got \(3, 8\) torch.float32 on cpu, strided"):
        thin.linear(x, packed, 8, out=torch.randn(3, 8).t().contiguous().t())
    square = torch.randn(3, 8)
    with pytest.raises(ValueError, match="out may not be the input x"):
        thin.linear(square, thin.pack(torch.randn(8, 8)), 8, out=square)


@needs_thin
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_any_thread_count_and_leading_dimensions_give_the_same_product(threads):
    g = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(2, 3, 256, generator=g), torch.randn(300, 256, generator=g), torch.randn(300)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = thin.linear(x, thin.pack(weight), 300, bias)
    finally:
        torch.set_num_threads(previous)
    assert got.shape == (2, 3, 300)
    torch.testing.assert_close(got, F.linear(x, weight, bias), **_tolerance(256))
    # a strided input is read through a contiguous copy: the same product
    strided = torch.randn(256, 6, generator=g).t().view(2, 3, 256)
    torch.testing.assert_close(
        thin.linear(strided, thin.pack(weight), 300, bias), F.linear(strided, weight, bias), **_tolerance(256)
    )


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("width", [8, 16])
def test_packing_lays_out_panels_of_eight_or_sixteen_output_columns(transposed, width):
    weight = torch.arange(21 * 5, dtype=torch.float32).view(21, 5)
    if transposed:  # the same values from a strided view
        weight = weight.t().contiguous().t()
    packed = thin.pack(weight, wide=width == 16)
    panels = -(-21 // width)
    assert packed.shape == (panels, 5, width) and packed.is_contiguous()
    for j in range(panels):
        for c in range(width):
            n = width * j + c
            expected = weight[n] if n < 21 else torch.zeros(5)
            assert torch.equal(packed[j, :, c], expected), (j, c)
    square = torch.randn(2 * width, width).t()  # width outputs: no padding, still strided
    assert torch.equal(thin.pack(square, wide=width == 16)[0].t(), square)
    assert thin.pack(weight).shape[-1] == (16 if thin.wide_available() else 8)  # the faster layout by default


@needs_thin
def test_bad_operands_are_refused_with_what_was_expected():
    weight = torch.randn(16, 8)
    packed = thin.pack(weight)
    with pytest.raises(ValueError, match=r"fp32 CPU input of 8 features, got \(2, 7\)"):
        thin.linear(torch.randn(2, 7), packed, 16)
    with pytest.raises(ValueError, match=r"fp32 CPU input of 8 features, got \(2, 8\) torch.float64"):
        thin.linear(torch.randn(2, 8, dtype=torch.float64), packed, 16)
    with pytest.raises(ValueError, match=r"is not pack\(\) or pack_pairs\(\) of 24 outputs"):
        thin.linear(torch.randn(2, 8), packed, 24)
    with pytest.raises(ValueError, match=r"fp32 bias of shape \(16,\), got \(15,\)"):
        thin.linear(torch.randn(2, 8), packed, 16, torch.randn(15))
    with pytest.raises(ValueError, match=r"2-D fp32 CPU weight, got \(16,\)"):
        thin.pack(torch.randn(16))
    with pytest.raises(ValueError, match=r"2-D fp32 CPU weight, got \(8, 8\) torch.bfloat16"):
        thin.pack(torch.randn(8, 8, dtype=torch.bfloat16))


@pytest.mark.parametrize(
    ("flags", "isa_cap", "expected"),
    [
        ("fpu sse2 avx avx2 fma", "", 128),  # against oneDNN's AVX2 kernels: ahead up to 128 rows
        ("fpu sse2 avx avx2 fma avx512f avx512bw", "", 40),  # against its AVX-512 ones, wide panels: up to 40
        ("fpu sse2 avx avx2 fma avx512f avx512bw", "avx2", 128),  # oneDNN held to AVX2
        ("fpu sse2 avx avx2 fma avx512f avx512bw", "AVX512_CORE_BF16", 40),
        ("fpu sse2 avx avx2", "", 0),  # no FMA
        ("fp asimd", "", 0),  # not x86
        ("", "", 0),
    ],
)
def test_rule_turns_the_kernel_on_only_where_it_was_measured_ahead(flags, isa_cap, expected):
    assert thin_rule(f"vendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n", isa_cap) == expected


@needs_thin
@pytest.mark.parametrize(("max_rows", "rows", "kernel"), [(16, 8, "thin"), (16, 17, "oneDNN"), (0, 1, "oneDNN")])
def test_packed_weights_take_the_thin_kernel_up_to_the_threshold(monkeypatch, max_rows, rows, kernel):
    calls = []
    original = thin.linear
    monkeypatch.setattr(thin, "linear", lambda *args: calls.append(args) or original(*args))
    set_thresholds(Thresholds(cpu_thin_max_rows=max_rows))
    g = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(rows, 256, generator=g), torch.randn(512, 256, generator=g), torch.randn(512)
    got = PackedWeights(rows).linear(x, weight, bias)
    assert ("thin" if calls else "oneDNN") == kernel
    torch.testing.assert_close(got, F.linear(x, weight, bias), **_tolerance(256))


def test_a_measured_table_takes_the_thin_kernel_up_to_where_it_stopped_winning():
    from benchmarks.attention_kernels import thin_max_rows

    def cells(ratios):
        return [{"rows": r, "ratio": q} for r, q in ratios]

    assert thin_max_rows(cells([(1, 1.5), (8, 1.6), (40, 1.2), (128, 1.1), (256, 0.97)])) == 128
    assert thin_max_rows(cells([(1, 1.5), (8, 0.9), (40, 1.2)])) == 1  # a loss at 8 rows stops it there
    assert thin_max_rows(cells([(1, 0.8), (8, 1.2)])) == 0
    assert thin_max_rows([]) == 0  # the kernel does not run here
