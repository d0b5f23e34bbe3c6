"""The hyper-parameters of the RNN encoder-decoders (:mod:`attnlab.models.rnn_seq2seq`):
:class:`Seq2SeqConfig`, its presets, and the cell and attention names it accepts.

Shapes: B batch, S source positions, L layers, H hidden size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from attnlab.config import ConfigMixin, UnknownKeyError
from attnlab.layers.rnn_attention import RNN_SCORES

__all__ = ["ATTENTIONS", "CELLS", "PRESETS", "Hidden", "Seq2SeqConfig"]

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ATTENTIONS = ("none", "bahdanau", "luong")
Hidden = Tensor | tuple[Tensor, Tensor]
"""An RNN state: ``(L, B, H)``, or ``(h, c)`` of that shape each for an LSTM."""

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=32, hidden_size=64, num_layers=1),
    "small": dict(embed_dim=128, hidden_size=256, num_layers=1),
    # Luong et al. (2015): 4 layers of 1000 units; Bahdanau et al.: 1 layer of 1000, 620-dim embeddings.
    "luong2015": dict(embed_dim=1000, hidden_size=1000, num_layers=4, bidirectional=False, attention="luong"),
    "bahdanau2015": dict(embed_dim=620, hidden_size=2000, num_layers=1, attention="bahdanau", attention_dim=1000),
}


def _transformer_only_keys() -> frozenset[str]:
    from attnlab.models.transformer import TransformerConfig

    return frozenset(f.name for f in dataclasses.fields(TransformerConfig))


@dataclass
class Seq2SeqConfig(ConfigMixin):
    """Hyper-parameters of ``RNNSeq2Seq``; saved inside checkpoints via ``to_dict``.

    ``from_preset`` reads ``PRESETS`` with overrides (vocab sizes at least).

    Attributes:
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size.
        cell: ``rnn`` (tanh), ``lstm`` or ``gru``, for encoder and decoder.
        attention: ``none`` (one fixed context), ``bahdanau`` or ``luong``.
        score: Luong's score, ``dot``, ``general`` (default) or ``concat``; Bahdanau's is always
            the additive ``concat`` score, and ``none`` has no score.
        input_feeding: Luong only: feed h~_{t-1} with the embedding (default True).
        bidirectional: bidirectional encoder (``hidden_size`` split over the directions).
        num_layers: L, layers of the encoder and of the decoder.
        embed_dim: E, the embedding size.
        hidden_size: H, the decoder state size and the encoder output size.
        attention_dim: hidden layer of the additive score; ``hidden_size`` when None.
        dropout: on embeddings, between RNN layers and on the read-out o_t.
        tie_embeddings: the output projection is the target embedding (needs E == H).
        pad_id: padding token id.
        bos_id: beginning-of-sentence id, the first decoder input.
        eos_id: end-of-sentence id.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    cell: str = "lstm"
    attention: str = "luong"
    score: str | None = None
    input_feeding: bool | None = None
    bidirectional: bool = True
    num_layers: int = 1
    embed_dim: int = 64
    hidden_size: int = 128
    attention_dim: int | None = None
    dropout: float = 0.1
    tie_embeddings: bool = False
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_sizes()
        if self.attention == "luong":
            self.score = "general" if self.score is None else self.score
            self.input_feeding = True if self.input_feeding is None else self.input_feeding
        for name in ("pad_id", "bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < min(self.src_vocab_size, self.tgt_vocab_size):
                raise ValueError(f"{name} ({getattr(self, name)}) must be a valid id of both vocabularies")

    def _check_choices(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell {self.cell!r} is not one of {list(CELLS)}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention {self.attention!r} is not one of {list(ATTENTIONS)}")
        if self.score is not None and self.score not in RNN_SCORES:
            raise ValueError(f"score {self.score!r} is not one of {list(RNN_SCORES)}")
        if self.attention == "none" and self.score is not None:
            raise ValueError(f"attention 'none' has no score, got score={self.score!r}")
        if self.attention == "bahdanau" and self.score not in (None, "concat"):
            raise ValueError(f"attention 'bahdanau' uses the additive (concat) score, got score={self.score!r}")
        if self.attention != "luong" and self.input_feeding:
            raise ValueError(f"input_feeding is Luong's; attention {self.attention!r} already feeds its context")

    def _check_sizes(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "num_layers", "embed_dim", "hidden_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.bidirectional and self.hidden_size % 2:
            raise ValueError(f"a bidirectional encoder splits hidden_size ({self.hidden_size}) in two: make it even")
        if self.tie_embeddings and self.embed_dim != self.hidden_size:
            raise ValueError(f"tie_embeddings needs embed_dim ({self.embed_dim}) == hidden_size ({self.hidden_size})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1)")
        if self.attention_dim is not None and self.attention_dim <= 0:
            raise ValueError(f"attention_dim ({self.attention_dim}) must be > 0")

    @property
    def d_model(self) -> int:
        """The model width H (what a noam schedule scales by)."""
        return self.hidden_size

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Seq2SeqConfig:
        """:meth:`ConfigMixin.from_dict`, and a Transformer key is named as one.

        Raises:
            UnknownKeyError: a Transformer key or another unknown key, naming it.
            ConfigTypeError: a value of the wrong type, naming the key and the value.
            ConfigError: the checks of ``__post_init__`` failed.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        foreign = sorted((set(values) - known) & _transformer_only_keys())
        if foreign:
            raise UnknownKeyError(
                f"{foreign} are Transformer keys, not Seq2SeqConfig fields; expected some of {sorted(known)}"
            )
        return super().from_dict(values)
