"""Weights packed once for the thin products of decoding steps (CPU).

A decoding step multiplies a few rows (the batch, times the beam) by every weight matrix of the
decoder, so a step costs about one read of the decoder's weights, and ``F.linear`` repacks each
weight inside the BLAS on every call. ``PackedWeights.linear`` multiplies by a copy packed once:

- **fp32**: the same fp32 arithmetic in another summation order, on the thin-product kernel
  (``attnlab.functional.kernels.thin``) for at most ``Thresholds.cpu_thin_max_rows`` rows where
  it runs, else on oneDNN's (``attnlab.functional.kernels.onednn``);
- **bf16**: under ``torch.autocast("cpu", dtype=torch.bfloat16)`` ``F.linear`` casts every fp32
  weight to bf16 on every call; a bf16 copy made once gives autocast's result (the same bf16
  operands, fp32 accumulation) from half the bytes. Only where the CPU has bf16 instructions.
- **on a GPU under autocast**: no packing, but a copy in autocast's dtype: searches run under
  ``torch.inference_mode``, where autocast keeps no cache of cast weights and casts every weight
  on every call (one more kernel per product); with the copy, ``F.linear`` gets autocast's own
  operands and gives its result.

Copies are made on first use and kept by the ``PackedWeights`` object, never by a module: its
owner (the decoding engine) decides how long they live. A copy is remade when its weight's
version counter moves (``load_state_dict``, ``copy_``), but not every in-place update moves it
(fused optimisers do not): after training steps, use a new ``PackedWeights``.
``python -m benchmarks.thin_products`` times the products.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.kernels import onednn, thin

# Below this many weight elements (128 x 128) packing gains too little to pay for its memory.
MIN_PACKED_ELEMENTS = 128 * 128


class PackedWeights:
    """Packed copies of CPU weights for thin products, made on first use: fp32 ones for fp32
    products, bf16 ones under bf16 autocast (or for bf16 weights).

    Args:
        rows: the row count the copies are packed for (oneDNN's layout hint: the rows of a
            decoding step); they serve any.
    """

    def __init__(self, rows: int) -> None:
        if rows <= 0:
            raise ValueError(f"rows must be positive, got {rows}")
        self.rows = rows
        # (data_ptr, shape, stride, dtype, kind) -> (the weight, its version when packed, the copy).
        # Views of one parameter (the query block of a fused in-projection) get their own entry.
        self._copies: dict[tuple, tuple[Tensor, int, Tensor]] = {}

    def __len__(self) -> int:
        """Weights packed so far (bf16 copies of biases not counted)."""
        return sum(not key[-1].startswith("bias_") for key in self._copies)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``F.linear(x, weight, bias)``, from a packed copy of ``weight`` when the product qualifies:

        - fp32: fp32 ``x`` and weight, autocast off;
        - bf16: CPU autocast to bf16 with an fp32 weight (the result is bf16, as from autocast),
          or a bf16 ``x`` and weight with autocast off.

        Never when autograd would need the product, for weights below ``MIN_PACKED_ELEMENTS``,
        or where neither the thin kernel nor oneDNN's packed linear serves: those take ``F.linear``.
        """
        out = self._packed_linear(x, weight, bias)
        return F.linear(x, weight, bias) if out is None else out

    def _packed_linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor | None:
        if (
            weight.ndim != 2
            or weight.numel() < MIN_PACKED_ELEMENTS
            or ((x.requires_grad or weight.requires_grad) and torch.is_grad_enabled())
        ):
            return None
        if not (x.is_cpu and weight.is_cpu):
            return self._autocast_linear(x, weight, bias)
        autocast = torch.is_autocast_enabled("cpu")
        if not autocast and self._thin_fits(x, weight, bias):
            return thin.linear(x, self._copy(weight, "thin", thin.pack), weight.shape[0], bias)
        if not onednn.available():
            return None
        if autocast:
            if (
                torch.get_autocast_dtype("cpu") != torch.bfloat16
                or weight.dtype != torch.float32
                or x.dtype not in (torch.float32, torch.bfloat16)
                or not onednn.bf16_available()
            ):
                return None
            return self._linear_bf16(x.to(torch.bfloat16), weight, bias)
        if x.dtype == weight.dtype == torch.bfloat16 and onednn.bf16_available():
            return self._linear_bf16(x, weight, bias)
        if x.dtype != torch.float32 or weight.dtype != torch.float32:
            return None
        return onednn.linear(x, self._copy(weight, "fp32", lambda w: onednn.pack(w, self.rows)), bias)

    @staticmethod
    def _thin_fits(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
        """Whether the product is fp32 with few enough rows for the thin kernel, and it runs here."""
        return (
            x.dtype == weight.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32)
            and x.numel() <= thin.max_rows() * x.shape[-1]
        )

    def _autocast_linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor | None:
        """On a GPU under autocast, the product from copies of ``weight`` and ``bias`` in autocast's
        dtype (its result; None outside autocast, or for weights that are not fp32)."""
        device = x.device.type
        if x.device != weight.device or weight.dtype != torch.float32 or not torch.is_autocast_enabled(device):
            return None
        dtype = torch.get_autocast_dtype(device)
        weight = self._copy(weight, f"cast_{dtype}", lambda w: w.to(dtype))
        return F.linear(x.to(dtype), weight, self._bias_in(bias, dtype))

    def _linear_bf16(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        copy = self._copy(weight, "bf16", lambda w: onednn.pack(w.to(torch.bfloat16), self.rows))
        return onednn.linear(x, copy, self._bias_in(bias, torch.bfloat16))

    def _bias_in(self, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """``bias`` in ``dtype``: as it is when None or already so, else a copy made once."""
        if bias is None or bias.dtype == dtype:
            return bias
        return self._copy(bias, f"bias_{dtype}", lambda b: b.to(dtype))

    def _copy(self, weight: Tensor, kind: str, pack: Callable[[Tensor], Tensor]) -> Tensor:
        """The ``kind`` copy of ``weight`` (or bias), made by ``pack`` unless one of its current version exists."""
        key = (weight.data_ptr(), weight.shape, weight.stride(), weight.dtype, kind)
        entry = self._copies.get(key)  # holds the weight, so no other tensor can take its storage
        if entry is not None and entry[1] == weight._version:
            return entry[2]
        copy = pack(weight.detach())
        self._copies[key] = (weight, weight._version, copy)
        return copy
