"""Models assembled from ``attnlab.layers``: the Vision Transformer and attention CNNs."""

from attnlab.models.cnn import AttentionCNN, AttentionCNNConfig
from attnlab.models.vit import VIT_CONFIGS, ViT, ViTConfig, vit_config

__all__ = ["VIT_CONFIGS", "AttentionCNN", "AttentionCNNConfig", "ViT", "ViTConfig", "vit_config"]
