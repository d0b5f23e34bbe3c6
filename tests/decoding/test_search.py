"""Greedy and beam search: cache vs recompute, batch vs one by one, beam 1 vs greedy, a known-answer model."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.decoding import beam_search, greedy_search, length_penalty
from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.viz.capture import capture

PAD, BOS, EOS = 0, 2, 3


class EosBiased:
    """A Transformer whose EOS logit is raised, so hypotheses end at different steps; records logits."""

    def __init__(self, model: Transformer, bias: float) -> None:
        self.model, self.bias, self.logits = model, bias, []
        self.pad_id, self.bos_id, self.eos_id = model.pad_id, model.bos_id, model.eos_id

    def start_state(self, src, src_key_padding_mask=None, *, repeat=1, use_cache=True):
        return self.model.start_state(src, src_key_padding_mask, repeat=repeat, use_cache=use_cache)

    def step(self, state, tokens):
        logits, state = self.model.step(state, tokens)
        logits = logits.clone()
        logits[:, EOS] += self.bias
        self.logits.append(logits)
        return logits, state

    def reorder_state(self, state, index):
        return self.model.reorder_state(state, index)


class Markov:
    """A model-agnostic check of the protocol: p(y_t | y_<t) depends on y_{t-1} only.

    From BOS: a 0.55, b 0.45; after a: EOS 0.35, a 0.33, b 0.32; after b: EOS 0.9, a 0.05, b 0.05.
    Greedy takes a, EOS (p = 0.1925); the best sequence is b, EOS (p = 0.405).
    """

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self) -> None:
        probs = torch.full((6, 6), 1e-9)
        probs[BOS, 4], probs[BOS, 5] = 0.55, 0.45
        probs[4, EOS], probs[4, 4], probs[4, 5] = 0.35, 0.33, 0.32
        probs[5, EOS], probs[5, 4], probs[5, 5] = 0.9, 0.05, 0.05
        probs[EOS, EOS] = 1.0
        self.table = probs.log()
        self.steps = 0

    def start_state(self, src, src_key_padding_mask=None, *, repeat=1, use_cache=True):
        return torch.arange(src.shape[0]).repeat_interleave(repeat)  # the sentence of each row

    def step(self, state, tokens):
        self.steps += 1
        return self.table[tokens], state

    def reorder_state(self, state, index):
        assert torch.equal(state[index], state), "rows moved to another sentence"
        return state[index]


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig.from_dict(
        dict(
            src_vocab_size=21,
            tgt_vocab_size=21,
            d_model=32,
            num_heads=4,
            dim_feedforward=64,
            num_encoder_layers=2,
            num_decoder_layers=2,
            dropout=0.0,
            share_embeddings=True,
        )
    )
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def src() -> torch.Tensor:
    torch.manual_seed(1)
    lengths = [7, 3, 5, 1]
    rows = [torch.cat([torch.randint(4, 21, (n - 1,)), torch.tensor([EOS])]) for n in lengths]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=PAD)  # (4, 7)


def decode(search, model, src, **kwargs):
    with torch.no_grad():
        return search(model, src, max_len_a=1.0, max_len_b=3, **kwargs)


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_cached_equals_uncached(model, src, search):
    cached, uncached = EosBiased(model, 2.0), EosBiased(model, 2.0)
    a = decode(search, cached, src, use_cache=True)
    b = decode(search, uncached, src, use_cache=False)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)
    assert len(cached.logits) == len(uncached.logits)
    for step_a, step_b in zip(cached.logits, uncached.logits):
        torch.testing.assert_close(step_a, step_b, atol=1e-5, rtol=1e-5)


def test_long_beam_search_through_plain_steps_equals_recomputing(model, src, monkeypatch):
    """60 steps of beam 4 on the plain step path: every step's queries read the sentence's key
    pool through the ancestry's mask, and the pools are compacted along the way."""
    from attnlab.inference.beam_cache import BeamAncestry
    from attnlab.inference.engine import DecodingEngine

    compactions = []
    compact = BeamAncestry._compact
    monkeypatch.setattr(BeamAncestry, "_compact", lambda self: compact(self) or compactions.append(self.generation))
    kwargs = dict(beam_size=4, n_best=4, max_len_a=0.0, max_len_b=60, min_len=60)
    with torch.no_grad():
        cached = beam_search(DecodingEngine(model, fused_steps=False), src, **kwargs)  # the pools
        uncached = beam_search(model, src, use_cache=False, **kwargs)
    assert max(compactions) > 1
    assert torch.equal(cached.tokens, uncached.tokens)
    torch.testing.assert_close(cached.scores, uncached.scores, atol=1e-5, rtol=1e-5)


