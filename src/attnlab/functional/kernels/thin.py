"""Thin products for decoding steps: ``x W^T + b`` for a few fp32 rows, from a weight packed once.

A greedy step multiplies one row per sentence by every weight of the decoder, so its products
are bound by reading the weights from memory, and the general GEMM kernels (the BLAS's,
oneDNN's) spend that read poorly at 1 to 16 rows. The kernel here (``_thin.c``, AVX2 and FMA,
built by ``pip install``) packs the weight into panels of 8 output columns and keeps up to 8
rows' sums in registers, so each panel is read once, in order, per 8 rows. A weight packed in
bf16 is half the bytes to read; the kernel widens each weight to fp32 as it loads it, so the
products are exact products of the fp32 rows by the bf16 weights, summed in fp32.
``python -m benchmarks.thin_products`` times it beside oneDNN's packed products and ``F.linear``.

The extension is optional: ``available()`` is False where it was not built (no C compiler at
install time) or the CPU lacks AVX2 and FMA, and callers multiply another way.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.kernels.thresholds import current_thresholds

try:
    from attnlab.functional.kernels import _thin
except ImportError:  # built without a C compiler
    _thin = None

PANEL = 8  # output columns per panel: one AVX2 register of fp32


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


WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


def max_rows_bf16() -> int:
    """The most rows a product by bf16 panels takes this kernel for in bf16 decoding here:
    ``Thresholds.cpu_thin_max_rows_bfloat16`` where the kernel runs, else 0."""
    return current_thresholds().cpu_thin_max_rows_bfloat16 if available() else 0


def pack(weight: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``weight (out, in)`` (fp32 or bf16) as panels ``(ceil(out / 8), in, 8)`` of ``dtype`` (fp32,
    or bf16: the weight rounded to nearest even): ``P[j, k, c] = W[8 j + c, k]``, zero columns
    past ``out``."""
    if weight.ndim != 2 or weight.dtype not in WEIGHT_DTYPES or not weight.is_cpu:
        raise ValueError(
            f"expected a 2-D fp32 or bf16 CPU weight, got {tuple(weight.shape)} {weight.dtype} on {weight.device}"
        )
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"expected panels of torch.float32 or torch.bfloat16, got {dtype}")
    out_features, in_features = weight.shape
    padded = -(-out_features // PANEL) * PANEL
    weight = F.pad(weight.detach().to(dtype), (0, 0, 0, padded - out_features))
    return weight.reshape(padded // PANEL, PANEL, in_features).transpose(1, 2).contiguous()


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
    """``x W^T + b`` for fp32 ``x (..., in)`` from ``packed = pack(W)`` (fp32 or bf16 panels) on
    CPU, no autograd; the result is fp32.

    With ``residual`` (the result's shape) the result is ``x W^T + b + residual``, with ``relu``
    ``max(., 0)`` of it: the epilogues of a Transformer block's products, done as each output
    is stored. ``out`` (contiguous, the result's shape) receives the result; it may be
    ``residual`` itself, never ``x``.
    """
    panels, in_features, width = packed.shape
    if not available():
        raise RuntimeError("the thin-product kernel is not available here (not built, or no AVX2 and FMA)")
    if x.dtype != torch.float32 or not x.is_cpu or x.shape[-1] != in_features:
        raise ValueError(
            f"expected fp32 CPU input of {in_features} features, got {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    if (
        width != PANEL
        or panels != -(-out_features // PANEL)
        or packed.dtype not in WEIGHT_DTYPES
        or not packed.is_contiguous()
    ):
        raise ValueError(f"packed weight {tuple(packed.shape)} {packed.dtype} is not pack() of {out_features} outputs")
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
    out = x.new_empty(shape) if out is None else out
    return unsafe_linear(x, packed, out_features, bias, out, residual, relu) if x.numel() else out


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
    right shapes, fp32 but for ``packed`` (fp32 or bf16), the kernel ``available()``. A wrong
    operand corrupts memory."""
    in_features = packed.shape[1]
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
        packed.dtype == torch.bfloat16,
    )
    return out
