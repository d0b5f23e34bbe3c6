"""Positional encodings: sinusoidal, learned, and rotary (RoPE)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(length: int, dim: int, base: float = 10000.0, offset: int = 0) -> Tensor:
    """The paper's table ``(length, dim)``: PE(p, 2i) = sin(p / base^(2i/d)), PE(p, 2i+1) = cos(...).

    Vaswani et al. (2017), Section 3.5. Computed in float64 and returned as float32.
    """
    position = torch.arange(offset, offset + length, dtype=torch.float64).unsqueeze(1)  # (L, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(base) / dim))  # (ceil(d/2),)
    angles = position * inv_freq  # (L, ceil(d/2))
    table = torch.empty(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sin/cos position signal of "Attention Is All You Need" (Section 3.5).

    Args:
        embed_dim: d_model.
        max_len: positions precomputed; longer inputs extend the table on the fly.
        base: the wavelength base, 10000 in the paper.
    """

    def __init__(self, embed_dim: int, max_len: int = 1024, base: float = 10000.0) -> None:
        super().__init__()
        self.embed_dim, self.base = embed_dim, base
        self.register_buffer("table", sinusoidal_table(max_len, embed_dim, base), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``x (B, L, d_model)`` plus the encodings of positions ``offset .. offset + L - 1``."""
        _check_last_dim(x, self.embed_dim, "SinusoidalPositionalEncoding")
        end = offset + x.shape[-2]
        if end > self.table.shape[0]:
            self.table = sinusoidal_table(max(end, 2 * self.table.shape[0]), self.embed_dim, self.base).to(
                self.table.device
            )
        return x + self.table[offset:end].to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a learned vector per position (as in BERT and ViT).

    Args:
        max_len: the number of positions that have a vector.
        embed_dim: d_model.
    """

    def __init__(self, max_len: int, embed_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, embed_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``x (B, L, d_model)`` plus the embeddings of positions ``offset .. offset + L - 1``."""
        _check_last_dim(x, self.weight.shape[1], "LearnedPositionalEmbedding")
        end = offset + x.shape[-2]
        if end > self.weight.shape[0]:
            raise ValueError(
                f"positions up to {end - 1} requested, but LearnedPositionalEmbedding has max_len "
                f"{self.weight.shape[0]}"
            )
        return x + self.weight[offset:end]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, RoPE (Su et al., 2021, Eq. 34).

    Rotates feature pairs of queries and keys by angles proportional to the position, so that
    q_m . k_n depends on m - n only. Pairs are (x_i, x_{i + d/2}) (the GPT-NeoX / Llama layout)
    rather than the paper's interleaved (x_2i, x_2i+1); the two differ by a fixed permutation.

    Args:
        dim: the rotated feature size (the head size), even.
        base: the frequency base, 10000 in the paper.
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"RotaryEmbedding needs an even dim, got {dim}")
        self.dim = dim
        inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotate ``x (..., L, dim)`` as positions ``offset .. offset + L - 1``."""
        _check_last_dim(x, self.dim, "RotaryEmbedding")
        position = torch.arange(offset, offset + x.shape[-2], device=x.device, dtype=torch.float64)
        angles = torch.outer(position, self.inv_freq.to(x.device))  # (L, dim/2)
        cos = torch.cos(angles).repeat(1, 2).to(x.dtype)  # (L, dim)
        sin = torch.sin(angles).repeat(1, 2).to(x.dtype)
        half = self.dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


def _check_last_dim(x: Tensor, expected: int, owner: str) -> None:
    if x.shape[-1] != expected:
        raise ValueError(f"{owner} expects inputs (..., L, {expected}), got shape {tuple(x.shape)}")
