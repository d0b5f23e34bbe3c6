"""int8 products for decoding steps (CPU): PyTorch's dynamic quantisation behind ``F.linear``'s signature.

``QuantizedWeights.linear(x, weight, bias)`` multiplies by an int8 copy of ``weight`` made once:

- the weight is quantised per output channel, symmetric, ``W ≈ s_o · q_o`` with
  ``s_o = max_i |W_oi| / 127`` and ``q_o`` in [-127, 127] (at most ``s_o / 2`` off per element);
- ``x`` is quantised on every call, per tensor, to uint8 from its own range (dynamic
  quantisation), the product is summed in int32 and scaled back to fp32, bias added.

This is what ``torch.ao.quantization.quantize_dynamic`` makes of an ``nn.Linear``
(``torch.ops.quantized.linear_dynamic`` over a weight packed by ``linear_prepack``), applied to
the products the decoding engine hands to the layers, so the layers and the model stay as they
are. A decoding step reads every weight once; int8 copies are a quarter of the fp32 bytes.

Activations are quantised to 8 bits on CPUs with VNNI instructions (``avx512_vnni``), where the
int8 dot products accumulate exactly in int32; elsewhere to 7 bits (PyTorch's ``reduce_range``),
as the pairwise 16-bit sums of AVX2's ``vpmaddubsw`` would otherwise saturate.

Shapes: ``x (..., in)``, ``weight (out, in)``, ``bias (out,)``, result ``(..., out)``.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from attnlab.functional.kernels.thresholds import cpu_flags
from attnlab.inference.packed import MIN_PACKED_ELEMENTS, PackedWeights

__all__ = ["QuantizedWeights", "available", "check_available", "dequantized", "prepack", "quantize_weight"]


@functools.cache
def available() -> bool:
    """Whether this PyTorch build has the dynamic int8 linear of a CPU quantisation engine (x86, Arm)."""
    engines = set(torch.backends.quantized.supported_engines)
    return bool(engines & {"x86", "fbgemm", "qnnpack"}) and hasattr(torch.ops.quantized, "linear_dynamic")


def check_available() -> None:
    """Raise ``RuntimeError`` naming the engines this build has when int8 products are unavailable."""
    if not available():
        raise RuntimeError(
            "int8 decoding needs PyTorch's CPU quantisation engine (x86, fbgemm or qnnpack) and "
            f"torch.ops.quantized.linear_dynamic; this build has {torch.backends.quantized.supported_engines}"
        )


def reduce_range() -> bool:
    """True (7-bit activations) unless the CPU has AVX-512 VNNI, where 8 bits cannot saturate."""
    return "avx512_vnni" not in cpu_flags()


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-channel int8 of ``weight (out, in)``: ``(q (out, in) int8, scales (out,))``
    with ``weight ≈ q * scales[:, None]``."""
    scales = (weight.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)  # (out,)
    q = torch.round(weight / scales[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def prepack(weight: Tensor, bias: Tensor | None) -> object:
    """``weight (out, in)`` and ``bias`` packed for ``torch.ops.quantized.linear_dynamic``."""
    q, scales = quantize_weight(weight.float())
    zero_points = torch.zeros_like(scales, dtype=torch.long)
    with warnings.catch_warnings():
        # PyTorch marks its quantised tensor types deprecated; they are still what its dynamic
        # int8 linear packs from (as quantize_dynamic does).
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(q, scales.double(), zero_points, 0)
    return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


class QuantizedWeights(PackedWeights):
    """int8 copies of CPU weights for the products of decoding steps, made on first use.

    Products that qualify (fp32 ``x`` and weight, autocast off, no autograd, at least
    ``MIN_PACKED_ELEMENTS`` weight elements) run in int8; the others are ``PackedWeights``'
    (fp32 packed, or ``F.linear``). Copies follow their weight's version counter as
    ``PackedWeights`` does; after training steps, use a new object.

    Args:
        rows: the row count of the steps (kept for the fp32 packed copies of small weights).

    Example:
        >>> weights = QuantizedWeights(rows=8)
        >>> y = weights.linear(x, layer.fc1.weight, layer.fc1.bias)  # ≈ F.linear(x, W, b)
    """

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``F.linear(x, weight, bias)`` from an int8 copy of ``weight`` where the product qualifies."""
        if not self._qualifies(x, weight, bias):
            return super().linear(x, weight, bias)
        # The copy holds the bias: its identity and version are part of the copy's name.
        kind = ("int8", None) if bias is None else ("int8", bias.data_ptr(), bias._version)
        packed = self._copy(weight, kind, lambda w: prepack(w, bias))
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range())

    @staticmethod
    def _qualifies(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
        return (
            weight.ndim == 2
            and weight.numel() >= MIN_PACKED_ELEMENTS
            and x.is_cpu
            and weight.is_cpu
            and x.dtype == weight.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32)
            and not torch.is_autocast_enabled("cpu")
            and not ((x.requires_grad or weight.requires_grad) and torch.is_grad_enabled())
            and available()
        )


def dequantized(weight: Tensor) -> Tensor:
    """``weight (out, in)`` after the int8 round trip of ``quantize_weight`` (for checking errors)."""
    q, scales = quantize_weight(weight)
    return q.float() * scales[:, None]
