"""Dropout whose mask is drawn by a fast generator on CPU.

On CPU, ``F.dropout`` draws its mask with ``bernoulli_``: one draw of torch's Mersenne Twister
per element, about 11 ns each on the EPYC of ``docs/results/translation.md``, so the 44 dropouts
of a base Transformer training step (batch 8 x 32 tokens) took ~125 ms of a ~1.15 s step. Here the
mask comes from NumPy's PCG64 instead: one 64-bit draw gives four 16-bit uniforms, and element i is
kept when its uniform is below ``round((1 - p) * 65536)``. That is about 1 ns per element; the kept
elements are scaled by the inverse of the keep probability actually used, so the output is unbiased
(``E[dropout(x)] = x``) exactly.

Three differences from ``F.dropout``:

- p is rounded to a multiple of 1/65536 (p = 0.1 keeps with probability 58982/65536 = 0.899994);
  a p below 1/131072 rounds to no dropout.
- the masks are another stream of random numbers. Each call seeds its PCG64 with one draw of
  torch's default CPU generator, so ``torch.manual_seed`` and a restored generator state (as in
  an exact resume) reproduce them.
- for the backward it keeps the mask in x's dtype, 0 or the scale (4 bytes an element in fp32,
  where ``F.dropout`` keeps 1): then the forward and the backward are one product each, which
  halved the time of a dropout's forward and backward on 8 x 32 x 2048 activations.

On other devices, and for tensors below ``MIN_ELEMENTS``, it is ``F.dropout``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 1 << 16  # each element's uniform has 16 bits
# Below this many elements the fixed cost of a call (~30 us) outweighs the faster draws.
MIN_ELEMENTS = 4096


def keep_mask(shape: torch.Size | tuple[int, ...], keep_levels: int) -> Tensor:
    """A bool mask of ``shape``, each element True with probability ``keep_levels / 65536``,
    independently; seeded from torch's default CPU generator."""
    n = math.prod(shape)
    seed = int(torch.empty((), dtype=torch.int64).random_())
    words = np.random.PCG64(seed).random_raw((n + 3) // 4)  # uint64, 4 uniforms of 16 bits each
    uniforms = torch.from_numpy(words.view(np.int16)[:n]).view(shape)  # [-32768, 32767]
    return uniforms < keep_levels - LEVELS // 2


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by the inverse of the
    keep probability, as ``F.dropout`` (not in place); see the module docstring for the CPU path."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or x.numel() < MIN_ELEMENTS or p == 1.0:
        return F.dropout(x, p, training)
    keep_levels = round((1.0 - p) * LEVELS)
    if keep_levels == LEVELS:
        return x
    if keep_levels == 0:
        return x * 0.0
    # The mask as 0 / scale in x's dtype: the forward and the backward are one product each.
    scaled_mask = keep_mask(x.shape, keep_levels).to(x.dtype).mul_(LEVELS / keep_levels)
    return x * scaled_mask


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments and repr, no state) through :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
