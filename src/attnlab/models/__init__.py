"""Models assembled from ``attnlab.layers``: the Transformer, the RNN seq2seq, the Vision Transformer,
attention CNNs and a BERT encoder, and the registry that maps a run config's ``model.type`` to them."""

from attnlab.models.bert import BertConfig, BertEncoder
from attnlab.models.cnn import AttentionCNN, AttentionCNNConfig
from attnlab.models.registry import MODEL_REGISTRY, MODEL_TYPES, ModelType
from attnlab.models.rnn_seq2seq import RNNSeq2Seq, Seq2SeqConfig
from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.models.vit import VIT_CONFIGS, ViT, ViTConfig, vit_config

__all__ = [
    "MODEL_REGISTRY",
    "MODEL_TYPES",
    "VIT_CONFIGS",
    "AttentionCNN",
    "AttentionCNNConfig",
    "BertConfig",
    "BertEncoder",
    "ModelType",
    "RNNSeq2Seq",
    "Seq2SeqConfig",
    "Transformer",
    "TransformerConfig",
    "ViT",
    "ViTConfig",
    "vit_config",
]
