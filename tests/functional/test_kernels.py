"""Every attention kernel against softmax(Q K^T / sqrt(d) + M) V written out in float64, and the dispatcher."""

import dataclasses
import json
import math

import pytest
import torch

from attnlab.functional.kernels import (
    KERNELS,
    Thresholds,
    blockwise,
    choose_kernel,
    current_thresholds,
    explicit,
    load_table,
    sdpa,
    set_thresholds,
    step,
    step_attention,
    table_path,
    write_table,
)
from attnlab.functional.kernels import thresholds as thresholds_module

B, H, LQ, LK, D, DV = 2, 3, 5, 7, 8, 9
DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
DTYPES = [torch.float32, torch.bfloat16, torch.float64]
MASK_KINDS = ["none", "padding", "full_bool", "bias", "causal", "causal_padding", "empty_row_bool", "empty_row_bias"]
WITH_BACKWARD = ["explicit", "sdpa", "blockwise"]


def _qkv(dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, LQ, D), (B, H, LK, D), (B, H, LK, DV))
    return [torch.randn(shape, generator=g).to(device, dtype) for shape in shapes]


def _mask(kind: str, device: str) -> tuple[torch.Tensor | None, bool]:
    """(mask, is_causal) of one kind: bool True = may attend, or a float bias."""
    g = torch.Generator().manual_seed(1)
    padding = torch.ones(B, 1, 1, LK, dtype=torch.bool)
    padding[1, ..., LK - 3 :] = False
    full = torch.rand(B, H, LQ, LK, generator=g) > 0.5
    full[..., 0] = True  # every query keeps a key
    empty_row = full.clone()
    empty_row[0, 1, 2] = False
    bias = torch.randn(B, H, LQ, LK, generator=g)
    masks = {
        "none": (None, False),
        "padding": (padding, False),
        "full_bool": (full, False),
        "bias": (bias, False),
        "causal": (None, True),
        "causal_padding": (padding, True),
        "empty_row_bool": (empty_row, False),
        "empty_row_bias": (bias.masked_fill(~empty_row, -math.inf), False),
    }
    mask, is_causal = masks[kind]
    return (None if mask is None else mask.to(device)), is_causal


def _reference(q, k, v, mask, is_causal, scale=None):
    """(C, A) in float64: A = softmax(Q K^T * scale + M) over the allowed keys, zero rows where none is."""
    q, k, v = (x.double() for x in (q, k, v))
    lq, lk = q.shape[-2], k.shape[-2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, Lq, Lk)
    i, j = torch.arange(lq, device=q.device)[:, None], torch.arange(lk, device=q.device)
    allowed = j <= i + (lk - lq) if is_causal else torch.ones(lq, lk, dtype=torch.bool, device=q.device)
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    elif mask is not None:
        scores = scores + mask.double()
    scores = scores.masked_fill(~allowed, -math.inf)
    keep = torch.isfinite(scores).any(-1, keepdim=True)  # rows with an allowed key
    weights = torch.softmax(scores.masked_fill(~keep, 0.0), -1) * keep
    return weights @ v, weights


def _tolerance(dtype: torch.dtype, factor: float) -> dict[str, float]:
    """Absolute and relative tolerance of ``factor`` units of rounding of ``dtype``."""
    eps = torch.finfo(dtype).eps
    return {"atol": factor * eps, "rtol": factor * eps}


