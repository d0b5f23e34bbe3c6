"""Linear layers whose weights are packed once for thin products (CPU fp32 inference).

A decoding step multiplies a few rows (the batch, times the beam) by every weight matrix of
the decoder. For such thin products MKL's sgemm spends most of its time repacking the weight
into its blocked layout on every call. Packing each weight once (``cblas_sgemm_pack``, which
PyTorch exposes as ``torch.ops.mkl._mkl_reorder_linear_weight``; Inductor's CPU freezing uses
the same pair) and multiplying the packed copy on every step (``torch.ops.mkl._mkl_linear``)
is the same fp32 arithmetic in another summation order, 1.3-2.7x faster per product on this
project's CPU (8-40 rows, 256-2048 features, ``benchmarks/translation.py`` for the whole
search). A packed copy takes about 3x the weight's memory and serves one row count only;
other products fall back to ``F.linear``.

Packing is lazy: inside ``with PackedWeights(rows):`` every ``linear`` call with exactly
``rows`` rows packs its weight on first use and reuses the copy afterwards, until the weight
changes (its version counter moves, as with ``load_state_dict`` or an optimizer step).
"""

from __future__ import annotations

from contextvars import ContextVar, Token

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Below this many weight elements (128 x 128) packing gains too little to pay for its memory.
MIN_PACKED_ELEMENTS = 128 * 128

_ACTIVE: ContextVar[PackedWeights | None] = ContextVar("attnlab_packed_weights", default=None)


def packing_available() -> bool:
    """Whether this PyTorch build has MKL's packed sgemm (x86 builds with MKL do; others fall back)."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, from a packed copy of ``weight`` inside an active ``PackedWeights``
    when ``x`` has its row count (all dims but the last)."""
    packed = _ACTIVE.get()
    if packed is not None:
        weight_packed = packed.lookup(x, weight)
        if weight_packed is not None:
            return torch.ops.mkl._mkl_linear(x, weight_packed, weight, bias, packed.rows)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and initialisation) that uses packed weights
    inside an active ``PackedWeights``."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class PackedWeights:
    """Packed copies of fp32 CPU weights for products with exactly ``rows`` rows, made on first use.

    Use it as a context manager around the calls it should serve; it can be entered again later
    (e.g. once per decoding step) and keeps its copies in between.

    Args:
        rows: the row count the copies are packed for (MKL's packing depends on it).
    """

    def __init__(self, rows: int) -> None:
        if rows <= 0:
            raise ValueError(f"rows must be positive, got {rows}")
        self.rows = rows
        # (data_ptr, shape, stride) -> (the weight, its version when packed, the packed copy).
        # Views of one parameter (the query block of a fused in-projection) get their own entry.
        self._copies: dict[tuple, tuple[Tensor, int, Tensor]] = {}
        self._tokens: list[Token] = []

    def __len__(self) -> int:
        """Weights packed so far."""
        return len(self._copies)

    def lookup(self, x: Tensor, weight: Tensor) -> Tensor | None:
        """The packed copy of ``weight`` for a product with ``x``, packing it now if it is new or
        has changed; None when this product is not one to pack."""
        if (
            x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu"
            or weight.device.type != "cpu" or weight.ndim != 2 or weight.numel() < MIN_PACKED_ELEMENTS
            or x.numel() != self.rows * x.shape[-1]
            or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)  # no backward for the packed product
            or torch.is_autocast_enabled("cpu")  # autocast would run F.linear in bf16, not this fp32 product
        ):
            return None
        key = (weight.data_ptr(), tuple(weight.shape), weight.stride())
        entry = self._copies.get(key)  # holds the weight, so no other tensor can take its storage
        if entry is not None and entry[1] == weight._version:
            return entry[2]
        copy = torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), self.rows)
        self._copies[key] = (weight, weight._version, copy)
        return copy

    def __deepcopy__(self, memo: dict) -> PackedWeights:
        """An empty cache for the same rows: the copies are derived from weights the new owner has
        its own of (and MKL's packed tensors cannot be copied or pickled)."""
        return PackedWeights(self.rows)

    def __getstate__(self) -> dict:
        return {"rows": self.rows, "_copies": {}, "_tokens": []}

    def __enter__(self) -> PackedWeights:
        self._tokens.append(_ACTIVE.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._tokens.pop())
