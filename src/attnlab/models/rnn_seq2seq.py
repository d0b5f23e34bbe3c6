"""RNN encoder-decoders with and without attention: the models before the Transformer.

An encoder (tanh RNN, LSTM or GRU; one or more layers; uni- or bidirectional) reads the source
into states h_1..h_S, packed so that padding never reaches a state. One of three decoders writes
the target, all ending in the same read-out o_t = tanh(W_c [c_t; s_t]) and p(y_t) = softmax(W_out o_t):

- ``none``: one fixed context vector c, the encoder's final state, fed with the embedding at
  every step (Cho et al., 2014; Sutskever et al., 2014). A long source must fit in c.
- ``bahdanau``: c_t attends from the previous state s_{t-1} with the additive score and is fed
  into the RNN with the embedding (Bahdanau et al., 2015, Eq. 5-6).
- ``luong``: the RNN runs first; c_t attends from its new state h_t with the ``dot``, ``general``
  or ``concat`` score (Luong et al., 2015, Eq. 7-8) and h~_t = tanh(W_c [c_t; h_t]) (Eq. 5) is
  the read-out, optionally fed to the next step (input feeding, Section 3.3).

(Bahdanau's deep maxout output is replaced by the common read-out above, so the three decoders
differ only in where their context comes from.)

Bidirectional encoders split ``hidden_size`` over the two directions, so h_j has ``hidden_size``
features in every case (the ``dot`` score needs it); the final forward and backward states of
each layer are concatenated and passed through a linear layer (tanh for h, none for an LSTM's
cell c) to initialise the decoder layer of the same depth.

The model speaks ``attnlab.decoding.search``'s protocol, so ``greedy_search`` and ``beam_search``
drive it as they drive the Transformer; ``attnlab.capture`` reads the source attention of the
teacher-forced decoder (``attention_sites``).

Shapes: B batch (times the beam in search), S source positions, T target positions,
E embedding size, H hidden size, L layers, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.layers.dropout import Dropout
from attnlab.models.rnn_config import ATTENTIONS, CELLS, PRESETS, Hidden, Seq2SeqConfig
from attnlab.models.rnn_decoders import (
    ATTENTION_VARIANTS,
    DECODERS,
    BahdanauDecoder,
    DecoderState,
    LuongDecoder,
    PlainDecoder,
)
from attnlab.models.rnn_encoder import EncoderOutput, RNNEncoder

__all__ = [
    "ATTENTIONS",
    "ATTENTION_VARIANTS",
    "CELLS",
    "DECODERS",
    "PRESETS",
    "BahdanauDecoder",
    "DecoderState",
    "EncoderOutput",
    "Hidden",
    "LuongDecoder",
    "PlainDecoder",
    "RNNEncoder",
    "RNNSeq2Seq",
    "Seq2SeqConfig",
    "Seq2SeqSearchState",
]


@dataclass
class Seq2SeqSearchState:
    """What ``RNNSeq2Seq.step`` carries between decoding steps.

    Attributes:
        source: the encoder output (rows repeated for the beam).
        decoder: the decoder state after the tokens fed so far.
        start: the decoder state before any token (kept only without a cache).
        prefix: the target tokens fed so far ``(B, T')`` (kept only without a cache).
    """

    source: EncoderOutput
    decoder: DecoderState
    start: DecoderState | None = None
    prefix: Tensor | None = None


class RNNSeq2Seq(nn.Module):
    """RNN encoder-decoder, p(y_t | y_<t, x) = softmax(W_out o_t), with or without attention.

    Args:
        config: the hyper-parameters (``Seq2SeqConfig``).
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.embed_dim, padding_idx=c.pad_id)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.embed_dim, padding_idx=c.pad_id)
        self.encoder = RNNEncoder(c, self.src_embed)
        self.decoder = DECODERS[c.attention](c)
        self.dropout = Dropout(c.dropout)
        self.output = nn.Linear(c.hidden_size, c.tgt_vocab_size, bias=not c.tie_embeddings)
        if c.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    # --- the protocol of attnlab.decoding.search -------------------------------------------
    @property
    def pad_id(self) -> int:
        return self.config.pad_id

    @property
    def bos_id(self) -> int:
        return self.config.bos_id

    @property
    def eos_id(self) -> int:
        return self.config.eos_id

    def padding_mask(self, tokens: Tensor) -> Tensor | None:
        """``(B, L)``, ``True`` where ``tokens == pad_id``; None when there is no padding at all."""
        mask = tokens.eq(self.config.pad_id)
        return mask if bool(mask.any()) else None

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> EncoderOutput:
        """Run the encoder on ``src (B, S)``; the mask ``(B, S)`` is ``True`` at padding (None: ``src == pad_id``)."""
        if src_key_padding_mask is None:
            src_key_padding_mask = self.padding_mask(src)
        source = self.encoder(src, src_key_padding_mask)
        attention = getattr(self.decoder, "attention", None)  # the plain decoder has none
        keys = None if attention is None else attention.project_keys(source.memory)
        return dataclasses.replace(source, keys=keys)

    def decode(self, tgt_in: Tensor, source: EncoderOutput, *, parallel: bool = True) -> Tensor:
        """Teacher-forced logits ``(B, T, V)`` for ``tgt_in (B, T)`` (BOS y_1 ... y_{T-1}).

        Args:
            tgt_in: decoder inputs.
            source: ``encode``'s output.
            parallel: run the RNN over all positions at once where the decoder allows it (no
                attention, or Luong without input feeding); False steps one position at a time.
        """
        embedded = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        o, _, _ = self.decoder(embedded, self.decoder.start(source), source, parallel=parallel)  # (B, T, H)
        return self.output(self.dropout(o))  # (B, T, V)

    def forward(self, src: Tensor, tgt_in: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits for training, ``decode(tgt_in, encode(src))``: ``(B, T, V)``.

        Args:
            src: ``(B, S)`` source ids.
            tgt_in: ``(B, T)`` decoder inputs, the targets shifted right behind BOS.
            src_key_padding_mask: ``(B, S)``, ``True`` at padding; None takes ``src == pad_id``.
        """
        return self.decode(tgt_in, self.encode(src, src_key_padding_mask))

    def attention_sites(self) -> list[tuple[str, int, nn.Module]]:
        """Where ``attnlab.capture`` finds attention: the decoder's source attention of every target
        position (``rnn_source``, one layer), if the decoder attends."""
        return [] if self.config.attention == "none" else [("rnn_source", 0, self.decoder)]

    # --- incremental decoding, driven by attnlab.decoding.search ----------------------------
    def start_state(
        self, src: Tensor, src_key_padding_mask: Tensor | None = None, *, repeat: int = 1, use_cache: bool = True
    ) -> Seq2SeqSearchState:
        """Encode ``src (B, S)`` once; the state holds ``repeat`` rows per sentence (row b * repeat + j).

        ``use_cache=False`` keeps the start state and the prefix and reruns the decoder over the
        whole prefix at every step: the reference the carried state is tested against.
        """
        source = self.encode(src, src_key_padding_mask)
        if repeat > 1:
            source = source.repeat(repeat)
        decoder = self.decoder.start(source)
        if use_cache:
            return Seq2SeqSearchState(source, decoder)
        return Seq2SeqSearchState(source, decoder, decoder, src.new_empty(src.shape[0] * repeat, 0))

    def step(self, state: Seq2SeqSearchState, tokens: Tensor) -> tuple[Tensor, Seq2SeqSearchState]:
        """Feed the newest token of every row ``(B,)``: ``(logits (B, V), state)``."""
        if state.prefix is None:
            embedded = self.dropout(self.tgt_embed(tokens))  # (B, E)
            o, state.decoder, _ = self.decoder.step(embedded, state.decoder, state.source)  # (B, H)
        else:
            state.prefix = torch.cat([state.prefix, tokens[:, None]], dim=1)  # (B, T')
            embedded = self.dropout(self.tgt_embed(state.prefix))  # (B, T', E)
            o, state.decoder, _ = self.decoder(embedded, state.start, state.source)  # (B, T', H)
            o = o[:, -1]
        return self.output(self.dropout(o)), state  # (B, V)

    def reorder_state(self, state: Seq2SeqSearchState, index: Tensor) -> Seq2SeqSearchState:
        """Keep rows ``index (B',)``, where row i of the result comes from the same source sentence
        as row i of the state (beam search), so the source side needs no reordering."""
        state.decoder = state.decoder.index_select(index)
        if state.prefix is not None:
            state.prefix = state.prefix.index_select(0, index)
        return state
