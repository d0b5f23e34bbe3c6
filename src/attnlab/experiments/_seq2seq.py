"""A word-level vocabulary and a short teacher-forced training loop for the experiments' small
seq2seq models (``attnlab.models`` Transformer and RNN seq2seq alike: ``model(src, tgt_in)``).

The experiments train for a fixed number of steps on a fixed seed, so a figure is the same run
after run on one machine; the trainer of ``attnlab.training`` (time budgets, checkpoints,
SentencePiece) is more than a 30-second toy task needs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from attnlab.decoding.search import greedy_search

__all__ = ["Vocab", "exact_match", "greedy_decode", "train_seq2seq"]

SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # ids 0..3, the models' default pad/bos/eos ids
PAD, UNK, BOS, EOS = range(4)


class Vocab:
    """Words to ids and back; ids 0-3 are ``SPECIALS``."""

    def __init__(self, sentences: Iterable[Sequence[str]]) -> None:
        words = sorted({w for sentence in sentences for w in sentence})
        self.words = [*SPECIALS, *words]
        self.ids = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentences: Sequence[Sequence[str]], eos: bool = True) -> Tensor:
        """Padded ids ``(B, L)``, each sentence followed by ``</s>`` when ``eos``."""
        rows = [[self.ids.get(w, UNK) for w in s] + ([EOS] if eos else []) for s in sentences]
        out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to the first ``</s>`` (specials dropped)."""
        words = []
        for i in ids:
            if i == EOS:
                break
            if i >= len(SPECIALS):
                words.append(self.words[i])
        return words


def _batch(src_vocab: Vocab, tgt_vocab: Vocab, pairs: Sequence[tuple[list[str], list[str]]]) -> tuple[Tensor, ...]:
    src = src_vocab.encode([s for s, _ in pairs])
    tgt = tgt_vocab.encode([t for _, t in pairs])  # (B, T+1) ending in </s>
    tgt_in = torch.cat([torch.full((len(pairs), 1), BOS), tgt[:, :-1]], dim=1)  # (B, T+1) from <s>
    tgt_in = tgt_in.masked_fill(tgt_in.eq(EOS), PAD)
    return src, tgt_in, tgt


def train_seq2seq(
    model: nn.Module,
    pairs: Sequence[tuple[list[str], list[str]]],
    vocabs: tuple[Vocab, Vocab],
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """Adam on the cross-entropy of the next target word, ``steps`` batches drawn with ``seed``.

    Returns:
        The loss of every step.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    model.train()
    losses = []
    for _ in range(steps):
        src, tgt_in, tgt = _batch(*vocabs, rng.sample(pairs, min(batch_size, len(pairs))))
        logits = model(src, tgt_in)  # (B, T, V)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def greedy_decode(model: nn.Module, sources: Sequence[list[str]], vocabs: tuple[Vocab, Vocab]) -> list[list[str]]:
    """Greedy translations of ``sources`` (words) as words."""
    src_vocab, tgt_vocab = vocabs
    out = []
    for start in range(0, len(sources), 256):
        src = src_vocab.encode(sources[start : start + 256])
        result = greedy_search(model, src, max_len_a=2.0, max_len_b=4)
        out += [tgt_vocab.decode(row.tolist()) for row in result.tokens]
    return out


def exact_match(
    model: nn.Module, pairs: Sequence[tuple[list[str], list[str]]], vocabs: tuple[Vocab, Vocab]
) -> list[bool]:
    """Per pair: the greedy translation equals the reference."""
    hypotheses = greedy_decode(model, [s for s, _ in pairs], vocabs)
    return [h == t for h, (_, t) in zip(hypotheses, pairs)]
