"""Pure attention maths: scores f_sim, normalisers f_norm, masks, ``attention`` and its kernels.

Nothing here holds state or knows a model exists. See ``attention.py`` for the shape notation,
``kernels`` for the interchangeable implementations of scaled-dot softmax attention.
"""

from attnlab.functional.attention import attention
from attnlab.functional.checks import nan_checks
from attnlab.functional.kernels import attention_weights
from attnlab.functional.masks import causal_mask, merge_masks, padding_mask
from attnlab.functional.normalize import (
    NORMALIZERS,
    resolve_normalizer,
    softmax,
    sparsemax,
)
from attnlab.functional.scores import (
    SCORES,
    cosine_score,
    dot_score,
    resolve_score,
    scaled_dot_score,
)

__all__ = [
    "NORMALIZERS",
    "SCORES",
    "attention",
    "attention_weights",
    "causal_mask",
    "cosine_score",
    "dot_score",
    "merge_masks",
    "nan_checks",
    "padding_mask",
    "resolve_normalizer",
    "resolve_score",
    "scaled_dot_score",
    "softmax",
    "sparsemax",
]
