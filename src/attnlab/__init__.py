"""attnlab: attention = f_norm(f_sim(Q, K)) V, made real and fast.

The public core: ``attention`` (the function), ``MultiHeadAttention`` and the other layers.
"""

from attnlab.functional import attention, causal_mask, padding_mask
from attnlab.layers import (
    AdditiveScore,
    FeedForward,
    GeneralScore,
    KVCache,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TemperatureSoftmax,
    WeightedSoftmax,
)

__version__ = "0.1.0"

__all__ = [
    "AdditiveScore",
    "FeedForward",
    "GeneralScore",
    "KVCache",
    "LearnedPositionalEmbedding",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TemperatureSoftmax",
    "WeightedSoftmax",
    "attention",
    "causal_mask",
    "padding_mask",
]