@pytest.fixture
def small_blocks():
    """Blocks of two queries, so the blockwise kernel and the weights beside SDPA take three blocks."""
    previous = set_thresholds(Thresholds(weights_chunk_elements=B * H * LK * 2))
    yield
    set_thresholds(previous)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("weights", ["none", "per_head", "averaged"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_equals_the_float64_formula(name, weights, mask_kind, dtype, device):
    kernel = KERNELS[name]
    backward = name in WITH_BACKWARD
    q, k, v = (x.requires_grad_(backward) for x in _qkv(dtype, device))
    mask, is_causal = _mask(mask_kind, device)
    average = 1 if weights == "averaged" else None
    out, w = kernel(q, k, v, mask, is_causal=is_causal, need_weights=weights != "none", weights_average_dim=average)

    ref_q, ref_k, ref_v = (x.detach().double().requires_grad_(backward) for x in (q, k, v))
    ref_out, ref_w = _reference(ref_q, ref_k, ref_v, mask, is_causal)
    ref_w_returned = ref_w if average is None else ref_w.mean(average)
    assert out.dtype == dtype and out.device.type == device
    torch.testing.assert_close(out.double(), ref_out, **_tolerance(dtype, 4))
    if weights == "none":
        assert w is None
    else:
        torch.testing.assert_close(w.double(), ref_w_returned, **_tolerance(dtype, 4))
    if not backward:
        assert not out.requires_grad
        return
    g = torch.Generator().manual_seed(2)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
    loss = (out.double() * grad_out).sum() + (0.0 if w is None else (w.double() * ref_w_returned.detach()).sum())
    ref_loss = (ref_out * grad_out).sum() + (0.0 if w is None else (ref_w_returned * ref_w_returned.detach()).sum())
    grads = torch.autograd.grad(loss, (q, k, v))
    ref_grads = torch.autograd.grad(ref_loss, (ref_q, ref_k, ref_v))
    for got, expected, input_name in zip(grads, ref_grads, "qkv"):
        assert torch.isfinite(got).all(), input_name
        torch.testing.assert_close(got.double(), expected, **_tolerance(dtype, 8), msg=input_name)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernels_take_a_scale_and_broadcasting_batch_dims(name):
    q, k, v = _qkv()
    q = q[:1]  # (1, H, Lq, d) against (B, H, Lk, d)
    mask = torch.rand(LQ, LK, generator=torch.Generator().manual_seed(3)) > 0.3
    out, w = KERNELS[name](q, k, v, mask, scale=0.3, need_weights=True)
    ref_out, ref_w = _reference(q.expand(B, -1, -1, -1), k, v, mask, False, scale=0.3)
    torch.testing.assert_close(out.double(), ref_out, **_tolerance(torch.float32, 4))
    torch.testing.assert_close(w.double(), ref_w, **_tolerance(torch.float32, 4))


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("kernel", [explicit, blockwise], ids=["explicit", "blockwise"])
@pytest.mark.parametrize("mask_kind", ["causal_padding", "empty_row_bool", "empty_row_bias"])
def test_gradcheck_in_float64(kernel, mask_kind):
    q, k, v = (x.requires_grad_(True) for x in _qkv(torch.float64))
    mask, is_causal = _mask(mask_kind, "cpu")

    def fn(q, k, v):
        return kernel(q, k, v, mask, is_causal=is_causal, need_weights=True, weights_average_dim=1)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_step_kernel_runs_no_dropout():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"no dropout, got dropout_p=0.1"):
        step(q, k, v, dropout_p=0.1)


@pytest.mark.parametrize("queries", [1, 2, 8, 9])
@pytest.mark.parametrize("keys", [11, 129])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "bias"])
def test_step_attention_equals_the_formula_on_either_side_of_its_thresholds(queries, keys, mask_kind):
    g = torch.Generator().manual_seed(4)
    q = torch.randn(3, 2, queries, D, generator=g)
    k, v = torch.randn(3, 2, keys, D, generator=g), torch.randn(3, 2, keys, DV, generator=g)
    mask = None
    if mask_kind != "none":
        allowed = torch.rand(3, 1, queries, keys, generator=g) > 0.5
        allowed[0, 0, 0] = False  # a query with no key gets zeros
        mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, -math.inf)
    with torch.no_grad():
        out = step_attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask, False)[0], **_tolerance(torch.float32, 4))


# The dispatcher


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("weights", ["none", "per_head", "averaged"])
@pytest.mark.parametrize("lk", [LK, 600])
def test_default_choices_are_kernels_that_compute_the_formula(dtype, grad, weights, lk):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype).requires_grad_(grad) for n in (LQ, lk, lk))
    average = 1 if weights == "averaged" else None
    kernel = choose_kernel(q, k, v, need_weights=weights != "none", weights_average_dim=average)
    assert kernel in KERNELS.values()
    out, w = kernel(q, k, v, is_causal=True, need_weights=weights != "none", weights_average_dim=average)
    ref_out, ref_w = _reference(q, k, v, None, True)
    torch.testing.assert_close(out.double(), ref_out, **_tolerance(dtype, 4))
    if weights != "none":
        torch.testing.assert_close(w.double(), ref_w if average is None else ref_w.mean(1), **_tolerance(dtype, 4))


def test_per_head_weights_take_the_explicit_kernel_and_other_devices_sdpa():
    device = "cuda" if torch.cuda.is_available() else "meta"  # the choice reads the device, computes nothing
    q, k, v = (torch.empty(B, H, n, D, device=device) for n in (LQ, LK, LK))
    assert choose_kernel(q, k, v, need_weights=True) is explicit
    assert choose_kernel(q, k, v) is sdpa
    assert choose_kernel(q, k, v, need_weights=True, weights_average_dim=1) is sdpa


def test_bf16_calls_without_gradients_take_explicit_below_the_threshold():
    thresholds = Thresholds(cpu_forward_sdpa_min_keys_bfloat16=600)
    for keys, expected in ((LK, explicit), (600, sdpa)):
        q, k, v = (torch.randn(B, H, n, D, dtype=torch.bfloat16) for n in (LQ, keys, keys))
        assert choose_kernel(q, k, v, thresholds=thresholds) is expected
    q, k, v = (torch.randn(B, H, n, D) for n in (LQ, LK, LK))
    assert choose_kernel(q, k, v, thresholds=thresholds) is sdpa  # fp32: SDPA at any length


@pytest.mark.parametrize(
    "flags, cap, expected",
    [
        ("fpu avx2 avx512f avx512_bf16", "", True),
        ("fpu avx2 avx512f amx_bf16 amx_tile", "", True),
        ("fpu avx2 avx512f avx512_vnni", "", False),  # AVX-512 without its bf16 instructions
        ("fpu avx2", "", False),
        ("fpu avx2 avx512f avx512_bf16", "AVX2", False),  # oneDNN held below bf16 (make test-isa)
        ("fpu avx2 avx512f avx512_bf16", "avx512_core", False),
        ("fpu avx2 avx512f avx512_bf16", "AVX512_CORE_BF16", True),
        ("", "", False),
    ],
)
def test_native_bf16_rule(flags, cap, expected):
    assert thresholds_module.native_bf16_rule(f"processor\t: 0\nflags\t\t: {flags}\n", cap) is expected


