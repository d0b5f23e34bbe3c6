"""Thin products for decoding steps: ``x W^T + b`` for a few fp32 rows, from a weight packed once.

A greedy step multiplies one row per sentence by every weight of the decoder, so its products
are bound by reading the weights from memory, and the general GEMM kernels (the BLAS's,
oneDNN's) spend that read poorly at 1 to 16 rows. The kernel here (``_thin.c``, AVX2 and FMA,
built by ``pip install``) packs the weight into panels of 8 output columns and keeps up to 8
rows' sums in registers, so each panel is read once, in order, per 8 rows (16 columns a panel
on a CPU with AVX-512). On a CPU with AVX-512 BF16 a weight packed in bf16 pairs
(``pack_pairs``) is multiplied by the rows rounded to bf16, two products a lane per instruction:
bf16 autocast's products, with the epilogues fused; on a CPU with AVX-512 VNNI an int8 weight
packed in quads (``pack_int8``) is multiplied by the rows quantised to uint8, as PyTorch's dynamic
int8 linear multiplies, four products a lane per instruction.
``python -m benchmarks.thin_products`` times it beside oneDNN's packed products and ``F.linear``.

The extension is optional: ``available()`` is False where it was not built (no C compiler at
install time) or the CPU lacks AVX2 and FMA, and callers multiply another way.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.kernels.thresholds import current_thresholds

try:
    from attnlab.functional.kernels import _thin
except ImportError:  # built without a C compiler
    _thin = None

PANEL = 8  # output columns per panel: one AVX2 register of fp32
WIDE_PANEL = 16  # output columns per wide or pair panel: one AVX-512 register of fp32 sums


def built() -> bool:
    """Whether the extension was compiled at install time."""
    return _thin is not None


@functools.cache
def available() -> bool:
    """Whether the kernel can run here: built, and the CPU has AVX2 and FMA."""
    return _thin is not None and bool(_thin.supported())


def max_rows() -> int:
    """The most rows a product takes this kernel for here: ``Thresholds.cpu_thin_max_rows`` where
    the kernel runs, else 0."""
    return current_thresholds().cpu_thin_max_rows if available() else 0


@functools.cache
def wide_available() -> bool:
    """Whether wide fp32 panels (``pack(w, wide=True)``) can be multiplied here: the kernel runs
    and the CPU has AVX-512."""
    return available() and bool(_thin.kind_supported(1))


@functools.cache
def pairs_available() -> bool:
    """Whether bf16 pair panels (``pack_pairs``) can be multiplied here: the kernel runs and the
    CPU has AVX-512 BF16."""
    return available() and bool(_thin.kind_supported(2))


@functools.cache
def int8_available() -> bool:
    """Whether int8 quad panels (``pack_int8``) can be multiplied here: the kernel runs and the
    CPU has AVX-512 VNNI."""
    return available() and bool(_thin.kind_supported(3))


def max_rows_bf16() -> int:
    """The most rows a product by bf16 pair panels takes this kernel for in bf16 decoding here:
    ``Thresholds.cpu_thin_max_rows_bfloat16`` where pair panels run, else 0."""
    return current_thresholds().cpu_thin_max_rows_bfloat16 if pairs_available() else 0


def pack(weight: Tensor, *, wide: bool | None = None) -> Tensor:
    """``weight (out, in)``, fp32, as panels ``(ceil(out / w), in, w)``: ``P[j, k, c] = W[w j + c, k]``,
    zero columns past ``out``; ``w`` is 8, or 16 with ``wide`` (multiplied where
    ``wide_available()``). ``wide=None`` takes wide panels where they run, which multiply faster there."""
    if weight.ndim != 2 or weight.dtype != torch.float32 or not weight.is_cpu:
        raise ValueError(f"expected a 2-D fp32 CPU weight, got {tuple(weight.shape)} {weight.dtype} on {weight.device}")
    width = WIDE_PANEL if (wide_available() if wide is None else wide) else PANEL
    return _panels(weight, width).squeeze(-1)


def pack_pairs(weight: Tensor) -> Tensor:
    """``weight (out, in)`` (fp32 or bf16, ``in`` even) rounded to bf16 (to nearest even) as pair
    panels ``(ceil(out / 16), in / 2, 16, 2)``: ``Q[j, i, c, h] = W[16 j + c, 2 i + h]``, zero
    columns past ``out``. Multiplied only where ``pairs_available()``."""
    dtype_ok = weight.dtype in (torch.float32, torch.bfloat16)
    if weight.ndim != 2 or not dtype_ok or not weight.is_cpu or weight.shape[1] % 2:
        raise ValueError(
            "expected a 2-D fp32 or bf16 CPU weight of an even number of inputs, got "
            f"{tuple(weight.shape)} {weight.dtype} on {weight.device}"
        )
    return _panels(weight.to(torch.bfloat16), WIDE_PANEL, 2)


class Int8Panels(NamedTuple):
    """An int8 weight ``W ≈ q · scales[:, None]`` packed by ``pack_int8``."""

    panels: Tensor  # (ceil(out / 16), ceil(in / 4), 16, 4) int8: panels[j, i, c, h] = q[16 j + c, 4 i + h]
    scales: Tensor  # (out,) fp32, each output column's scale
    sums: Tensor  # (out,) int32, each output column's sum of q
    in_features: int


def pack_int8(q: Tensor, scales: Tensor) -> Int8Panels:
    """A symmetric per-output-column int8 weight ``q (out, in)`` with its ``scales (out,)`` as quad
    panels, zero past ``out`` and ``in``. Multiplied only where ``int8_available()``."""
    if q.ndim != 2 or q.dtype != torch.int8 or scales.shape != q.shape[:1] or scales.dtype != torch.float32:
        raise ValueError(
            f"expected an int8 weight (out, in) and fp32 scales (out,), got {tuple(q.shape)} {q.dtype} and "
            f"{tuple(scales.shape)} {scales.dtype}"
        )
    sums = q.sum(dim=1, dtype=torch.int32)
    return Int8Panels(_panels(q, WIDE_PANEL, 4), scales.detach().contiguous(), sums, q.shape[1])


def _panels(weight: Tensor, width: int, group: int = 1) -> Tensor:
    """``weight (out, in)`` as panels ``(ceil(out / width), ceil(in / group), width, group)``:
    ``[j, i, c, h] = W[width j + c, group i + h]``, zero past ``out`` and ``in``."""
    out_features, in_features = weight.shape
    rows, cols = -(-out_features // width) * width, -(-in_features // group) * group
    weight = F.pad(weight.detach(), (0, cols - in_features, 0, rows - out_features))
    return weight.reshape(rows // width, width, cols // group, group).transpose(1, 2).contiguous()


def linear_int8(
    x: Tensor, packed: Int8Panels, bias: Tensor | None = None, *, residual: Tensor | None = None, relu: bool = False
) -> Tensor:
    """``x W^T + b`` for fp32 ``x (..., in)`` from ``packed = pack_int8(q, scales)``, no autograd:
    ``x`` quantised as PyTorch's dynamic int8 linear quantises its input (uint8, one scale and zero
    point for all of ``x``), the products summed exactly in int32, scaled back to fp32 (the
    result), plus ``residual`` (contiguous, the result's shape), ReLU'd with ``relu``."""
    if not int8_available():
        raise RuntimeError("int8 quad panels need the thin-product kernel and a CPU with AVX-512 VNNI")
    x, bias, out = _operands(x, packed.in_features, packed.scales.shape[0], bias, residual, None)
    return unsafe_linear_int8(x, packed, bias, out, residual, relu) if x.numel() else out


def unsafe_linear_int8(
    x: Tensor, packed: Int8Panels, bias: Tensor | None, out: Tensor, residual: Tensor | None = None, relu: bool = False
) -> Tensor:
    """``linear_int8`` without its checks, into ``out`` (which may be ``residual``), for an engine
    that made every operand itself: contiguous fp32 CPU tensors of the right shapes, the kernel
    ``int8_available()``. A wrong operand corrupts memory."""
    _thin.linear_int8(
        x.data_ptr(),
        packed.panels.data_ptr(),
        packed.scales.data_ptr(),
        packed.sums.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        x.numel() // packed.in_features,
        packed.in_features,
        packed.scales.shape[0],
        0 if residual is None else residual.data_ptr(),
        relu,
        torch.get_num_threads(),
    )
    return out


def _layout(packed: Tensor, out_features: int) -> tuple[int, int, int]:
    """``(kind, in_features, panels expected)`` of a packed weight: kind 0 fp32 panels, 1 wide
    fp32 panels, 2 bf16 pair panels (the C kernel's numbering)."""
    wide_panels = -(-out_features // WIDE_PANEL)
    if packed.ndim == 4:
        return 2, 2 * packed.shape[1], wide_panels
    if packed.shape[-1] == WIDE_PANEL:
        return 1, packed.shape[1], wide_panels
    return 0, packed.shape[1], -(-out_features // PANEL)


def _packed_as_made(packed: Tensor, out_features: int) -> bool:
    """Whether ``packed`` has the shape, dtype and layout ``pack`` or ``pack_pairs`` gives a
    weight of ``out_features`` outputs."""
    kind, _, panels = _layout(packed, out_features)
    if not packed.is_contiguous() or packed.shape[0] != panels:
        return False
    if kind == 2:
        return packed.dtype == torch.bfloat16 and packed.shape[2:] == (WIDE_PANEL, 2)
    return packed.ndim == 3 and packed.shape[2] in (PANEL, WIDE_PANEL) and packed.dtype == torch.float32


def linear(
    x: Tensor,
    packed: Tensor,
    out_features: int,
    bias: Tensor | None = None,
    *,
    residual: Tensor | None = None,
    relu: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """``x W^T + b`` for fp32 ``x (..., in)`` from ``packed = pack(W)`` (fp32 panels, or wide fp32
    ones) or ``pack_pairs(W)`` (bf16 pair panels: the rows are rounded to bf16) on CPU,
    no autograd; the result is fp32.

    With ``residual`` (the result's shape) the result is ``x W^T + b + residual``, with ``relu``
    ``max(., 0)`` of it: the epilogues of a Transformer block's products, done as each output
    is stored. ``out`` (contiguous, the result's shape) receives the result; it may be
    ``residual`` itself, never ``x``.
    """
    kind, in_features, _ = _layout(packed, out_features)
    if not available():
        raise RuntimeError("the thin-product kernel is not available here (not built, or no AVX2 and FMA)")
    if kind == 2 and not pairs_available():
        raise RuntimeError("bf16 pair panels need a CPU with AVX-512 BF16")
    if kind == 1 and not wide_available():
        raise RuntimeError("wide fp32 panels need a CPU with AVX-512")
    if not _packed_as_made(packed, out_features):
        raise ValueError(
            f"packed weight {tuple(packed.shape)} {packed.dtype} is not pack() or pack_pairs() "
            f"of {out_features} outputs"
        )
    x, bias, out = _operands(x, in_features, out_features, bias, residual, out)
    return unsafe_linear(x, packed, out_features, bias, out, residual, relu) if x.numel() else out


def _operands(
    x: Tensor, in_features: int, out_features: int, bias: Tensor | None, residual: Tensor | None, out: Tensor | None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """A public product's operands checked (fp32 CPU ``x (..., in)``; an fp32 ``bias (out,)``;
    contiguous fp32 CPU ``residual`` and ``out`` of the result's shape, ``out`` not ``x``): ``x``
    and ``bias`` contiguous, and ``out``, made when None."""
    if x.dtype != torch.float32 or not x.is_cpu or x.shape[-1] != in_features:
        raise ValueError(
            f"expected fp32 CPU input of {in_features} features, got {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if bias is not None and (bias.shape != (out_features,) or bias.dtype != torch.float32):
        raise ValueError(f"expected an fp32 bias of shape ({out_features},), got {tuple(bias.shape)} {bias.dtype}")
    shape = (*x.shape[:-1], out_features)
    for name, t in (("residual", residual), ("out", out)):
        if t is not None and (t.shape != shape or t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous()):
            raise ValueError(
                f"expected a contiguous fp32 CPU {name} of shape {shape}, got {tuple(t.shape)} {t.dtype} "
                f"on {t.device}{'' if t.is_contiguous() else ', strided'}"
            )
    x = x if x.is_contiguous() else x.contiguous()  # rows of in_features, one after another
    if out is not None and out.numel() and out.data_ptr() == x.data_ptr():
        raise ValueError("out may not be the input x: the kernel reads x while it writes out")
    bias = bias if bias is None or bias.is_contiguous() else bias.contiguous()
    return x, bias, x.new_empty(shape) if out is None else out


def unsafe_linear(
    x: Tensor,
    packed: Tensor,
    out_features: int,
    bias: Tensor | None,
    out: Tensor,
    residual: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """``linear(x, packed, out_features, bias, residual=residual, relu=relu, out=out)`` without
    its checks, for an engine that made every operand itself: contiguous CPU tensors of the
    right shapes, fp32 but for pair panels (bf16), the kernel ``available()`` (and
    ``wide_available()`` for wide panels, ``pairs_available()`` for pair panels). A wrong operand corrupts memory."""
    kind, in_features, _ = _layout(packed, out_features)
    _thin.linear(
        x.data_ptr(),
        packed.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        x.numel() // in_features,
        in_features,
        out_features,
        0 if residual is None else residual.data_ptr(),
        relu,
        torch.get_num_threads(),
        kind,
    )
    return out
