"""The position-wise feed-forward network."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from attnlab.functional.kernels.linear import linear
from attnlab.layers.dropout import Dropout

LinearFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]


class Linear(nn.Linear):
    """``nn.Linear`` (y = x W^T + b) whose product is ``attnlab.functional.kernels.linear.linear``:
    the same parameters, state dict and result, computed by oneDNN where that is faster."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class FeedForward(nn.Module):
    """FFN(x) = W_2 act(W_1 x + b_1) + b_2, applied at every position (Vaswani et al., 2017, Eq. 2).

    Args:
        embed_dim: d_model, the input and output size.
        hidden_dim: d_ff, 2048 for d_model 512 in the paper.
        dropout: dropout after the activation.
        activation: ``relu`` (the paper), ``gelu`` (BERT, ViT), ``silu`` or ``tanh``.
        bias: learn b_1 and b_2.
    """

    def __init__(
        self, embed_dim: int, hidden_dim: int, dropout: float = 0.0, activation: str = "relu", bias: bool = True
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.fc1 = Linear(embed_dim, hidden_dim, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.dropout = Dropout(dropout)
        self.fc2 = Linear(hidden_dim, embed_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., d_model) -> (..., d_model)``."""
        return self.fc2(self.dropout(self.act(self.fc1(x))))

    def step(self, x: Tensor, *, linear: LinearFn = linear) -> Tensor:
        """``forward`` at evaluation (no dropout) with the products done by ``linear``
        (``F.linear``'s signature; the decoding engine passes products of packed weights)."""
        return linear(self.act(linear(x, self.fc1.weight, self.fc1.bias)), self.fc2.weight, self.fc2.bias)
