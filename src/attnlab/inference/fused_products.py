"""The products of ``FusedDecoder``'s steps: ``x W^T + b`` of a step's rows by one packed weight,
with the epilogues of a Transformer block (a residual sum written over the residual, a ReLU).

- ``ThinProduct``: the thin kernel's fp32 panels, or its bf16 pair panels (rows rounded to
  bf16), the epilogues in the kernel;
- ``Int8Product``: the products of PyTorch's dynamic int8 linear, as ``DecodingEngine(int8=True)``
  multiplies (the thin kernel's int8 quad panels for few rows where the CPU has AVX-512 VNNI);
- ``Bf16Product``: bf16 copies of the weight as bf16 autocast multiplies (pair panels for few
  rows, oneDNN's bf16 product above);
- ``MemoryProduct``: the source-target keys and values of the encoder's memory, once a search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.kernels import onednn, thin
from attnlab.inference import quantized


@dataclass
class ThinProduct:
    """``x W^T + b`` on the thin kernel: the packed weight, its outputs and its bias."""

    packed: Tensor
    out_features: int
    bias: Tensor | None

    @classmethod
    def of(cls, weight: Tensor, bias: Tensor | None, *, pairs: bool = False) -> ThinProduct:
        """Packed in fp32 panels, or with ``pairs`` in bf16 pair panels (the weight and the rows
        rounded to bf16)."""
        bias = None if bias is None else bias.detach().contiguous()
        return cls(thin.pack_pairs(weight) if pairs else thin.pack(weight), weight.shape[0], bias)

    def __call__(self, x: Tensor, *, residual: Tensor | None = None, relu: bool = False) -> Tensor:
        """The product of contiguous rows ``x (R, in)`` (plus ``residual``, then ReLU'd with
        ``relu``); a sum is written over ``residual``."""
        out = x.new_empty(x.shape[0], self.out_features) if residual is None else residual
        return thin.unsafe_linear(x, self.packed, self.out_features, self.bias, out, residual, relu)


@dataclass
class Int8Product:
    """``x W^T + b`` with an int8 copy of ``W``, the products of PyTorch's dynamic int8 linear (as
    ``attnlab.inference.quantized.QuantizedWeights`` multiplies): for at most
    ``Thresholds.cpu_thin_max_rows`` rows the thin kernel's int8 quad panels (AVX-512 VNNI), the
    epilogues in the kernel; elsewhere PyTorch's linear, packed at its first product, the epilogues
    in PyTorch."""

    weight: Tensor
    bias: Tensor | None
    quads: thin.Int8Panels | None
    packed: object = None  # PyTorch's packed int8 weight and bias

    @classmethod
    def of(cls, weight: Tensor, bias: Tensor | None) -> Int8Product:
        weight, bias = weight.detach(), None if bias is None else bias.detach().contiguous()
        quads = thin.pack_int8(*quantized.quantize_weight(weight.float())) if thin.int8_available() else None
        return cls(weight, bias, quads)

    def __call__(self, x: Tensor, *, residual: Tensor | None = None, relu: bool = False) -> Tensor:
        if self.quads is not None and x.numel() <= thin.max_rows() * x.shape[-1]:  # x (..., in)
            x = x.contiguous()
            out = x.new_empty(*x.shape[:-1], self.quads.scales.shape[0]) if residual is None else residual
            return thin.unsafe_linear_int8(x, self.quads, self.bias, out, residual, relu)
        if self.packed is None:
            self.packed = quantized.prepack(self.weight, self.bias)
        y = torch.ops.quantized.linear_dynamic(x, self.packed, quantized.reduce_range())
        return epilogue(y, residual, relu)


@dataclass
class Bf16Product:
    """``x W^T + b`` with bf16 copies of ``W``, the product of the rows rounded to bf16 (what bf16
    autocast computes): for at most ``Thresholds.cpu_thin_max_rows_bfloat16`` rows the thin
    kernel's bf16 pair panels, the epilogues in the kernel; above, oneDNN's bf16 product, the
    epilogues in PyTorch. Pair panels need AVX-512 BF16 and an even number of inputs. oneDNN's
    copy is packed at its first product, so a decoder whose searches all fit the panels holds
    one bf16 copy of each weight, not two."""

    weight: Tensor
    bias: Tensor | None
    pairs: ThinProduct | None
    packed: tuple[Tensor, Tensor | None] | None = None  # oneDNN's bf16 weight and bf16 bias

    @classmethod
    def of(cls, weight: Tensor, bias: Tensor | None) -> Bf16Product:
        weight, bias = weight.detach(), None if bias is None else bias.detach()
        pairs = (
            ThinProduct.of(weight, bias, pairs=True) if thin.pairs_available() and weight.shape[1] % 2 == 0 else None
        )
        return cls(weight, bias, pairs)

    def __call__(self, x: Tensor, *, residual: Tensor | None = None, relu: bool = False) -> Tensor:
        if self.pairs is not None and x.shape[0] <= thin.max_rows_bf16():
            return self.pairs(x, residual=residual, relu=relu)
        if self.packed is None:
            bias16 = None if self.bias is None else self.bias.to(torch.bfloat16)
            self.packed = onednn.pack(self.weight.to(torch.bfloat16), 1), bias16
        return epilogue(onednn.linear(x.to(torch.bfloat16), *self.packed), residual, relu)


def epilogue(y: Tensor, residual: Tensor | None, relu: bool) -> Tensor:
    """``y`` (as fp32) plus ``residual`` (the sum written over it), then ReLU'd with ``relu``."""
    y = y.float() if residual is None else residual.add_(y)
    return y.relu_() if relu else y


@dataclass
class MemoryProduct:
    """The source-target keys and values of the memory, ``F.linear`` (many rows, once a search)."""

    weight: Tensor
    bias: Tensor | None

    @classmethod
    def of(cls, weight: Tensor, bias: Tensor | None) -> MemoryProduct:
        return cls(weight.detach(), None if bias is None else bias.detach())

    def __call__(self, memory: Tensor) -> Tensor:
        return F.linear(memory, self.weight, self.bias)


Product = ThinProduct | Int8Product | Bf16Product
