"""Channel attention: Squeeze-and-Excitation (Hu et al., 2018) and CBAM's channel gate (Woo et al., 2018).

Notation: B batch, C channels, H x W feature map, C/r the bottleneck.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

POOLS = ("avg", "avg_max")


class SEBlock(nn.Module):
    """Squeeze-and-Excitation: re-weight channels by a gate computed from global context.

    Squeeze (Hu et al., 2018, Eq. 2): z_c = 1/(HW) sum_ij u_c(i, j).
    Excitation (Eq. 3): s = sigmoid(W_2 ReLU(W_1 z)), W_1 in R^{C/r x C}, W_2 in R^{C x C/r}.
    Scale (Eq. 4): x~_c = s_c * u_c.
    With ``pool="avg_max"`` the gate is CBAM's channel attention (Woo et al., 2018, Eq. 2):
    s = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), the MLP shared.

    Args:
        channels: C.
        reduction: r; the bottleneck has ``max(1, C // r)`` units.
        pool: ``"avg"`` (SE) or ``"avg_max"`` (CBAM).
    """

    def __init__(self, channels: int, reduction: int = 16, pool: str = "avg") -> None:
        super().__init__()
        if channels <= 0 or reduction <= 0:
            raise ValueError(f"channels ({channels}) and reduction ({reduction}) must be positive")
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
        self.channels, self.pool = channels, pool
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)  # W_1
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)  # W_2

    def excitation(self, x: Tensor) -> Tensor:
        """The gate s, ``(B, C, H, W) -> (B, C)`` with values in (0, 1)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SEBlock expects features (B, {self.channels}, H, W), got shape {tuple(x.shape)}")
        logits = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3)))))  # (B, C)
        if self.pool == "avg_max":
            logits = logits + self.fc2(self.act(self.fc1(x.amax(dim=(2, 3)))))
        return torch.sigmoid(logits)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)`` (the gate: ``excitation``, or ``attnlab.capture``)."""
        return x * self.excitation(x)[:, :, None, None]  # gate (B, C, 1, 1) broadcast over H, W

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.fc1.out_features}, pool={self.pool}"
