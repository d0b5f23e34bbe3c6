"""Cross-entropy of an output projection, computed in row chunks: the ``(N, V)`` logits never exist whole.

A translation batch of 4k target tokens over an 8k vocabulary has 33M logits: in fp32 each copy
(the logits, their softmax, their gradient) is 131 MB, freshly allocated and page-faulted every
step, and that memory traffic costs about as much as the model's own products on a CPU. Here the
loss and both gradients are computed chunk by chunk in the forward pass (the approach of Liger
Kernel's fused linear cross-entropy and of Wijmans et al., 2024, "Cut Your Losses"), so only
one chunk of logits lives at a time; the backward pass only scales the stored gradients.

The value is that of ``F.cross_entropy(F.linear(hidden, weight), targets, reduction="sum",
ignore_index=..., label_smoothing=eps)``: per row with target ``y``,
``(1 - eps) * (lse - z_y) + eps * (lse - mean(z))``, ``lse = logsumexp(z)``; its gradient with
respect to the logits is ``softmax(z) - (1 - eps) * onehot(y) - eps / V``, zero for ignored rows.

Shapes: N rows (tokens), d features, V classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnlab.functional.kernels.linear import matmul_t

__all__ = ["linear_cross_entropy"]

_CHUNK_BYTES = 16 * 2**20  # fp32 logits of one chunk: small enough for malloc to reuse


def _product_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype an ``nn.Linear`` would multiply in here: autocast's, else the input's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, ignore_index: int, smoothing: float, rows: int
    ) -> Tensor:
        dtype = _product_dtype(hidden)
        exact = torch.promote_types(dtype, torch.float32)  # softmax and sums: fp32, or fp64 for fp64
        w = weight.to(dtype)  # (V, d)
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_grad else None  # (N, d)
        grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device) if want_grad else None
        total = torch.zeros((), dtype=exact, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], rows):
                h = hidden[start : start + rows].to(dtype)  # (n, d)
                y = targets[start : start + rows]  # (n,)
                logits = matmul_t(h, w).to(exact)  # (n, V)
                loss, grad = _chunk(logits, y, ignore_index, smoothing, want_grad)
                total += loss
                if grad is not None:
                    grad = grad.to(dtype)
                    grad_hidden[start : start + rows] = matmul_t(grad, w.T)  # grad w
                    grad_weight += matmul_t(grad.T, h.T).to(exact)  # grad^T h
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if want_grad else None)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        dh = grad_hidden * grad_output.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        dw = grad_weight * grad_output.to(grad_weight.dtype) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None, None


def _chunk(
    logits: Tensor, targets: Tensor, ignore_index: int, smoothing: float, want_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Summed loss of one chunk of ``logits (n, V)`` and, if asked, its gradient ``(n, V)``."""
    keep = targets != ignore_index  # (n,)
    safe = torch.where(keep, targets, 0)[:, None]  # (n, 1)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
    nll = lse - logits.gather(1, safe)  # (n, 1)
    rows = (1 - smoothing) * nll
    if smoothing:
        rows = rows + smoothing * (lse - logits.mean(dim=-1, keepdim=True))
    loss = (rows.squeeze(1) * keep).sum()
    if not want_grad:
        return loss, None
    grad = logits.sub_(lse).exp_()  # softmax, in place of the logits (n, V)
    if smoothing:
        grad.sub_(smoothing / logits.shape[-1])
    grad.scatter_add_(1, safe, torch.full_like(nll, smoothing - 1))
    return loss, grad.mul_(keep[:, None])


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunk_rows: int | None = None,
) -> Tensor:
    """Summed cross-entropy of the logits ``hidden @ weight.T``, without ever holding them whole.

    Equal to ``F.cross_entropy(F.linear(hidden, weight), targets, reduction="sum",
    ignore_index=ignore_index, label_smoothing=label_smoothing)`` (Szegedy et al., 2016, Sec. 7
    for the smoothing), in value and in the gradients of ``hidden`` and ``weight``. Under autocast
    the products run in its dtype, as ``nn.Linear`` would; the softmax is fp32 (fp64 for fp64).

    Args:
        hidden: ``(N, d)`` features before the output projection.
        weight: ``(V, d)`` the projection's weight (no bias).
        targets: ``(N,)`` class ids, ``ignore_index`` where a row has no target.
        ignore_index: the id of rows left out of the loss.
        label_smoothing: eps in [0, 1).
        chunk_rows: rows per chunk; None takes as many as fit 16 MiB of fp32 logits.

    Returns:
        A scalar, fp32 (fp64 for fp64 inputs).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {list(hidden.shape)} and weight {list(weight.shape)} must be (N, d) and (V, d)")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {list(targets.shape)} must be ({hidden.shape[0]},), one per row of hidden")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing ({label_smoothing}) must be in [0, 1)")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows ({chunk_rows}) must be >= 1")
    rows = chunk_rows or max(1, _CHUNK_BYTES // (4 * weight.shape[0]))
    return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, float(label_smoothing), rows)
