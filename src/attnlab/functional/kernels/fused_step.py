"""A decoding step's attention in one compiled pass: softmax(Q K^T * scale + M) V for a few queries;
and its rows' layer norms.

A step's queries (one per row in greedy search, a sentence's k hypotheses in beam search) meet a
cache of tens to hundreds of keys. PyTorch computes that as six operators, each with a fixed cost
larger than its arithmetic at these sizes; the kernel here (``_step.c``, AVX2 and FMA, built by
``pip install``) computes each (batch, head) in one loop: the scores 8 keys at a time, the softmax
with a vector exp, and the weighted sum of the values. fp32 only; no autograd. ``unsafe_layer_norm``
normalises a step's few rows in about a microsecond, where ``F.layer_norm``'s fixed cost is some ten.

The extension is optional: ``available()`` is False where it was not built or the CPU lacks AVX2
and FMA, and ``attnlab.functional.kernels.step.step_attention`` takes its other kernels.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from attnlab.functional.kernels.thresholds import current_thresholds

try:
    from attnlab.functional.kernels import _step
except ImportError:  # built without a C compiler
    _step = None


def built() -> bool:
    """Whether the extension was compiled at install time."""
    return _step is not None


@functools.cache
def available() -> bool:
    """Whether the kernel can run here: built, and the CPU has AVX2 and FMA."""
    return _step is not None and bool(_step.supported())


def max_keys() -> int:
    """The most keys a step's attention takes this kernel for here: ``Thresholds.cpu_step_fused_max_keys``
    where the kernel runs, else 0."""
    return current_thresholds().cpu_step_fused_max_keys if available() else 0


def fits(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None) -> bool:
    """Whether ``attention`` takes these operands: 4-D fp32 CPU tensors, one head size for
    queries, keys and values, a multiple of 8, with unit stride; keys and values whose batch and
    head dimensions broadcast to the queries'; a 4-D mask of fp32 or bool that broadcasts to
    ``(B, H, n, P)``."""
    if not (
        query.dtype == key.dtype == value.dtype == torch.float32
        and query.device.type == "cpu"
        and query.ndim == key.ndim == value.ndim == 4
        and query.shape[-1] == key.shape[-1] == value.shape[-1]
        and query.shape[-1] % 8 == 0
        and key.shape[-2] == value.shape[-2] > 0
        and key.stride(-1) == 1
        and value.stride(-1) == 1
        and _broadcasts(key.shape[:2], query.shape[:2])
        and _broadcasts(value.shape[:2], query.shape[:2])
    ):
        return False
    target = (*query.shape[:3], key.shape[-2])
    return mask is None or (
        mask.dtype in (torch.float32, torch.bool) and mask.ndim == 4 and _broadcasts(mask.shape, target)
    )


def attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *, out: Tensor | None = None
) -> Tensor:
    """``softmax(Q K^T / sqrt(d) + M) V`` for ``query (B, H, n, d)`` against ``key (B, H, P, d)``
    and ``value (B, H, P, d)``; ``mask`` broadcast to ``(B, H, n, P)``: bool ``True`` = may
    attend, or an fp32 bias. A query with no allowed key gets zeros. Every operand may be a
    strided view with unit stride along ``d`` (a cache's first ``P`` positions, one head of a
    fused projection's output); ``out``, of the query's shape and fp32 with unit stride along
    ``d``, receives the result and may overlap no operand.

    Raises:
        RuntimeError: the kernel is not available here.
        ValueError: operands it cannot take (``fits``), named with their shapes and strides, or
            an ``out`` of another shape or dtype.
    """
    if not available():
        raise RuntimeError("the fused step kernel is not available here (not built, or no AVX2 and FMA)")
    out = try_attention(query, key, value, mask, out=out)
    if out is None:
        raise ValueError(
            "expected fp32 CPU operands (B, H, n, d), (B, H, P, d), (B, H, P, d) with d a multiple of 8 "
            "and unit strides along it, and a 4-D fp32 or bool mask broadcasting to (B, H, n, P); got "
            f"{_described(query)}, {_described(key)}, {_described(value)}, {_described(mask)}"
        )
    return out


def try_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *, out: Tensor | None = None
) -> Tensor | None:
    """``attention``'s result, or None where the kernel is not available or cannot take these
    operands (one check, for callers that have another kernel to fall back to)."""
    if not (available() and fits(query, key, value, mask)):
        return None
    batch, heads, n, dim = query.shape
    keys = key.shape[-2]
    key, value = key.expand(batch, heads, keys, dim), value.expand(batch, heads, keys, dim)
    if query.stride(-1) != 1:
        query = query.contiguous()
    if out is None:
        out = torch.empty_like(query, memory_format=torch.contiguous_format)
    elif out.shape != query.shape or out.dtype != torch.float32 or not out.is_cpu or out.stride(-1) != 1:
        raise ValueError(
            f"expected an fp32 CPU out of shape {tuple(query.shape)} with unit stride along d, got {_described(out)}"
        )
    if mask is not None:
        mask = mask.expand(batch, heads, n, keys)
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
    return unsafe_attention(query, key, value, mask, out)


def unsafe_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, out: Tensor, lines: Tensor | None = None
) -> Tensor:
    """``attention(query, key, value, mask, out=out)`` without its checks or broadcasting, for an
    engine that made every operand itself: fp32 CPU views of the full ``(B, H, n, d)``,
    ``(B, H, P, d)`` and ``(B, H, n, P)`` shapes (a bool or fp32 mask) with unit stride along the
    last dimension, ``d`` a multiple of 8, the kernel ``available()``. A wrong operand corrupts memory.

    ``lines``, int64 ``(B, P)`` with unit stride along P: key and value ``j`` of batch row ``b``
    are read from batch row ``lines[b, j]`` (beam hypotheses reading their ancestors' keys where
    they were written, instead of copying them to each child)."""
    batch, heads, n, dim = query.shape
    _step.attention(
        query.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        0 if mask is None else mask.data_ptr(),
        0 if mask is None else (2 if mask.dtype == torch.bool else 1),
        out.data_ptr(),
        batch,
        heads,
        n,
        key.shape[-2],
        dim,
        *query.stride()[:3],
        *out.stride()[:3],
        *key.stride()[:3],
        *value.stride()[:3],
        *((0, 0, 0) if mask is None else mask.stride()[:3]),
        0 if lines is None else lines.data_ptr(),
        0 if lines is None else lines.stride(0),
        1.0 / math.sqrt(dim),
        torch.get_num_threads(),
    )
    return out


def unsafe_layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, out: Tensor) -> Tensor:
    """``F.layer_norm`` of the rows of ``x (R, D)`` over their ``D`` features into ``out`` (which
    may be ``x``), for an engine that made every operand itself: contiguous fp32 CPU ``x`` and
    ``out`` of one shape, ``weight`` and ``bias`` ``(D,)`` or None, the kernel ``available()``.
    A wrong operand corrupts memory."""
    rows, dim = x.shape
    _step.layer_norm(
        x.data_ptr(),
        0 if weight is None else weight.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        out.data_ptr(),
        rows,
        dim,
        eps,
    )
    return out


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``shape`` expands to ``target`` (each size equal, or 1)."""
    return all(size in (goal, 1) for size, goal in zip(shape, target, strict=True))


def _described(x: Tensor | None) -> str:
    return "None" if x is None else f"{tuple(x.shape)} {x.dtype} strides {x.stride()}"
