"""attnlab: attention = f_norm(f_sim(Q, K)) V, made real and fast.

The public core: ``attention`` (the function), ``MultiHeadAttention`` and the other layers;
``attnlab.load(run_dir)`` gives a trained run's ``Translator`` or ``Classifier``;
``with attnlab.capture(model) as maps:`` records the attention maps of any call of a model.
"""

from typing import Any

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
    "capture",
    "causal_mask",
    "load",
    "padding_mask",
]


def __getattr__(name: str) -> Any:
    # attnlab.load imports the training and data stack: only when first asked for, so that
    # ``import attnlab`` stays light and attnlab.inference may import attnlab's own modules.
    if name == "load":
        from attnlab.inference import load

        return load
    if name == "capture":
        from attnlab.viz.capture import capture

        return capture
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")