def test_beam_of_one_equals_greedy(model, src):
    biased = EosBiased(model, 2.0)
    greedy = decode(greedy_search, biased, src)
    beam = decode(beam_search, biased, src, beam_size=1, alpha=0.0)
    assert torch.equal(beam.tokens[:, 0], greedy.tokens)
    torch.testing.assert_close(beam.scores[:, 0], greedy.scores)


@pytest.mark.parametrize(("search", "kwargs"), [(greedy_search, {}), (beam_search, {"beam_size": 3, "n_best": 2})])
def test_batched_equals_one_by_one(model, src, search, kwargs):
    biased = EosBiased(model, 2.0)
    batched = decode(search, biased, src, **kwargs)
    assert batched.lengths.min() < batched.lengths.max()  # some end early, some at their limit
    for b in range(src.shape[0]):
        row = src[b : b + 1, : int(src[b].ne(PAD).sum())]  # no padding at all
        alone = decode(search, biased, row, **kwargs)
        width = alone.tokens.shape[-1]
        assert torch.equal(batched.tokens[b, ..., :width], alone.tokens[0])
        assert torch.all(batched.tokens[b, ..., width:] == PAD)
        torch.testing.assert_close(batched.scores[b], alone.scores[0], atol=1e-5, rtol=1e-5)


def test_the_steps_attend_as_a_teacher_forced_run_on_the_result(model, src):
    """What SearchResult promises: capturing ``model(src, tgt_in)`` on the returned tokens gives the
    source attention the cached decoding steps computed, row t the step that chose token t."""
    with capture(model, kinds="cross") as during:
        result = greedy_search(model, src, max_len_a=1.0, max_len_b=3)
    tgt_in = torch.cat([torch.full_like(result.tokens[:, :1], BOS), result.tokens[:, :-1]], dim=1)  # (B, T)
    with torch.no_grad(), capture(model, kinds="cross") as after:
        model(src, tgt_in)
    for layer in after.layers("cross"):
        steps = torch.cat([m.weights for m in during.select("cross", layer)], dim=2)  # T x (B, H, 1, S) -> (B, H, T, S)
        for b, length in enumerate(result.lengths.tolist()):
            torch.testing.assert_close(steps[b, :, :length], after["cross", layer][b, :, :length], atol=1e-5, rtol=1e-4)


def test_lengths_follow_min_and_max(model, src):
    with torch.no_grad():
        result = greedy_search(EosBiased(model, 50.0), src, max_len_a=0.0, max_len_b=6, min_len=6)
        limited = greedy_search(model, src, max_len_a=2.0, max_len_b=1)
        beam = beam_search(EosBiased(model, 50.0), src, beam_size=2, max_len_a=0.0, max_len_b=6, min_len=6)
    assert result.tokens.shape == (4, 6) and torch.all(result.tokens != EOS)  # EOS suppressed: 6 tokens each
    assert beam.tokens.shape == (4, 1, 6) and torch.all(beam.lengths == 6)
    assert limited.lengths.tolist() == [15, 7, 11, 3]  # floor(2 |x| + 1) without EOS from a random model


