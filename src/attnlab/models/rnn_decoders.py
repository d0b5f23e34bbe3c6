"""The three decoders of :mod:`attnlab.models.rnn_seq2seq`: ``none`` (a fixed context; Cho et al.,
2014), ``bahdanau`` (attention before the RNN; Bahdanau et al., 2015) and ``luong`` (after it;
Luong et al., 2015), sharing one read-out o_t = tanh(W_c [c_t; s_t]).

Shapes: B batch, S source positions, T target positions, E embedding size, H hidden size, L layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.layers.rnn_attention import RNNSourceAttention
from attnlab.models.rnn_config import CELLS, Hidden, Seq2SeqConfig
from attnlab.models.rnn_encoder import EncoderOutput

__all__ = [
    "ATTENTION_VARIANTS",
    "DECODERS",
    "BahdanauDecoder",
    "DecoderState",
    "LuongDecoder",
    "PlainDecoder",
]


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


class RNNDecoder(nn.Module):
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


class PlainDecoder(RNNDecoder):
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


class BahdanauDecoder(RNNDecoder):
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


class LuongDecoder(RNNDecoder):
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


DECODERS: dict[str, type[RNNDecoder]] = {"none": PlainDecoder, "bahdanau": BahdanauDecoder, "luong": LuongDecoder}

# The five decoders of the classic comparison, by name: the Seq2SeqConfig fields that choose each.
ATTENTION_VARIANTS: dict[str, dict[str, str]] = {
    "none": dict(attention="none"),
    "bahdanau": dict(attention="bahdanau"),
    "luong_dot": dict(attention="luong", score="dot"),
    "luong_general": dict(attention="luong", score="general"),
    "luong_concat": dict(attention="luong", score="concat"),
}
