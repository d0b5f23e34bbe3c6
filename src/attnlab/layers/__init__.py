"""Thin modules over ``attnlab.functional``: attention layers, scores with weights, positions, FFN."""

from attnlab.layers.feedforward import FeedForward, Linear
from attnlab.layers.kv_cache import KVCache
from attnlab.layers.multihead import MultiHeadAttention
from attnlab.layers.positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)
from attnlab.layers.scores import AdditiveScore, GeneralScore, TemperatureSoftmax, WeightedSoftmax

__all__ = [
    "AdditiveScore",
    "FeedForward",
    "GeneralScore",
    "KVCache",
    "LearnedPositionalEmbedding",
    "Linear",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "TemperatureSoftmax",
    "WeightedSoftmax",
    "sinusoidal_table",
]

# Attention for images (ViT patches, SE, spatial masks).
from attnlab.layers.channel_attention import SEBlock
from attnlab.layers.patch_embed import PatchEmbed, resample_position_embeddings
from attnlab.layers.spatial_attention import SpatialAttention

__all__ += ["PatchEmbed", "SEBlock", "SpatialAttention", "resample_position_embeddings"]
from attnlab.layers.transformer_blocks import DecoderLayer, EncoderLayer  # noqa: E402
