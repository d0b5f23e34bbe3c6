"""Logits processors: what greedy and beam search may emit next, row by row.

A processor edits the next-token log-probabilities ``(R, V)`` of R rows (sentences, or beams of sentences)
from what each row generated so far. Those that remember something per row keep it in a state
tensor whose first dim is the row, so beam search keeps the parents' states with ``state[parents]``.

- :class:`Utf8Constraint`: byte-fallback pieces (``<0xE3>``) only ever form valid UTF-8.
- :class:`RepetitionPenalty`: Keskar et al. (2019, CTRL, Sec. 4.1), as Hugging Face applies it.
- :class:`NoRepeatNGram`: no n-gram twice in a row's output (Paulus et al., 2018; fairseq,
  Hugging Face ``no_repeat_ngram_size``).

Shapes: R rows, V vocabulary, t tokens generated so far.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = [
    "LogitsProcessor",
    "NoRepeatNGram",
    "Processing",
    "RepetitionPenalty",
    "Utf8Constraint",
    "decoding_processors",
]

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece's byte-fallback pieces


class LogitsProcessor(Protocol):
    """What a search asks of a processor; ``state`` is None or a tensor with rows first."""

    def start(self, rows: int, device: torch.device) -> Tensor | None:
        """The state of ``rows`` rows that generated nothing yet."""

    def __call__(self, state: Tensor | None, generated: Tensor, logits: Tensor, remaining: Tensor) -> Tensor:
        """New logits ``(R, V)`` after ``generated (R, t)``; ``remaining (R,)`` tokens may follow this one."""

    def advance(self, state: Tensor | None, tokens: Tensor) -> Tensor | None:
        """The state after every row emitted ``tokens (R,)``."""


class _Stateless:
    """Processors that read ``generated`` only."""

    def start(self, rows: int, device: torch.device) -> None:
        """No state."""
        return None

    def advance(self, state: None, tokens: Tensor) -> None:
        """No state."""
        return None


# ---------------------------------------------------------------------------------------------
# Valid UTF-8
# ---------------------------------------------------------------------------------------------


def _utf8_lead(byte: int) -> tuple[int, int, int]:
    """``(continuation bytes due, lowest, highest allowed next byte)`` after ``byte`` starts a character;
    due -1 for a byte that cannot start one (RFC 3629, Sec. 4: no overlong forms, surrogates or
    code points above U+10FFFF)."""
    if byte < 0x80:
        return 0, 0x80, 0xBF
    if byte < 0xC2 or byte > 0xF4:  # continuation bytes, overlong C0/C1, beyond U+10FFFF
        return -1, 0x80, 0xBF
    if byte < 0xE0:
        return 1, 0x80, 0xBF
    if byte < 0xF0:
        return 2, {0xE0: 0xA0}.get(byte, 0x80), {0xED: 0x9F}.get(byte, 0xBF)
    return 3, {0xF0: 0x90}.get(byte, 0x80), {0xF4: 0x8F}.get(byte, 0xBF)


class Utf8Constraint:
    """Byte-fallback pieces only ever form valid UTF-8 (RFC 3629, Sec. 4).

    The state of a row is ``(due, low, high)``: the continuation bytes its open character still
    needs and the range the next one must fall in. While bytes are due only continuation-byte
    pieces in that range are allowed (no text piece, no EOS); otherwise a byte piece must start a
    character (ASCII, or a lead byte whose character fits in the ``remaining`` tokens), so a lone
    continuation byte or a lead 0xC0, 0xC1, 0xF5-0xFF is never emitted and a search cut at its
    length limit leaves no character open.

    Args:
        byte_of: ``(V,)`` the byte each piece spells, -1 for pieces that are not byte pieces.
    """

    def __init__(self, byte_of: Tensor) -> None:
        self.byte_of = byte_of.long()
        leads = torch.tensor([_utf8_lead(b) for b in range(256)])  # (256, 3)
        self.after = leads[self.byte_of.clamp(min=0)]  # (V, 3) the state a piece leaves behind
        self.after[self.byte_of < 0] = torch.tensor([0, 0x80, 0xBF])  # a text piece opens nothing
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_pieces(cls, pieces: Sequence[str]) -> Utf8Constraint:
        """The constraint of a vocabulary given as its pieces, id order (``<0xE3>`` is byte 0xE3)."""
        found = (_BYTE_PIECE.match(piece) for piece in pieces)
        return cls(torch.tensor([int(m.group(1), 16) if m else -1 for m in found], dtype=torch.long))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> Utf8Constraint:
        """The constraint of a ``SentencePieceTokenizer`` (``vocab_size`` and ``id_to_piece``)."""
        return cls.from_pieces(tokenizer.id_to_piece(range(tokenizer.vocab_size)))

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``byte_of`` and ``after`` on ``device``, copied there once."""
        if device not in self._tables:
            self._tables[device] = (self.byte_of.to(device), self.after.to(device))
        return self._tables[device]

    def start(self, rows: int, device: torch.device) -> Tensor:
        """``(R, 3)``: no character open."""
        return torch.tensor([0, 0x80, 0xBF], device=device).repeat(rows, 1)

    def allowed(self, state: Tensor, remaining: Tensor) -> Tensor:
        """``(R, V)``: True where a piece keeps the row's bytes valid UTF-8."""
        byte_of, after = self._on(state.device)
        start_due = after[:, 0]  # (V,)
        due, low, high = (x[:, None] for x in state.unbind(dim=1))  # (R, 1) each
        continues = (byte_of >= low) & (byte_of <= high)  # (R, V)
        starts = (start_due >= 0) & (start_due <= remaining[:, None])  # (R, V)
        return torch.where(due > 0, continues, starts)

    def __call__(self, state: Tensor, generated: Tensor, logits: Tensor, remaining: Tensor) -> Tensor:
        """``logits`` with -inf wherever :meth:`allowed` is False."""
        return logits.masked_fill(~self.allowed(state, remaining), -math.inf)

    def advance(self, state: Tensor, tokens: Tensor) -> Tensor:
        """One continuation byte fewer due, or the character ``tokens`` opens."""
        due = state[:, :1]  # (R, 1)
        opened = self._on(state.device)[1][tokens].clamp(min=0)  # (R, 3)
        continued = torch.cat([due - 1, torch.full_like(due, 0x80), torch.full_like(due, 0xBF)], dim=1)  # (R, 3)
        return torch.where(due > 0, continued, opened)


