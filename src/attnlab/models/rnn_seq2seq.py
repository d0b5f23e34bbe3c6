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
drive it as they drive the Transformer; the source attention of each step comes back as
``(B, 1, S)`` (one "layer").

Shapes: B batch (times the beam in search), S source positions, T target positions,
E embedding size, H hidden size, L layers, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnlab.config import ConfigMixin, UnknownKeyError
from attnlab.layers.dropout import Dropout
from attnlab.layers.rnn_attention import RNN_SCORES, RNNSourceAttention

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
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

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


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


@dataclass
class EncoderOutput:
    """What the decoders read of the source.

    Attributes:
        memory: encoder states h_1..h_S ``(B, S, H)``, zero at padding.
        padding_mask: ``(B, S)``, ``True`` at padding, or None.
        final: the decoder's initial state, ``(L, B, H)`` (a pair for an LSTM).
        summary: the fixed context c of the ``none`` decoder ``(B, H)``: the top layer's final
            state (the forward direction's last and the backward direction's first, concatenated).
        keys: the decoder attention's projection of ``memory`` ``(B, S, A)``, or None.
    """

    memory: Tensor
    padding_mask: Tensor | None
    final: Hidden
    summary: Tensor
    keys: Tensor | None = None  # the attention's U_a h_j, projected once per source (additive score)

    @property
    def attention_mask(self) -> Tensor | None:
        """``(B, 1, S)``, ``True`` where the source may be attended (the core's convention)."""
        return None if self.padding_mask is None else ~self.padding_mask[:, None, :]

    def repeat(self, times: int) -> EncoderOutput:
        """Every row ``times`` times in a row (b * times + j), for beam search."""
        rep = lambda x: x.repeat_interleave(times, dim=0)
        rep_state = lambda x: x.repeat_interleave(times, dim=1)
        final = tuple(map(rep_state, self.final)) if isinstance(self.final, tuple) else rep_state(self.final)
        mask = None if self.padding_mask is None else rep(self.padding_mask)
        keys = None if self.keys is None else rep(self.keys)
        return EncoderOutput(rep(self.memory), mask, final, rep(self.summary), keys)


