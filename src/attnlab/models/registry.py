"""The model registry: what a run config's ``model.type`` names.

One place maps each type to its config dataclass, its model class, the tasks it can do and
(through the config class) its named presets; run configs, the trainer and ``attnlab.load``
all read it from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attnlab.models.cnn import AttentionCNN, AttentionCNNConfig
from attnlab.models.rnn_seq2seq import RNNSeq2Seq, Seq2SeqConfig
from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.models.vit import ViT, ViTConfig

__all__ = ["MODEL_REGISTRY", "MODEL_TYPES", "ModelType"]


@dataclass(frozen=True)
class ModelType:
    """What a config's ``model.type`` names: its config dataclass, module and tasks."""

    config_class: type
    model_class: type
    tasks: tuple[str, ...]

    @property
    def presets(self) -> Mapping[str, Mapping[str, Any]]:
        """The config class's named presets (``ConfigMixin.presets``)."""
        return self.config_class.presets


MODEL_REGISTRY: dict[str, ModelType] = {
    "vit": ModelType(ViTConfig, ViT, ("classification",)),
    "cnn": ModelType(AttentionCNNConfig, AttentionCNN, ("classification",)),
    "transformer": ModelType(TransformerConfig, Transformer, ("translation",)),
    "rnn": ModelType(Seq2SeqConfig, RNNSeq2Seq, ("translation",)),
}
MODEL_TYPES = tuple(MODEL_REGISTRY)
