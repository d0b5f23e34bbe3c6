"""The hyper-parameters of ``attnlab.models.transformer.Transformer``, with the paper's presets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from attnlab.config import ConfigMixin
from attnlab.layers.scores import check_attention_choice

PRESETS: dict[str, dict[str, Any]] = {
    # Table 3 of the paper; "big" trains with P_drop 0.3 on EN-DE.
    "base": dict(d_model=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048),
    "big": dict(
        d_model=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=4096, dropout=0.3
    ),
    # Sizes that train on a laptop CPU in minutes (small) or seconds (tiny).
    "small": dict(d_model=256, num_heads=4, num_encoder_layers=3, num_decoder_layers=3, dim_feedforward=1024),
    "tiny": dict(d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=128),
}


POSITIONS = ("sinusoidal", "learned", "rotary")


@dataclass
class TransformerConfig(ConfigMixin):
    """Hyper-parameters of ``Transformer``; saved inside checkpoints via ``to_dict``.

    ``from_preset`` reads ``PRESETS`` (``base``, ``big``, ``small``, ``tiny``) with overrides (vocab sizes).

    Attributes:
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size.
        d_model: model size D.
        num_heads: attention heads h.
        num_encoder_layers: N of the encoder.
        num_decoder_layers: N of the decoder.
        dim_feedforward: d_ff.
        dropout: P_drop on embeddings + positions, sublayer outputs and inside the FFN.
        attn_dropout: dropout on attention weights.
        activation: the FFN's activation.
        norm_first: pre-norm layers plus a final LayerNorm after each stack.
        share_embeddings: one embedding for source and target (joint vocabulary).
        tie_output: the output projection is the target embedding matrix (Section 3.4).
        max_len: positions precomputed for the sinusoidal table.
        layer_norm_eps: LayerNorm epsilon.
        pad_id: padding token id.
        bos_id: beginning-of-sentence id, the first decoder input.
        eos_id: end-of-sentence id.
        score: f_sim of every attention layer: ``scaled_dot`` (the paper), ``dot``, ``cosine``,
            ``additive`` (Bahdanau) or ``general`` (Luong); only ``scaled_dot`` with ``softmax``
            runs on the fused kernels.
        normalize: f_norm: ``softmax`` (the paper), ``sparsemax``, ``temperature_softmax`` or
            ``weighted_softmax`` (with ``score: additive``).
        positions: ``sinusoidal`` (the paper), ``learned`` (a trained vector per position, as
            BERT) or ``rotary`` (queries and keys of self-attention rotated, Su et al., 2021).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation: str = "relu"
    norm_first: bool = False
    share_embeddings: bool = False
    tie_output: bool = True
    max_len: int = 1024
    layer_norm_eps: float = 1e-5
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    score: str = "scaled_dot"
    normalize: str = "softmax"
    positions: str = "sinusoidal"

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "dim_feedforward", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 0")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be in [0, 1)")
        if not 0 < self.layer_norm_eps < float("inf"):
            raise ValueError(f"layer_norm_eps ({self.layer_norm_eps}) must be > 0")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs one joint vocabulary, got src_vocab_size ({self.src_vocab_size}) "
                f"!= tgt_vocab_size ({self.tgt_vocab_size})"
            )
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {list(POSITIONS)}, got {self.positions!r}")
        self._check_attention()
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < min(self.src_vocab_size, self.tgt_vocab_size):
                raise ValueError(f"{name} ({getattr(self, name)}) must be a valid id of both vocabularies")

    def _check_attention(self) -> None:
        """Raise for an unknown score or normaliser, the message led by the field (``score: unknown score ...``)
        so that a run config names the key, ``model.score``."""
        for name, normalize in (("score", "softmax"), ("normalize", self.normalize)):
            try:
                check_attention_choice(self.score, normalize)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from error
