"""Batched greedy and beam search over any encoder-decoder that speaks ``IncrementalDecoder``.

The model encodes once (``start_state``), is fed one token per row per step (``step``), and
keeps the rows that beam search picks (``reorder_state``); ``attnlab.models.transformer`` does
this with its key/value caches, and an RNN seq2seq can do it with its hidden state.
``use_cache=False`` asks the model to recompute the whole prefix each step: the reference
the cached path is tested against.

Shapes: B sentences, k beam size, n hypotheses returned per sentence, T generated tokens,
S source positions, N decoder layers, V vocabulary.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from attnlab.decoding.constraints import LogitsProcessor, Processing, decoding_processors


class IncrementalDecoder(Protocol):
    """What greedy and beam search need of a model."""

    pad_id: int
    bos_id: int
    eos_id: int

    def start_state(
        self, src: Tensor, src_key_padding_mask: Tensor | None = None, *, repeat: int = 1, use_cache: bool = True
    ) -> Any:
        """Encode ``src (B, S)`` once; the state holds ``repeat`` rows per sentence, row b * repeat + j."""

    def step(self, state: Any, tokens: Tensor) -> tuple[Tensor, Any]:
        """Feed ``tokens (B',)``; return logits ``(B', V)`` and the state."""

    def reorder_state(self, state: Any, index: Tensor) -> Any:
        """Keep rows ``index (B',)``; row i of the result always comes from the same sentence as row i."""


@dataclass
class SearchResult:
    """Hypotheses of a search; beam search adds a hypothesis dim n after B.

    Attributes:
        tokens: ``(B, [n,] T)`` generated ids (no BOS; EOS if produced), ``pad_id`` after the end.
        scores: ``(B, [n])`` sum of log-probabilities; beam search divides by the length penalty.
        lengths: ``(B, [n])`` generated tokens, EOS included.

    The attention behind a hypothesis is what the model computes teacher-forced on it:
    ``attnlab.capture`` around ``model(src, tokens)`` (``attnlab.Translator`` does this).
    """

    tokens: Tensor
    scores: Tensor
    lengths: Tensor


def _in_inference_mode(search: Callable[..., SearchResult]) -> Callable[..., SearchResult]:
    """Run a search under ``torch.inference_mode`` (less bookkeeping per op than ``no_grad``:
    7% of a small model's decoding step on CPU) and return ordinary tensors, which autograd
    may use later (inference tensors could not be saved for a backward pass)."""

    @functools.wraps(search)
    def run(*args: Any, **kwargs: Any) -> SearchResult:
        with torch.inference_mode():
            result = search(*args, **kwargs)
        tensors = {f.name: getattr(result, f.name) for f in fields(result)}
        return replace(result, **{name: t.clone() for name, t in tensors.items()})

    return run


def length_penalty(length: Tensor | int, alpha: float) -> Tensor | float:
    """lp(Y) = ((5 + |Y|) / 6)^alpha (Wu et al., 2016, GNMT, Eq. 14); alpha 0 gives 1."""
    return ((5 + length) / 6) ** alpha


def max_lengths(src: Tensor, src_key_padding_mask: Tensor | None, a: float, b: float) -> Tensor:
    """Per-sentence limits ``(B,)``: floor(a * |x| + b) generated tokens, |x| without padding, >= 1."""
    src_len = torch.full((src.shape[0],), src.shape[1], device=src.device)
    if src_key_padding_mask is not None:
        src_len = src_len - src_key_padding_mask.sum(dim=1)
    return (a * src_len + b).floor().long().clamp(min=1)


def next_tokens(
    model: IncrementalDecoder,
    logits: Tensor,
    step: int,
    min_len: int,
    count: int,
    process: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``count`` best next tokens of every row of ``logits (B, V)`` and their log-probabilities,
    ``(B, count)`` each. Padding never, EOS not before ``min_len`` tokens; ``process`` edits the
    log-probabilities first (masked tokens are not renormalised away, as in fairseq and Hugging
    Face's beam search, so a hypothesis scores what the model gives it)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    if process is not None:
        log_probs = process(log_probs)
    log_probs[:, model.pad_id] = -math.inf
    if step < min_len:
        log_probs[:, model.eos_id] = -math.inf
    return log_probs.topk(count, dim=-1) if count > 1 else log_probs.max(dim=-1, keepdim=True)


@_in_inference_mode
def greedy_search(
    model: IncrementalDecoder,
    src: Tensor,
    src_key_padding_mask: Tensor | None = None,
    *,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    min_len: int = 0,
    use_cache: bool = True,
    processors: Sequence[LogitsProcessor] = (),
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
) -> SearchResult:
    """y_t = argmax_y p(y | y_<t, x) for a batch, until EOS or floor(a * |x| + b) tokens.

    Args:
        model: an ``IncrementalDecoder`` (e.g. ``attnlab.models.transformer.Transformer``).
        src: source ids ``(B, S)``.
        src_key_padding_mask: ``(B, S)``, ``True`` at padding; None takes ``src == pad_id``.
        max_len_a: a of the length limit.
        max_len_b: b of the length limit.
        min_len: tokens generated before EOS is allowed.
        use_cache: incremental decoding; False recomputes the whole prefix every step.
        processors: edit each step's log-probabilities in order (``attnlab.decoding.constraints``,
            e.g. a ``Utf8Constraint``).
        no_repeat_ngram_size: n > 0 bans repeating any n-gram (``NoRepeatNGram``); 0 is off.
        repetition_penalty: above 1 discourages generated tokens (``RepetitionPenalty``); 1 is off.

    Returns:
        A ``SearchResult`` with ``tokens (B, T)`` and ``scores (B,)``.
    """
    src_key_padding_mask = _padding(model, src, src_key_padding_mask)
    limits = max_lengths(src, src_key_padding_mask, max_len_a, max_len_b)
    state = model.start_state(src, src_key_padding_mask, use_cache=use_cache)
    tokens = src.new_full((src.shape[0],), model.bos_id)
    scores = torch.zeros(src.shape[0], device=src.device)
    ended = torch.zeros_like(tokens, dtype=torch.bool)
    repetition = {"no_repeat_ngram_size": no_repeat_ngram_size, "repetition_penalty": repetition_penalty}
    processing = Processing(decoding_processors(processors, **repetition), src.shape[0], src.device)
    steps = []
    for t in range(int(limits.max())):
        logits, state = model.step(state, tokens)
        process = None
        if processing:  # the tokens so far, (B, t), for the processors
            generated = torch.stack(steps, dim=1) if steps else src.new_empty(src.shape[0], 0)
            process = functools.partial(processing, generated, remaining=limits - t - 1)
        best, tokens = (x.squeeze(1) for x in next_tokens(model, logits, t, min_len, 1, process))  # (B,), (B,)
        tokens = tokens.masked_fill(ended, model.pad_id)
        scores += best.masked_fill(ended, 0.0)
        processing.advance(tokens)
        steps.append(tokens)
        ended = ended | tokens.eq(model.eos_id) | (t + 1 >= limits)
        if bool(ended.all()):
            break
    out = torch.stack(steps, dim=1)  # (B, T)
    lengths = out.ne(model.pad_id).sum(dim=1)
    return SearchResult(out, scores, lengths)


def _padding(model: IncrementalDecoder, src: Tensor, mask: Tensor | None) -> Tensor | None:
    if mask is not None:
        return mask
    mask = src.eq(model.pad_id)
    return mask if bool(mask.any()) else None


@dataclass
class _Hypothesis:
    score: float
    tokens: Tensor  # (T,)


@dataclass
class _Beams:
    """The k live hypotheses of every sentence, rows b * k + j."""

    scores: Tensor  # (B, k) sum of log-probabilities
    tokens: Tensor  # (B * k, T) generated so far


@_in_inference_mode
def beam_search(
    model: IncrementalDecoder,
    src: Tensor,
    src_key_padding_mask: Tensor | None = None,
    *,
    beam_size: int = 4,
    n_best: int = 1,
    alpha: float = 0.6,
    max_len_a: float = 1.5,
    max_len_b: float = 10,
    min_len: int = 0,
    use_cache: bool = True,
    processors: Sequence[LogitsProcessor] = (),
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
) -> SearchResult:
    """Beam search for a batch, ranking by log p(Y | X) / lp(Y) (GNMT length penalty).

    Each step takes the 2k best extensions of a sentence's k beams: those ending in EOS among
    the best k are finished, the best k others live on. A sentence is done at its length limit
    floor(a * |x| + b) (live beams then finish as they are), or once it has k finished
    hypotheses and no live beam can still beat the k-th of them: log-probabilities only fall, so
    a beam's best reachable score is its score now over the largest length penalty ahead. (Stopping
    at k finished ones alone, as fairseq does, can keep early, poor endings and lose a confident
    beam one step short of EOS: on a trained date/number model it scored below greedy search.)
    The search stops when every sentence is done.

    Args:
        model: an ``IncrementalDecoder``.
        src: source ids ``(B, S)``.
        src_key_padding_mask: ``(B, S)``, ``True`` at padding; None takes ``src == pad_id``.
        beam_size: k.
        n_best: hypotheses returned per sentence, best first (<= k).
        alpha: the length penalty's exponent (0.6 in GNMT; 0 ranks by log-probability).
        max_len_a: a of the length limit.
        max_len_b: b of the length limit.
        min_len: tokens generated before EOS is allowed.
        use_cache: incremental decoding; False recomputes the whole prefix every step.
        processors: edit each step's log-probabilities in order; their per-row states follow the beams.
        no_repeat_ngram_size: n > 0 bans repeating any n-gram within a hypothesis; 0 is off.
        repetition_penalty: above 1 discourages tokens a hypothesis already holds; 1 is off.

    Returns:
        A ``SearchResult`` with ``tokens (B, n, T)`` and ``scores (B, n)``.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best ({n_best}) must be between 1 and beam_size ({beam_size})")
    src_key_padding_mask = _padding(model, src, src_key_padding_mask)
    limits = max_lengths(src, src_key_padding_mask, max_len_a, max_len_b).tolist()
    batch, k = src.shape[0], beam_size
    state = model.start_state(src, src_key_padding_mask, repeat=k, use_cache=use_cache)
    beams = _Beams(_initial_scores(batch, k, src.device), src.new_empty(batch * k, 0))
    finished: list[list[_Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    last = src.new_full((batch * k,), model.bos_id)
    repetition = {"no_repeat_ngram_size": no_repeat_ngram_size, "repetition_penalty": repetition_penalty}
    processing = Processing(decoding_processors(processors, **repetition), batch * k, src.device)
    row_limits = torch.tensor(limits, device=src.device).repeat_interleave(k)  # (B * k,)
    for t in range(max(limits)):
        logits, state = model.step(state, last)
        process = functools.partial(processing, beams.tokens, remaining=row_limits - t - 1) if processing else None
        # A sentence's 2k best extensions are among the 2k best of each of its beams.
        per_beam = min(2 * k, logits.shape[-1])
        log_probs, candidates = next_tokens(model, logits, t, min_len, per_beam, process)  # (B * k, 2k) each
        scores, rows, tokens = _top_candidates(beams.scores, log_probs, candidates, 2 * k)  # (B, 2k) each
        _finish_eos(beams, scores, rows, tokens, model.eos_id, finished, done, alpha, k)
        beams, parents = _advance(beams, scores, rows, tokens, model.eos_id, k)
        _finish_at_limit(beams, t + 1, limits, finished, done, alpha)
        done = _settled(beams, t + 1, limits, finished, done, alpha)
        if all(done):
            break
        state = model.reorder_state(state, parents)
        last = beams.tokens[:, -1]
        processing.reorder(parents)
        processing.advance(last)
    return _collect(finished, n_best, model.pad_id)


def _initial_scores(batch: int, k: int, device: torch.device) -> Tensor:
    """``(B, k)``: 0 for the first beam, -inf for the others, so step one expands one beam only."""
    scores = torch.full((batch, k), -math.inf, device=device)
    scores[:, 0] = 0.0
    return scores


def _top_candidates(
    beam_scores: Tensor, log_probs: Tensor, candidates: Tensor, count: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``count`` best extensions per sentence among every beam's ``candidates (B * k, c)``
    with their ``log_probs``: scores, parent rows (b * k + j) and tokens, ``(B, count)`` each."""
    batch, k = beam_scores.shape
    per_beam = candidates.shape[1]
    extended = (beam_scores.reshape(-1, 1) + log_probs).view(batch, k * per_beam)  # (B, k * c)
    scores, flat = extended.topk(count, dim=1)  # (B, count)
    rows = flat // per_beam + torch.arange(batch, device=flat.device)[:, None] * k  # (B, count)
    return scores, rows, candidates.view(batch, k * per_beam).gather(1, flat)


def _finish_eos(
    beams: _Beams,
    scores: Tensor,
    rows: Tensor,
    tokens: Tensor,
    eos_id: int,
    finished: list[list[_Hypothesis]],
    done: list[bool],
    alpha: float,
    k: int,
) -> None:
    """Finish the candidates among each sentence's best k that end in EOS."""
    ends = tokens[:, :k].eq(eos_id) & scores[:, :k].isfinite()  # (B, k)
    length = beams.tokens.shape[1] + 1
    for b, c in ends.nonzero().tolist():
        if done[b]:
            continue
        hyp_tokens = torch.cat([beams.tokens[int(rows[b, c])], tokens[b, c, None]])  # (T,)
        finished[b].append(_Hypothesis(float(scores[b, c]) / length_penalty(length, alpha), hyp_tokens))


def _advance(beams: _Beams, scores: Tensor, rows: Tensor, tokens: Tensor, eos_id: int, k: int) -> tuple[_Beams, Tensor]:
    """The best k candidates per sentence that do not end in EOS become the beams; also their parent rows."""
    count = scores.shape[1]
    rank = tokens.eq(eos_id).long() * count + torch.arange(count, device=tokens.device)  # EOS last
    keep = rank.topk(k, dim=1, largest=False).indices  # (B, k), best first
    parents = rows.gather(1, keep).view(-1)  # (B * k,)
    new_tokens = torch.cat([beams.tokens[parents], tokens.gather(1, keep).view(-1, 1)], dim=1)  # (B * k, T)
    return _Beams(scores.gather(1, keep), new_tokens), parents


def _finish_at_limit(
    beams: _Beams, length: int, limits: list[int], finished: list[list[_Hypothesis]], done: list[bool], alpha: float
) -> None:
    """Sentences that reached their length limit finish their live beams as they are."""
    k = beams.scores.shape[1]
    for b, limit in enumerate(limits):
        if done[b] or length < limit:
            continue
        for j in range(k):
            score = float(beams.scores[b, j])
            if math.isfinite(score):
                finished[b].append(_Hypothesis(score / length_penalty(length, alpha), beams.tokens[b * k + j]))
        done[b] = True


def _settled(
    beams: _Beams, length: int, limits: list[int], finished: list[list[_Hypothesis]], done: list[bool], alpha: float
) -> list[bool]:
    """``done``, and the sentences whose k best finished hypotheses no live beam can beat."""
    k = beams.scores.shape[1]
    best_live = beams.scores.max(dim=1).values.tolist()  # (B,) raw log-probabilities, falling from here
    settled = []
    for b, (is_done, hyps) in enumerate(zip(done, finished)):
        if not is_done and len(hyps) >= k:
            kth = sorted((h.score for h in hyps), reverse=True)[k - 1]
            # score / lp is largest (score <= 0) with the largest lp of a length still reachable.
            penalty = max(length_penalty(length + 1, alpha), length_penalty(limits[b], alpha))
            is_done = best_live[b] / penalty <= kth
        settled.append(is_done)
    return settled


def _collect(finished: list[list[_Hypothesis]], n_best: int, pad_id: int) -> SearchResult:
    """The n best finished hypotheses of every sentence as padded tensors."""
    best = [sorted(hyps, key=lambda h: h.score, reverse=True)[:n_best] for hyps in finished]
    length = max(len(h.tokens) for hyps in best for h in hyps)
    ref = best[0][0].tokens
    tokens = ref.new_full((len(best), n_best, length), pad_id)  # (B, n, T)
    scores = torch.full((len(best), n_best), -math.inf, device=ref.device)
    lengths = ref.new_zeros(len(best), n_best)
    for b, hyps in enumerate(best):
        for i, h in enumerate(hyps):
            tokens[b, i, : len(h.tokens)], scores[b, i], lengths[b, i] = h.tokens, h.score, len(h.tokens)
    return SearchResult(tokens, scores, lengths)
