"""References in float64 that the functional tests share (fixtures: importlib mode cannot import conftest)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor


def sparsemax_reference(scores: Tensor) -> Tensor:
    """Sparsemax by Algorithm 1 of Martins & Astudillo (2016), in float64 and differentiable.

    Sort z descending, k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}, tau = (sum_{j<=k(z)} z_(j) - 1) / k(z),
    p = max(z - tau, 0). No shift by the maximum: exact in float64 for finite |z| well below 2^52.
    ``-inf`` entries get zero weight; a row must hold a finite score.
    """
    z = scores.double()
    z_sorted = z.sort(dim=-1, descending=True).values
    k = torch.arange(1, z.shape[-1] + 1, dtype=torch.float64)
    cumulative = z_sorted.cumsum(dim=-1)
    k_z = (1 + k * z_sorted > cumulative).sum(dim=-1, keepdim=True)
    tau = (cumulative.gather(-1, k_z - 1) - 1) / k_z
    return (z - tau).clamp(min=0)


@pytest.fixture(scope="session")
def sparsemax_ref():
    """:func:`sparsemax_reference`, for tests."""
    return sparsemax_reference
