"""oneDNN's linear: the only place attnlab calls private ``torch.ops``.

``torch.ops.mkldnn._linear_pointwise`` computes ``x W^T + b`` with oneDNN's kernels, which are
compiled at run time for the CPU's widest vector instructions. Two uses:

- a weight reordered once into oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``)
  and multiplied as it lies, where ``F.linear`` repacks the weight inside the BLAS on every call
  (Inductor's CPU freezing uses the same pair): the decoding engine's packed weights;
- a plain weight, multiplied as it is (``matmul_t``): ``attnlab.functional.kernels.linear``'s
  products on CPUs where oneDNN outruns the BLAS.

These ops are private and may be missing from a build or renamed in a release: every function
here says whether it can serve, and callers fall back to ``F.linear`` when it cannot.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.cache
def available() -> bool:
    """Whether this PyTorch build has oneDNN's packed fp32 linear (x86 and Arm CPU builds do)."""
    try:
        mkldnn = torch.ops.mkldnn
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(mkldnn, "_linear_pointwise")
            and hasattr(mkldnn, "_reorder_linear_weight")
        )
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def bf16_available() -> bool:
    """Whether this build and CPU also have oneDNN's packed bf16 linear (bf16 instructions)."""
    try:
        return available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pack(weight: Tensor, rows: int) -> Tensor:
    """``weight (out, in)`` reordered for products of about ``rows`` rows (a layout hint: the
    copy serves any row count); bf16 weights give a bf16 copy."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """``x W^T + b`` from a copy made by ``pack`` (``x`` in the copy's dtype)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def matmul_t(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``a (M, K) @ b (N, K)^T + bias``, 2-D operands of any strides, no autograd."""
    return torch.ops.mkldnn._linear_pointwise(_dense(a), _dense(b), bias, "none", [], "")


def _dense(x: Tensor) -> Tensor:
    """``x (M, K)`` row- or column-major as it is, else a contiguous copy: oneDNN's fast kernels
    take those two layouts, and other strides (an expanded gradient's zeros, say) fall to its
    reference kernel, some 40 times slower."""
    return x if x.is_contiguous() or x.t().is_contiguous() else x.contiguous()