class RNNEncoder(nn.Module):
    """Embedding, dropout and a packed (bi)directional RNN, plus the bridge to the decoder's state.

    Bridge for a bidirectional encoder: s_0^l = tanh(W_h [->h_S^l; <-h_1^l] + b_h) per layer l
    (the LSTM's cell: W_c [->c_S^l; <-c_1^l] + b_c, no tanh); a unidirectional one hands its
    final states over as they are.

    Args:
        config: the model's hyper-parameters.
        embedding: the source embedding.
    """

    def __init__(self, config: Seq2SeqConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        c = config
        self.embedding = embedding
        self.dropout = Dropout(c.dropout)
        self.bidirectional = c.bidirectional
        per_direction = c.hidden_size // 2 if c.bidirectional else c.hidden_size
        self.rnn = CELLS[c.cell](
            c.embed_dim,
            per_direction,
            c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            bidirectional=c.bidirectional,
        )
        self.bridge_h = nn.Linear(c.hidden_size, c.hidden_size) if c.bidirectional else None
        self.bridge_c = nn.Linear(c.hidden_size, c.hidden_size) if c.bidirectional and c.cell == "lstm" else None

    def forward(self, src: Tensor, padding_mask: Tensor | None = None) -> EncoderOutput:
        """Encode ``src (B, S)``; ``padding_mask (B, S)`` is ``True`` at padding (pads must come last).

        Rows are packed by their lengths, so a padded row gets exactly the states it would get alone.
        """
        lengths = src.new_full((src.shape[0],), src.shape[1])
        if padding_mask is not None:
            lengths = lengths - padding_mask.sum(dim=1)
        x = self.dropout(self.embedding(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, H)
        if isinstance(final, tuple):
            h, c = (self._join_directions(state) for state in final)  # (L, B, H) each
            decoder_state = (self._bridge(h, self.bridge_h, torch.tanh), self._bridge(c, self.bridge_c, None))
        else:
            h = self._join_directions(final)  # (L, B, H)
            decoder_state = self._bridge(h, self.bridge_h, torch.tanh)
        return EncoderOutput(memory, padding_mask, decoder_state, h[-1])

    def _join_directions(self, state: Tensor) -> Tensor:
        """``(L * dirs, B, H / dirs)`` -> ``(L, B, H)``, forward before backward."""
        if not self.bidirectional:
            return state
        layers2, batch, half = state.shape
        state = state.view(layers2 // 2, 2, batch, half)  # (L, 2, B, H/2)
        return torch.cat([state[:, 0], state[:, 1]], dim=-1)  # (L, B, H)

    @staticmethod
    def _bridge(state: Tensor, linear: nn.Linear | None, activation: Any) -> Tensor:
        if linear is None:
            return state
        out = linear(state)
        return out if activation is None else activation(out)


# ---------------------------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------------------------


@dataclass
class DecoderState:
    """The decoder's recurrent state between steps.

    Attributes:
        hidden: s_t of every layer, ``(L, B, H)`` (a pair for an LSTM).
        feed: what the next step concatenates to its embedding, ``(B, H)``: the fixed context c
            (``none``), h~_t (Luong with input feeding), or None.
    """

    hidden: Hidden
    feed: Tensor | None

    def index_select(self, index: Tensor) -> DecoderState:
        """Keep the batch rows ``index (B',)``."""
        pick = lambda x: x.index_select(1, index)
        hidden = tuple(map(pick, self.hidden)) if isinstance(self.hidden, tuple) else pick(self.hidden)
        return DecoderState(hidden, None if self.feed is None else self.feed.index_select(0, index))


_StepOutput = tuple[Tensor, DecoderState, Tensor | None]
"""o ``(B, [T,] H)``, the decoder state after it, the source attention ``(B, [T,] S)`` or None."""


def _top(hidden: Hidden) -> Tensor:
    """The top layer's state ``(B, H)``."""
    return (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]


class _RNNDecoder(nn.Module):
    """The parts every decoder shares: a (multi-layer) RNN and the read-out W_c.

    Args:
        config: the model's hyper-parameters.
        feeds_input: the RNN input has H features beside the embedding (a context or h~_{t-1}).
    """

    parallel = False  # True where the RNN input does not depend on the attention

    def __init__(self, config: Seq2SeqConfig, feeds_input: bool) -> None:
        super().__init__()
        c = config
        input_size = c.embed_dim + (c.hidden_size if feeds_input else 0)
        self.rnn = CELLS[c.cell](
            input_size, c.hidden_size, c.num_layers, batch_first=True, dropout=c.dropout if c.num_layers > 1 else 0.0
        )
        self.readout = nn.Linear(2 * c.hidden_size, c.hidden_size, bias=False)  # W_c

    def run_step(self, x: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """The RNN over one position ``(B, 1, in)`` -> ``(B, 1, H)`` and the new state.

        oneDNN's RNN kernel has a large fixed cost per call on CPU with more than one thread,
        which a step-by-step decoder pays T times (a Bahdanau training step at B=64, H=128, 2 threads
        on a busy 2-core machine: 777 ms with it, 169 ms without; equal at 1 thread). It is turned
        off for these one-position calls only.
        """
        with torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None, fp32_precision=None):
            return self.rnn(x, hidden)

    def start(self, source: EncoderOutput) -> DecoderState:
        """The state before the first step: the bridged encoder state and nothing fed yet."""
        return DecoderState(source.final, None)

    def attentional_hidden(self, context: Tensor, state: Tensor) -> Tensor:
        """o = tanh(W_c [c; s]) (Luong et al., 2015, Eq. 5), ``(..., H)`` from two ``(..., H)``."""
        return torch.tanh(self.readout(torch.cat([context, state], dim=-1)))

    def step(self, embedded: Tensor, state: DecoderState, source: EncoderOutput) -> _StepOutput:
        """One target position: embedding ``(B, E)`` -> o_t ``(B, H)``, the state, a_t ``(B, S)`` or None."""
        raise NotImplementedError

    def forward_parallel(self, embedded: Tensor, state: DecoderState, source: EncoderOutput) -> _StepOutput:
        """All positions in one RNN call; only where ``parallel``."""
        raise NotImplementedError

    def forward(
        self, embedded: Tensor, state: DecoderState, source: EncoderOutput, *, parallel: bool = True
    ) -> _StepOutput:
        """Teacher forcing over ``embedded (B, T, E)``: o ``(B, T, H)``, the last state, a ``(B, T, S)`` or None.

        One ``step`` per position (the reference path), or, with ``parallel`` and a decoder whose
        RNN input does not depend on the attention, one RNN call over all positions.
        """
        if parallel and self.parallel:
            return self.forward_parallel(embedded, state, source)
        outputs, weights = [], []
        for t in range(embedded.shape[1]):
            o, state, a = self.step(embedded[:, t], state, source)
            outputs.append(o)
            weights.append(a)
        stacked = None if weights[0] is None else torch.stack(weights, dim=1)  # (B, T, S)
        return torch.stack(outputs, dim=1), state, stacked  # (B, T, H)


class PlainDecoder(_RNNDecoder):
    """Encoder-decoder without attention: one context c for the whole sentence.

    s_t = f(s_{t-1}, [E y_{t-1}; c]), o_t = tanh(W_c [c; s_t]), with c the encoder's final state
    (Cho et al., 2014, Section 2.2: c conditions every step and the output).

    Args:
        config: the model's hyper-parameters.
    """

    parallel = True

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config, feeds_input=True)

    def start(self, source: EncoderOutput) -> DecoderState:
        return DecoderState(source.final, source.summary)

    def step(self, embedded: Tensor, state: DecoderState, source: EncoderOutput) -> _StepOutput:
        x = torch.cat([embedded, state.feed], dim=-1)[:, None]  # (B, 1, E + H)
        out, hidden = self.run_step(x, state.hidden)  # (B, 1, H)
        return self.attentional_hidden(state.feed, out[:, 0]), DecoderState(hidden, state.feed), None

    def forward_parallel(self, embedded: Tensor, state: DecoderState, source: EncoderOutput) -> _StepOutput:
        context = state.feed[:, None].expand(-1, embedded.shape[1], -1)  # (B, T, H)
        out, hidden = self.rnn(torch.cat([embedded, context], dim=-1), state.hidden)  # (B, T, H)
        return self.attentional_hidden(context, out), DecoderState(hidden, state.feed), None


class BahdanauDecoder(_RNNDecoder):
    """Attention from the previous state (Bahdanau et al., 2015, Eq. 4-6).

    e_tj = v_a^T tanh(W_a s_{t-1} + U_a h_j), a_t = softmax(e_t), c_t = sum_j a_tj h_j,
    s_t = f(s_{t-1}, [E y_{t-1}; c_t]), o_t = tanh(W_c [c_t; s_t]).

    Args:
        config: the model's hyper-parameters.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config, feeds_input=True)
        self.attention = RNNSourceAttention(config.hidden_size, config.hidden_size, "concat", config.attention_dim)

    def step(self, embedded: Tensor, state: DecoderState, source: EncoderOutput) -> _StepOutput:
        query = _top(state.hidden)[:, None]  # (B, 1, H) s_{t-1}
        context, weights = self.attention(query, source.memory, source.attention_mask, source.keys)  # (B,1,H), (B,1,S)
        out, hidden = self.run_step(torch.cat([embedded[:, None], context], dim=-1), state.hidden)  # (B, 1, H)
        o = self.attentional_hidden(context[:, 0], out[:, 0])  # (B, H)
        return o, DecoderState(hidden, None), weights[:, 0]


class LuongDecoder(_RNNDecoder):
    """Attention from the current state (Luong et al., 2015, Eq. 5, 7, 8; input feeding, Section 3.3).

    h_t = f(h_{t-1}, [E y_{t-1}; h~_{t-1}]) (or E y_{t-1} alone without input feeding),
    a_t(s) = softmax_s(score(h_t, h_s)), c_t = sum_s a_t(s) h_s, h~_t = tanh(W_c [c_t; h_t]).

    Args:
        config: the model's hyper-parameters (``score``, ``input_feeding``).
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config, feeds_input=bool(config.input_feeding))
        self.input_feeding = bool(config.input_feeding)
        self.parallel = not self.input_feeding
        self.attention = RNNSourceAttention(config.hidden_size, config.hidden_size, config.score, config.attention_dim)

    def start(self, source: EncoderOutput) -> DecoderState:
        memory = source.memory
        feed = memory.new_zeros(memory.shape[0], memory.shape[-1]) if self.input_feeding else None  # h~_0 = 0
        return DecoderState(source.final, feed)

    def step(self, embedded: Tensor, state: DecoderState, source: EncoderOutput) -> _StepOutput:
        x = embedded if state.feed is None else torch.cat([embedded, state.feed], dim=-1)  # (B, E [+ H])
        out, hidden = self.run_step(x[:, None], state.hidden)  # (B, 1, H) h_t
        context, weights = self.attention(out, source.memory, source.attention_mask, source.keys)  # (B,1,H), (B,1,S)
        h_tilde = self.attentional_hidden(context[:, 0], out[:, 0])  # (B, H)
        return h_tilde, DecoderState(hidden, h_tilde if self.input_feeding else None), weights[:, 0]

    def forward_parallel(self, embedded: Tensor, state: DecoderState, source: EncoderOutput) -> _StepOutput:
        out, hidden = self.rnn(embedded, state.hidden)  # (B, T, H)
        context, weights = self.attention(out, source.memory, source.attention_mask, source.keys)  # (B,T,H), (B,T,S)
        return self.attentional_hidden(context, out), DecoderState(hidden, None), weights


DECODERS: dict[str, type[_RNNDecoder]] = {"none": PlainDecoder, "bahdanau": BahdanauDecoder, "luong": LuongDecoder}

# The five decoders of the classic comparison, by name: the Seq2SeqConfig fields that choose each.
ATTENTION_VARIANTS: dict[str, dict[str, str]] = {
    "none": dict(attention="none"),
    "bahdanau": dict(attention="bahdanau"),
    "luong_dot": dict(attention="luong", score="dot"),
    "luong_general": dict(attention="luong", score="general"),
    "luong_concat": dict(attention="luong", score="concat"),
}


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


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

    def decode(
        self, tgt_in: Tensor, source: EncoderOutput, *, need_weights: bool = False, parallel: bool = True
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Teacher-forced logits ``(B, T, V)`` for ``tgt_in (B, T)`` (BOS y_1 ... y_{T-1}).

        Args:
            tgt_in: decoder inputs.
            source: ``encode``'s output.
            need_weights: also return the source attention ``(B, T, S)`` (None without attention).
            parallel: run the RNN over all positions at once where the decoder allows it (no
                attention, or Luong without input feeding); False steps one position at a time.
        """
        embedded = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        o, _, weights = self.decoder(embedded, self.decoder.start(source), source, parallel=parallel)  # (B, T, H)
        logits = self.output(self.dropout(o))  # (B, T, V)
        return (logits, weights) if need_weights else logits

    def forward(
        self, src: Tensor, tgt_in: Tensor, src_key_padding_mask: Tensor | None = None, *, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Teacher-forced logits for training: ``decode(tgt_in, encode(src))``.

        Args:
            src: ``(B, S)`` source ids.
            tgt_in: ``(B, T)`` decoder inputs, the targets shifted right behind BOS.
            src_key_padding_mask: ``(B, S)``, ``True`` at padding; None takes ``src == pad_id``.
            need_weights: also return the source attention ``(B, T, S)`` (None without attention).

        Returns:
            logits ``(B, T, V)``, or ``(logits, weights)``.
        """
        return self.decode(tgt_in, self.encode(src, src_key_padding_mask), need_weights=need_weights)

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

    def step(
        self, state: Seq2SeqSearchState, tokens: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, Seq2SeqSearchState, Tensor | None]:
        """Feed the newest token of every row ``(B,)``.

        Returns:
            ``(logits (B, V), state, attention)``: the source attention of this step ``(B, 1, S)``
            when ``need_weights``, else None.

        Raises:
            ValueError: ``need_weights`` for a model without attention, which has no alignment.
        """
        if need_weights and self.config.attention == "none":
            raise ValueError("attention='none' has no source attention to return; call step(need_weights=False)")
        if state.prefix is None:
            embedded = self.dropout(self.tgt_embed(tokens))  # (B, E)
            o, state.decoder, weights = self.decoder.step(embedded, state.decoder, state.source)  # (B, H)
        else:
            state.prefix = torch.cat([state.prefix, tokens[:, None]], dim=1)  # (B, T')
            embedded = self.dropout(self.tgt_embed(state.prefix))  # (B, T', E)
            o, state.decoder, all_weights = self.decoder(embedded, state.start, state.source)  # (B, T', H)
            o, weights = o[:, -1], None if all_weights is None else all_weights[:, -1]
        logits = self.output(self.dropout(o))  # (B, V)
        return logits, state, (weights[:, None] if need_weights else None)  # (B, 1, S)

    def reorder_state(self, state: Seq2SeqSearchState, index: Tensor) -> Seq2SeqSearchState:
        """Keep rows ``index (B',)``, where row i of the result comes from the same source sentence
        as row i of the state (beam search), so the source side needs no reordering."""
        state.decoder = state.decoder.index_select(index)
        if state.prefix is not None:
            state.prefix = state.prefix.index_select(0, index)
        return state
