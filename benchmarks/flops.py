"""FLOPs of one call, counted by ``torch.utils.flop_counter.FlopCounterMode``, and MFU.

PyTorch's counter knows the CUDA attention kernels but not the CPU ones: SDPA's CPU flash kernel,
the fused ``nn.MultiheadAttention`` inference path, oneDNN's linear (packed or plain) and the dynamic int8
linear (attnlab's decoding engine, fp32 and int8) would count as zero, and a peer that takes
another kernel would look like less work. ``count_flops`` adds their formulas, the same ones
PyTorch uses for the CUDA kernels: a matmul of (m, k) by (k, n) is 2 m k n FLOPs; attention is
4 B H L S d forward (QKᵀ and A V). attnlab's compiled kernels (thin products, fused step
attention, causal and full blocks) are C calls that no torch mode sees: while counting, attnlab takes
PyTorch's kernels instead (the same products, so the same FLOPs). Causal attention counts the
(query, key) pairs under the mask only, as FlashAttention's benchmarks do (about half of full
attention for self-attention); PyTorch's own formula counts the whole square, which would put a
kernel that skips the masked half above 100% of the machine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from attnlab.functional.kernels import current_thresholds, set_thresholds

__all__ = ["count_flops", "mfu"]


def _causal_share(query, key, is_causal: bool) -> float:
    """The share of (query, key) pairs a call computes: all, or under SDPA's causal mask (query i
    sees keys 0..i) those at or below the diagonal, as FlashAttention counts causal FLOPs."""
    lq, lk = query[-2], key[-2]
    if not is_causal or not lq or not lk:
        return 1.0
    square = min(lq, lk)  # the triangle, then the rows that see every key
    return (square * (square + 1) // 2 + (lq - square) * lk) / (lq * lk)


def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """(query, key, value, dropout_p, is_causal, ...)"""
    is_causal = args[1] if len(args) > 1 else kwargs.get("is_causal", False)
    return round(flop_counter.sdpa_flop_count(query, key, value) * _causal_share(query, key, is_causal))


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """(grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, ...)"""
    is_causal = args[3] if len(args) > 3 else kwargs.get("is_causal", False)
    full = flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)
    return round(full * _causal_share(query, key, is_causal))


def _native_multi_head_attention(query, key, value, embed_dim, *args, out_shape=None, **kwargs) -> int:
    """``nn.MultiheadAttention``'s fused inference path: query (B, L, E), key and value (B, S, E)."""
    *batch, length, e = query
    source = key[-2]
    b = math.prod(batch)
    projections = 2 * b * (2 * length + 2 * source) * e * embed_dim  # W^Q, W^O on L rows; W^K, W^V on S
    return projections + 4 * b * length * source * embed_dim  # QKᵀ and A V over all heads


def _packed_linear(x, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's ``_linear_pointwise`` or ``quantized.linear_dynamic``: x (..., in) times a packed
    (out, in) weight (int8 multiply-adds count as FLOPs do)."""
    return 2 * math.prod(x) * out_shape[-1]


def _cpu_formulas() -> dict:
    aten, formulas = torch.ops.aten, {}
    known = {
        "_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu,
        "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_cpu_backward,
        "_native_multi_head_attention": _native_multi_head_attention,
    }
    for name, formula in known.items():
        if hasattr(aten, name):
            formulas[getattr(aten, name)] = formula
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        formulas[torch.ops.mkldnn._linear_pointwise] = _packed_linear
    if hasattr(torch.ops.quantized, "linear_dynamic"):
        formulas[torch.ops.quantized.linear_dynamic] = _packed_linear
    return formulas


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions and attention; elementwise work is free).

    Args:
        fn: a closure; it runs once, for real, under the counter.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_formulas())
    counted = dataclasses.replace(
        current_thresholds(),
        cpu_thin_max_rows=0,
        cpu_thin_max_rows_bfloat16=0,
        cpu_step_fused_max_keys=0,
        cpu_causal_min_queries=0,
        cpu_full_blocks_min_queries=0,
    )
    previous = set_thresholds(counted)
    try:
        with counter:
            fn()
    finally:
        set_thresholds(previous)
    return int(counter.get_total_flops())


def mfu(flops: float, seconds: float, peak_gflops: float) -> float:
    """Model FLOPs utilisation: the achieved rate ``flops / seconds`` over the peak (GFLOP/s).

    Raises:
        ValueError: a time or peak that is not positive.
    """
    if seconds <= 0 or peak_gflops <= 0:
        raise ValueError(f"mfu needs positive seconds ({seconds}) and peak GFLOP/s ({peak_gflops})")
    return flops / seconds / 1e9 / peak_gflops