# ---------------------------------------------------------------------------------------------
# Repetition
# ---------------------------------------------------------------------------------------------


class RepetitionPenalty(_Stateless):
    """Divide the positive logits of tokens a row already generated by ``penalty``, multiply the
    negative ones (Keskar et al., 2019, CTRL, Sec. 4.1, with Hugging Face's sign rule).

    Args:
        penalty: > 0; 1 changes nothing, above 1 discourages repeats.
    """

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition_penalty ({penalty}) must be > 0 (1 for none)")
        self.penalty = penalty

    def __call__(self, state: None, generated: Tensor, logits: Tensor, remaining: Tensor) -> Tensor:
        """``logits`` with every generated token's logit penalised once."""
        seen = logits.gather(1, generated)  # (R, t)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return logits.scatter(1, generated, seen)


class NoRepeatNGram(_Stateless):
    """Ban a token that would complete an n-gram the row already holds (Paulus et al., 2018).

    Args:
        size: n >= 1.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"no_repeat_ngram_size ({size}) must be >= 1 (0 for none)")
        self.size = size

    def __call__(self, state: None, generated: Tensor, logits: Tensor, remaining: Tensor) -> Tensor:
        """``logits`` with -inf at the last token of every n-gram whose first n - 1 tokens end the row."""
        n = self.size
        if generated.shape[1] < n:  # no n-gram yet
            return logits
        ngrams = generated.unfold(1, n, 1)  # (R, t - n + 1, n)
        prefix = generated[:, generated.shape[1] - n + 1 :]  # (R, n - 1)
        match = (ngrams[:, :, :-1] == prefix[:, None, :]).all(dim=2)  # (R, t - n + 1)
        banned = torch.zeros_like(logits, dtype=torch.long).scatter_add(1, ngrams[:, :, -1], match.long())  # (R, V)
        return logits.masked_fill(banned > 0, -math.inf)


# ---------------------------------------------------------------------------------------------
# A search's processors
# ---------------------------------------------------------------------------------------------


def decoding_processors(
    processors: Sequence[LogitsProcessor] = (), *, no_repeat_ngram_size: int = 0, repetition_penalty: float = 1.0
) -> list[LogitsProcessor]:
    """``processors`` followed by the repetition options that are on (size 0 and penalty 1 are off)."""
    found = list(processors)
    if repetition_penalty != 1.0:
        found.append(RepetitionPenalty(repetition_penalty))
    if no_repeat_ngram_size:
        found.append(NoRepeatNGram(no_repeat_ngram_size))
    return found


class Processing:
    """The processors of one search and their per-row states.

    A processor that would leave a row no token at all is skipped for that row, so the first
    processors (hard constraints such as :class:`Utf8Constraint`) win over the later ones.

    Args:
        processors: applied in order.
        rows: R.
        device: where the states live.
    """

    def __init__(self, processors: Sequence[LogitsProcessor], rows: int, device: torch.device) -> None:
        self.processors = list(processors)
        self.states = [p.start(rows, device) for p in self.processors]

    def __bool__(self) -> bool:
        return bool(self.processors)

    def __call__(self, generated: Tensor, logits: Tensor, remaining: Tensor) -> Tensor:
        """Processed ``logits (R, V)`` of rows that generated ``generated (R, t)``."""
        for processor, state in zip(self.processors, self.states):
            processed = processor(state, generated, logits, remaining)
            stuck = ~processed.isfinite().any(dim=1, keepdim=True)  # (R, 1)
            logits = torch.where(stuck, logits, processed)
        return logits

    def advance(self, tokens: Tensor) -> None:
        """Every row emitted ``tokens (R,)``."""
        self.states = [p.advance(s, tokens) for p, s in zip(self.processors, self.states)]

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index (R',)`` (beam search's parents)."""
        self.states = [None if s is None else s.index_select(0, index) for s in self.states]