@pytest.mark.parametrize("beam_size", [2, 4])  # 4: 2k = 8 candidates a beam from a vocabulary of 6
def test_beam_finds_what_greedy_misses_and_ranks_n_best(beam_size):
    src = torch.tensor([[4, 3], [5, 3]])
    greedy = greedy_search(Markov(), src)
    assert greedy.tokens.tolist() == [[4, EOS], [4, EOS]]
    torch.testing.assert_close(greedy.scores, torch.tensor([math.log(0.55 * 0.35)] * 2))
    beam = beam_search(Markov(), src, beam_size=beam_size, n_best=2, alpha=0.0)
    assert beam.tokens[0].tolist() == [[5, EOS], [4, EOS]]
    torch.testing.assert_close(beam.scores[0], torch.tensor([math.log(0.405), math.log(0.55 * 0.35)]))
    assert beam.lengths.tolist() == [[2, 2], [2, 2]]


class LateEnding(Markov):
    """p(y_t | y_{t-1}) where the best sequence, a c d EOS (p = 0.6 * 0.99^2 = 0.588), ends late
    and two poor ones end early: b EOS (0.36) at step 2, b b EOS (0.4 * 0.06 * 0.9 = 0.0216) at
    step 3, both among a beam of 2's best candidates when they appear."""

    def __init__(self) -> None:
        super().__init__()
        a, b, c, d = 4, 5, 6, 7
        probs = torch.full((8, 8), 1e-9)
        probs[BOS, a], probs[BOS, b] = 0.6, 0.4
        probs[a, c], probs[a, EOS] = 0.99, 0.01
        probs[b, EOS], probs[b, b], probs[b, a] = 0.9, 0.06, 0.04
        probs[c, d], probs[c, EOS] = 0.99, 0.01
        probs[d, EOS] = 1.0
        probs[EOS, EOS] = 1.0
        self.table = probs.log()


def test_beam_does_not_stop_while_a_live_beam_can_still_win():
    src = torch.tensor([[4, 3]])
    greedy = greedy_search(LateEnding(), src)
    beam = beam_search(LateEnding(), src, beam_size=2, n_best=2, alpha=0.0)
    assert greedy.tokens[0].tolist() == [4, 6, 7, EOS]
    # Two finished hypotheses after step 3 (b EOS, b b EOS), but the live a c d may still win: it does.
    assert beam.tokens[0, 0].tolist() == [4, 6, 7, EOS]
    torch.testing.assert_close(beam.scores[0, 0], torch.tensor(math.log(0.6 * 0.99**2)))
    assert beam.tokens[0, 1, :2].tolist() == [5, EOS]


def test_length_penalty_and_early_finish():
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 0.6) == pytest.approx(2.0**0.6)
    markov = Markov()
    result = beam_search(markov, torch.tensor([[4, 3]]), beam_size=2, alpha=0.6, max_len_b=50)
    assert markov.steps < 10  # all beams ended long before the limit
    torch.testing.assert_close(result.scores[0, 0], torch.tensor(math.log(0.405) / length_penalty(2, 0.6)))


def test_bad_arguments_are_named(model, src):
    with pytest.raises(ValueError, match=r"n_best \(3\)"):
        beam_search(model, src, beam_size=2, n_best=3)
    with pytest.raises(TypeError, match="'attention'"):  # maps come from attnlab.capture now
        greedy_search(model, src, attention="last")


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_results_are_ordinary_tensors_that_training_can_use(model, src, search):
    result = search(model, src)  # the search itself runs in inference mode
    assert not any(t.is_inference() for t in (result.tokens, result.scores, result.lengths))
    tokens = result.tokens if result.tokens.ndim == 2 else result.tokens[:, 0]
    try:
        logits = model(src, tokens.clamp(min=BOS))  # e.g. back-translation: train on the search output
        logits.sum().backward()
        grad = model.tgt_embed.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
