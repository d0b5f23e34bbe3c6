"""Linear layers' products on oneDNN where it outruns the BLAS (fp32, CPU, forward and backward).

PyTorch multiplies ``F.linear`` on CPU through its BLAS (MKL in the x86 wheels), and MKL takes
its AVX2 code on CPUs that are not Intel's, AVX-512 ones included; oneDNN compiles its kernels
at run time for the vector width the CPU has. Where that pays (``Thresholds.cpu_linear_onednn_min_rows``,
see ``thresholds.default_linear_onednn_min_rows``, on products of at least
``cpu_linear_onednn_min_macs`` multiply-adds), ``linear`` computes

    y = x W^T + b,   dx = dy W,   dW = dy^T x,   db = sum over rows of dy

with oneDNN (``OneDNNLinear``; dW on the BLAS, see its backward) for fp32 CPU tensors with
autocast off; every other call is ``F.linear``. The layers' products (``attnlab.layers.Linear``,
the attention projections) call it.

Shapes: ``x (..., in)``, ``weight (out, in)``, ``bias (out,)``, ``y (..., out)``; M rows of ``x``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from attnlab.functional.kernels import onednn
from attnlab.functional.kernels.thresholds import current_thresholds

__all__ = ["OneDNNLinear", "linear", "matmul_t", "uses_onednn"]


class OneDNNLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with its products y and dx computed by oneDNN, dW by the BLAS."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        rows = x.reshape(-1, x.shape[-1])  # (M, in)
        return onednn.matmul_t(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])  # (M, out)
        rows = x.reshape(-1, x.shape[-1])  # (M, in)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn.matmul_t(grad_rows, weight.t()).view(x.shape)  # dy W
        if ctx.needs_input_grad[1]:
            # dy^T x on the BLAS, which reads both transposed operands where they lie and writes
            # (out, in) as the parameter lies; oneDNN copies one operand into its layout and gives
            # one of the orientations transposed, for the optimiser's side to copy again.
            grad_weight = torch.mm(grad_rows.t(), rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: x W^T + b, ``x (..., in)``, ``weight (out, in)`` -> ``(..., out)``.

    fp32 CPU calls with autocast off, at least ``Thresholds.cpu_linear_onednn_min_rows`` rows and
    ``cpu_linear_onednn_min_macs`` multiply-adds run as ``OneDNNLinear`` where ``uses_onednn``; the
    others are ``F.linear``, and so are all calls traced by ``torch.compile``, whose own code
    generation picks the products.
    """
    if _onednn_fits(x, weight, bias):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def matmul_t(a: Tensor, b: Tensor) -> Tensor:
    """``a (M, K) @ b (N, K)^T`` for code that does its own autograd: on oneDNN where ``linear``
    would be, else ``a @ b.T``."""
    if _onednn_fits(a, b, None) and a.ndim == 2:
        return onednn.matmul_t(a, b)
    return a @ b.T


def _onednn_fits(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether ``x W^T + b`` runs on oneDNN: ``uses_onednn`` for ``x``'s device, fp32 operands of
    matching shapes that are ``_large_enough``, autocast off, not traced by ``torch.compile``."""
    return (
        weight.is_cpu
        and x.is_cpu
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and weight.ndim == 2
        and x.ndim >= 1
        and x.shape[-1] == weight.shape[1]
        and _large_enough(x.numel(), x.shape[-1], weight.shape[0])  # before the slower checks below
        and onednn.available()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # Inductor cannot lower the oneDNN op as called here
    )


def _large_enough(x_elements: int, in_features: int, out_features: int) -> bool:
    """At least ``Thresholds.cpu_linear_onednn_min_rows`` rows (0: never) and
    ``cpu_linear_onednn_min_macs`` multiply-adds."""
    thresholds = current_thresholds()
    return (
        x_elements >= thresholds.cpu_linear_onednn_min_rows * in_features > 0
        and x_elements * out_features >= thresholds.cpu_linear_onednn_min_macs
    )


def uses_onednn(device: torch.device | str) -> bool:
    """Whether fp32 linear products on ``device`` go to oneDNN (CPU, a build that has it, and
    ``Thresholds.cpu_linear_onednn_min_rows`` > 0)."""
    return (
        torch.device(device).type == "cpu"
        and current_thresholds().cpu_linear_onednn_min_rows > 0
        and onednn.available()
    )