@pytest.mark.parametrize("native", [True, False])
def test_bf16_calls_take_sdpa_on_cpus_without_native_bf16(native, monkeypatch):
    """Without bf16 instructions the explicit kernel's bf16 products ran 1.2-31x slower than SDPA."""
    monkeypatch.setattr(thresholds_module, "default_native_bf16", lambda: native)
    defaults = Thresholds()
    bf16_thresholds = (
        defaults.cpu_backward_sdpa_min_keys_bfloat16,
        defaults.cpu_forward_sdpa_min_keys_bfloat16,
        defaults.cpu_step_plain_max_keys_bfloat16,
    )
    assert bf16_thresholds == ((512, 768, 1024) if native else (0, 0, 0))
    short = explicit if native else sdpa
    q, k, v = (torch.randn(B, H, n, D, dtype=torch.bfloat16) for n in (LQ, LK, LK))
    assert choose_kernel(q, k, v, thresholds=defaults) is short
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    assert choose_kernel(q, k, v, thresholds=defaults) is short
    q, k, v = (torch.randn(B, H, n, D) for n in (LQ, LK, LK))
    assert choose_kernel(q, k, v, thresholds=defaults) is sdpa  # fp32 keeps SDPA either way


def test_a_table_is_read_once_and_decides(tmp_path, monkeypatch):
    path = tmp_path / "kernels.json"
    monkeypatch.setenv("ATTNLAB_KERNEL_TABLE", str(path))
    assert table_path() == path
    measured = Thresholds(cpu_backward_sdpa_min_keys_float32=10_000)
    write_table(measured)
    set_thresholds(None)  # read the table again at the next call
    q, k, v = (torch.randn(B, H, n, D, requires_grad=True) for n in (LQ, LK, LK))
    assert choose_kernel(q, k, v) is explicit  # 7 keys < 10,000: the table's choice
    assert choose_kernel(q, k, v, thresholds=Thresholds()) is sdpa  # handed the defaults
    write_table(Thresholds())
    assert current_thresholds() == measured  # read once: a later file changes nothing


def test_no_table_gives_the_defaults_without_a_warning(tmp_path, recwarn):
    assert load_table(tmp_path / "missing.json") == Thresholds()
    assert not recwarn.list


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda table: "{not json", r"ignored, using the defaults"),
        (lambda table: {**table, "format": "other/9"}, r"format 'other/9', expected 'attnlab.attention_kernels/1'"),
        (lambda table: {**table, "machine": {**table["machine"], "cpu": "elsewhere"}}, r"measured on .*elsewhere"),
        (lambda table: {**table, "thresholds": {"cpu_step_plain_max_keyz": 4}}, r"unknown thresholds \['cpu_step"),
        (lambda table: {**table, "thresholds": {"cpu_step_plain_max_keys": -1}}, r"cpu_step_plain_max_keys.*got -1"),
        (lambda table: [], r"format 'list'"),
    ],
)
def test_a_bad_or_foreign_table_warns_and_gives_the_defaults(tmp_path, edit, match):
    path = write_table(Thresholds(cpu_step_plain_max_keys=4), tmp_path / "kernels.json")
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    with pytest.warns(UserWarning, match=match):
        assert load_table(path) == Thresholds()


def test_thresholds_name_a_bad_value():
    with pytest.raises(ValueError, match=r"cpu_contiguous_min_keys must be an int >= 0, got 2.5"):
        Thresholds(cpu_contiguous_min_keys=2.5)
    with pytest.raises(ValueError, match=r"weights_chunk_elements must be >= 1, got 0"):
        Thresholds(weights_chunk_elements=0)
    assert dataclasses.replace(Thresholds(), cpu_step_plain_max_queries=1).cpu_step_plain_max_queries == 1


@pytest.mark.parametrize(
    "shapes", [((2, 3), (2, 3)), ((2, 1), (1, 3)), ((4,), (2, 1), (1, 1, 4)), ((), (5, 2)), ((0, 1), (1, 3))]
)
def test_broadcast_shapes_is_torchs(shapes):
    from attnlab.functional.kernels._common import broadcast_shapes

    sizes = [torch.Size(s) for s in shapes]
    assert broadcast_shapes(*sizes) == torch.broadcast_shapes(*sizes)


def test_broadcast_shapes_refuses_what_torch_refuses():
    from attnlab.functional.kernels._common import broadcast_shapes

    with pytest.raises(RuntimeError):
        torch.broadcast_shapes(torch.Size((2, 3)), torch.Size((4, 3)))
    with pytest.raises(RuntimeError, match="do not broadcast at dim -2"):
        broadcast_shapes(torch.Size((2, 3)), torch.Size((4, 3)))
