"""Linear layers whose weights are packed once for thin products (CPU inference).

A decoding step multiplies a few rows (the batch, times the beam) by every weight matrix of
the decoder, so a step costs about one read of the decoder's weights. ``F.linear`` serves such
thin products poorly: the BLAS it calls repacks the weight into its blocked layout on every
call. A copy packed once into oneDNN's layout (``torch.ops.mkldnn._reorder_linear_weight``,
multiplied by ``torch.ops.mkldnn._linear_pointwise``; Inductor's CPU freezing uses the same
pair) is read as it lies on every step (``python -m benchmarks.thin_products`` times both):

- **fp32**: the same fp32 arithmetic in another summation order. Per product, with the weights
  streamed from memory as in a step (the base decoder's shapes, 2 threads, an AVX2 AMD EPYC),
  1.5-2.5x faster than ``F.linear`` with 8 rows and 1.1-2.1x with 40; on the AVX-512 machine of
  earlier measurements a decoding step took as long as with MKL's packed sgemm, which this
  module used before (and which is slower than ``F.linear`` on the EPYC).
- **bf16**: under ``torch.autocast("cpu", dtype=torch.bfloat16)`` ``F.linear`` casts every fp32
  weight to bf16 on every call, which reads the fp32 weight and writes and reads a bf16 one. A
  packed bf16 copy made once gives autocast's result (the same bf16 operands, fp32
  accumulation) from half the bytes of the fp32 weight. A model cast to bf16 gets the same
  packed copies. Only where the CPU has bf16 instructions (``bf16_packing_available``).

The copies take the weight's own memory (half of it in bf16) and serve any row count; the
row count they are packed for is a hint to oneDNN.

Packing is lazy: inside ``with PackedWeights(rows):`` every ``linear`` call that qualifies packs
its weight on first use and reuses the copy afterwards, until the weight changes (its version
counter moves, as with ``load_state_dict`` or an optimizer step). ``benchmarks/translation.py``
measures whole searches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar, Token

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Below this many weight elements (128 x 128) packing gains too little to pay for its memory.
MIN_PACKED_ELEMENTS = 128 * 128

_ACTIVE: ContextVar[PackedWeights | None] = ContextVar("attnlab_packed_weights", default=None)


@functools.cache
def packing_available() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear (x86 and Arm builds do; others fall back)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def bf16_packing_available() -> bool:
    """Whether this PyTorch build and CPU have oneDNN's packed bf16 linear."""
    return packing_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, from a packed copy of ``weight`` inside an active
    ``PackedWeights`` when the product qualifies (see ``PackedWeights.linear``)."""
    packed = _ACTIVE.get()
    if packed is not None:
        out = packed.linear(x, weight, bias)
        if out is not None:
            return out
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and initialisation) that uses packed weights
    inside an active ``PackedWeights``."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class PackedWeights:
    """Packed copies of CPU weights for thin products, made on first use: fp32 ones for fp32
    products, bf16 ones under bf16 autocast (or for bf16 weights).

    Use it as a context manager around the calls it should serve; it can be entered again later
    (e.g. once per decoding step) and keeps its copies in between.

    Args:
        rows: the row count the copies are packed for (oneDNN's layout hint: the products of a
            decoding step); they serve any.
    """

    def __init__(self, rows: int) -> None:
        if rows <= 0:
            raise ValueError(f"rows must be positive, got {rows}")
        self.rows = rows
        # (data_ptr, shape, stride, dtype, kind) -> (the weight, its version when packed, the copy).
        # Views of one parameter (the query block of a fused in-projection) get their own entry.
        self._copies: dict[tuple, tuple[Tensor, int, Tensor]] = {}
        self._tokens: list[Token] = []

    def __len__(self) -> int:
        """Weights packed so far (the bf16 copies of biases not counted)."""
        return sum(key[-1] != "bias_bf16" for key in self._copies)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor | None:
        """``F.linear(x, weight, bias)`` from a packed copy of ``weight`` (packed now if it is new
        or has changed), or None when the product is not one to pack:

        - fp32: fp32 ``x`` and weight, autocast off;
        - bf16: CPU autocast to bf16 with an fp32 weight (the result is bf16, as from autocast),
          or a bf16 ``x`` and weight with autocast off.

        Never when autograd would need the product (no backward through packed weights) or for
        weights below ``MIN_PACKED_ELEMENTS``.
        """
        if (
            weight.ndim != 2
            or weight.numel() < MIN_PACKED_ELEMENTS
            or not (x.is_cpu and weight.is_cpu)
            or ((x.requires_grad or weight.requires_grad) and torch.is_grad_enabled())
        ):
            return None
        if torch.is_autocast_enabled("cpu"):
            if (
                torch.get_autocast_dtype("cpu") != torch.bfloat16
                or weight.dtype != torch.float32
                or x.dtype not in (torch.float32, torch.bfloat16)
                or not bf16_packing_available()
            ):
                return None
            return self._linear_bf16(x.to(torch.bfloat16), weight, bias)
        if x.dtype == weight.dtype == torch.bfloat16 and bf16_packing_available():
            return self._linear_bf16(x, weight, bias)
        if x.dtype != torch.float32 or weight.dtype != torch.float32 or not packing_available():
            return None
        copy = self._copy(weight, "onednn", lambda w: torch.ops.mkldnn._reorder_linear_weight(w, self.rows))
        return torch.ops.mkldnn._linear_pointwise(x, copy, bias, "none", [], "")

    def _linear_bf16(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        copy = self._copy(
            weight, "onednn_bf16", lambda w: torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16), self.rows)
        )
        if bias is not None and bias.dtype != torch.bfloat16:
            bias = self._copy(bias, "bias_bf16", lambda b: b.to(torch.bfloat16))
        return torch.ops.mkldnn._linear_pointwise(x, copy, bias, "none", [], "")

    def _copy(self, weight: Tensor, kind: str, pack: Callable[[Tensor], Tensor]) -> Tensor:
        """The ``kind`` copy of ``weight`` (or bias), made by ``pack`` unless one of its current version exists."""
        key = (weight.data_ptr(), weight.shape, weight.stride(), weight.dtype, kind)
        entry = self._copies.get(key)  # holds the weight, so no other tensor can take its storage
        if entry is not None and entry[1] == weight._version:
            return entry[2]
        copy = pack(weight.detach())
        self._copies[key] = (weight, weight._version, copy)
        return copy

    def __deepcopy__(self, memo: dict) -> PackedWeights:
        """An empty cache for the same rows: the copies are derived from weights the new owner has
        its own of (and oneDNN's packed tensors cannot be copied or pickled)."""
        return PackedWeights(self.rows)

    def __getstate__(self) -> dict:
        return {"rows": self.rows, "_copies": {}, "_tokens": []}

    def __enter__(self) -> PackedWeights:
        self._tokens.append(_ACTIVE.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._tokens.pop())
