"""The RNN encoder of :mod:`attnlab.models.rnn_seq2seq`: a packed (bi)directional RNN over the
source and the bridge from its final states to the decoder's first state.

Shapes: B batch, S source positions, E embedding size, H hidden size, L layers, A attention size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnlab.layers.dropout import Dropout
from attnlab.models.rnn_config import CELLS, Hidden, Seq2SeqConfig

__all__ = ["EncoderOutput", "RNNEncoder"]


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
