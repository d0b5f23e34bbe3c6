"""Logits processors: the UTF-8 constraint against Python's UTF-8 decoder and on random models,
the repetition options against Hugging Face's processors and a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from attnlab.data.generated_pairs import build_generated_pairs
from attnlab.data.tokenizer import TokenizerConfig, TranslationTokenizer
from attnlab.decoding import NoRepeatNGram, RepetitionPenalty, Utf8Constraint, beam_search, greedy_search
from attnlab.decoding.constraints import Processing
from attnlab.inference import Translator
from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.training.data_config import TextDataConfig

BYTES = Utf8Constraint(torch.arange(-4, 256))  # ids 0-3 are specials (EOS is 3), id 4 + b is byte b
EOS = 3
LONG = torch.tensor([100])  # remaining tokens: enough for any character


def utf8_prefix_ok(data: bytes) -> bool:
    """Python's own answer: is ``data`` the start of some valid UTF-8 text?

    Asked of the strict whole-text decoder: ``data`` itself, or ``data`` completed by up to three
    continuation bytes. (CPython's incremental decoder is no oracle here: it accepts an open
    ``ED A0``, the start of a surrogate, as a prefix.) The second byte of a character is the only
    one with a range narrower than 0x80-0xBF, so the ends of those ranges stand for all of them.
    """
    firsts = (0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF)
    completions = [b""] + [bytes([c]) + b"\x80" * extra for c in firsts for extra in range(3)]
    for tail in completions:
        try:
            (data + tail).decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            continue
        return True
    return False


def state_after(constraint: Utf8Constraint, ids: list[int]) -> torch.Tensor:
    state = constraint.start(1, torch.device("cpu"))
    for i in ids:
        state = constraint.advance(state, torch.tensor([i]))
    return state


def byte_runs_decode(pieces: list[str]) -> bool:
    """Every run of byte-fallback pieces is valid, complete UTF-8."""
    runs, run = [], []
    for piece in [*pieces, ""]:
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            run.append(int(piece[3:5], 16))
        elif run:
            runs.append(bytes(run))
            run = []
    try:
        [r.decode("utf-8", errors="strict") for r in runs]
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=0, max_size=6), cut=st.integers(min_value=0, max_value=24))
@example(text="\ud000", cut=1)  # an open ED: A0-BF would start a surrogate
def test_a_byte_is_allowed_exactly_when_pythons_decoder_accepts_the_prefix(text, cut):
    prefix = text.encode("utf-8")[:cut]
    allowed = BYTES.allowed(state_after(BYTES, [4 + b for b in prefix]), LONG)[0]  # (V,)
    expected = torch.tensor([utf8_prefix_ok(prefix + bytes([b])) for b in range(256)])
    assert torch.equal(allowed[4:], expected)
    complete = prefix.decode("utf-8", errors="ignore").encode("utf-8") == prefix
    assert bool(allowed[EOS]) is complete  # EOS (and any text piece) only between characters


@pytest.mark.parametrize("lead, need", [(0xC3, 1), (0xE3, 2), (0xF0, 3)])
def test_a_character_that_cannot_end_before_the_length_limit_is_not_started(lead, need):
    state = BYTES.start(1, torch.device("cpu"))
    assert not bool(BYTES.allowed(state, torch.tensor([need - 1]))[0, 4 + lead])
    assert bool(BYTES.allowed(state, torch.tensor([need]))[0, 4 + lead])


def test_pieces_of_a_tokenizer_map_to_their_bytes():
    constraint = Utf8Constraint.from_pieces(["<pad>", "<0xE3>", "▁the", "<0x0A>", "<0xZZ>"])
    assert constraint.byte_of.tolist() == [-1, 0xE3, -1, 0x0A, -1]


@pytest.fixture(scope="module")
def tokenizer() -> TranslationTokenizer:
    pairs = build_generated_pairs(300, seed=1) + [("Insert a table.", "表を挿入します。")] * 5
    return TranslationTokenizer.train(pairs, TokenizerConfig(vocab_size=400))


def random_model(seed: int, vocab: int) -> Transformer:
    """A random 1+1-layer Transformer: about two thirds of its pieces are bytes, so it spells many."""
    torch.manual_seed(seed)
    config = dict(d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32)
    config = TransformerConfig.from_dict(dict(src_vocab_size=vocab, tgt_vocab_size=vocab, dropout=0.0, **config))
    return Transformer(config).eval()


def random_sources(seed: int, vocab: int) -> torch.Tensor:
    return torch.randint(4, vocab, (3, 5), generator=torch.Generator().manual_seed(seed))  # (B, S)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**16), beam=st.sampled_from([1, 3]))
def test_random_models_only_ever_spell_valid_utf8(tokenizer, seed, beam):
    target = tokenizer.target
    model = random_model(seed, target.vocab_size)
    src = random_sources(seed, target.vocab_size)
    limits = {"max_len_a": 0.0, "max_len_b": 12, "processors": [Utf8Constraint.from_tokenizer(target)]}
    if beam == 1:
        rows = greedy_search(model, src, **limits).tokens.tolist()
    else:
        rows = beam_search(model, src, beam_size=beam, n_best=beam, **limits).tokens.flatten(0, 1).tolist()
    for row in rows:
        row = [i for i in row if i not in (0, EOS)]
        assert byte_runs_decode(target.id_to_piece(row)), target.id_to_piece(row)
        assert "\ufffd" not in target.decode([row])[0]


def test_unconstrained_random_models_do_spell_broken_bytes(tokenizer):
    """The property above is not vacuous: the same models without the constraint break UTF-8."""
    target = tokenizer.target
    broken = 0
    for seed in range(4):
        tokens = greedy_search(random_model(seed, target.vocab_size), random_sources(seed, target.vocab_size))
        broken += sum("\ufffd" in text for text in target.decode(tokens.tokens.tolist()))
    assert broken > 0


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**16), beam=st.sampled_from([1, 2]))
def test_translator_output_never_holds_a_replacement_character(tokenizer, seed, beam):
    model = random_model(seed, tokenizer.target.vocab_size)
    translator = Translator(model, tokenizer, TextDataConfig(max_decode_len_a=0.0, max_decode_len_b=16))
    texts = ["March 15, 2024", "forty-two", "表を挿入します。"]
    assert not any("\ufffd" in text for text in translator.translate(texts, beam=beam))


# ---------------------------------------------------------------------------------------------
# Repetition
# ---------------------------------------------------------------------------------------------


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = RepetitionPenalty(2.0)(None, torch.tensor([[0, 1, 1]]), logits, LONG)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # seen twice, penalised once


@pytest.mark.parametrize("penalty", [0.5, 1.3, 2.0])
def test_repetition_penalty_is_hugging_faces(penalty):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 30, generator=generator)
    generated = torch.randint(0, 30, (5, 9), generator=generator)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(generated, logits.clone())
    torch.testing.assert_close(RepetitionPenalty(penalty)(None, generated, logits, LONG), expected, rtol=0, atol=0)


def test_no_repeat_ngram_by_hand():
    generated = torch.tensor([[5, 6, 7, 5, 6]])  # 2-grams 5 6, 6 7, 7 5: after ... 6, 7 is banned
    out = NoRepeatNGram(2)(None, generated, torch.zeros(1, 9), LONG)
    assert out[0].isinf().nonzero().flatten().tolist() == [7]
    out = NoRepeatNGram(3)(None, generated, torch.zeros(1, 9), LONG)  # 3-gram 5 6 7 exists: 7 banned
    assert out[0].isinf().nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("length", [0, 2, 7, 20])
def test_no_repeat_ngram_is_hugging_faces(size, length):
    generator = torch.Generator().manual_seed(size * 100 + length)
    logits = torch.randn(6, 5, generator=generator)
    generated = torch.randint(0, 5, (6, length), generator=generator)  # 5 tokens: many repeats
    expected = NoRepeatNGramLogitsProcessor(size)(generated, logits.clone())
    assert torch.equal(NoRepeatNGram(size)(None, generated, logits, LONG), expected)


@pytest.mark.parametrize("bad", [{"size": 0}, {"size": -2}])
def test_bad_sizes_and_penalties_name_the_value(bad):
    with pytest.raises(ValueError, match=str(bad["size"])):
        NoRepeatNGram(bad["size"])
    with pytest.raises(ValueError, match=r"repetition_penalty \(0\)"):
        RepetitionPenalty(0)


def test_a_processor_that_leaves_a_row_nothing_is_skipped_for_that_row():
    logits = torch.zeros(2, 260)
    processing = Processing([BYTES, NoRepeatNGram(1)], rows=2, device=torch.device("cpu"))
    generated = torch.tensor([[4 + b for b in range(0x80, 0xC0)], [0] * 64])  # row 0 used every continuation byte
    processing.advance(torch.tensor([4 + 0xC3, 5]))  # row 0 opened a 2-byte character
    out = processing(generated, logits, LONG.repeat(2))
    assert out[0].isfinite().nonzero().flatten().tolist() == [4 + b for b in range(0x80, 0xC0)]  # UTF-8 wins
    assert not bool(out[1, 0].isfinite()) and bool(out[1, 1].isfinite())  # row 1: token 0 banned


def reference_greedy(model, src, hf_processor, steps):
    """Greedy decoding of one sentence by hand, recomputing the prefix, a Hugging Face processor on the
    log-probabilities (as its beam search applies them)."""
    ids = []
    with torch.no_grad():
        for _ in range(steps):
            log_probs = model(src, torch.tensor([[model.bos_id, *ids]]))[:, -1].log_softmax(-1)  # (1, V)
            log_probs = hf_processor(torch.tensor([ids], dtype=torch.long), log_probs)
            log_probs[:, model.pad_id] = -math.inf
            ids.append(int(log_probs.argmax()))
            if ids[-1] == model.eos_id:
                break
    return ids


@pytest.mark.parametrize(
    "option, hf_processor",
    [
        ({"no_repeat_ngram_size": 2}, NoRepeatNGramLogitsProcessor(2)),
        ({"repetition_penalty": 1.5}, RepetitionPenaltyLogitsProcessor(1.5)),
    ],
)
def test_greedy_search_with_an_option_is_greedy_with_hugging_faces_processor(option, hf_processor):
    model = random_model(3, 40)
    src = random_sources(3, 40)[:1]
    result = greedy_search(model, src, max_len_a=0.0, max_len_b=15, **option).tokens[0].tolist()
    expected = reference_greedy(model, src, hf_processor, 15)
    assert result[: len(expected)] == expected and set(result[len(expected) :]) <= {model.pad_id}


@pytest.mark.parametrize("size", [2, 3])
def test_beam_hypotheses_never_repeat_an_ngram(size):
    model = random_model(5, 12)  # a small vocabulary repeats itself without the ban
    rows = (
        beam_search(
            model, random_sources(5, 12), beam_size=3, n_best=3, max_len_a=0.0, max_len_b=20, no_repeat_ngram_size=size
        )
        .tokens.flatten(0, 1)
        .tolist()
    )
    for row in rows:
        row = [i for i in row if i != 0]
        ngrams = [tuple(row[i : i + size]) for i in range(len(row) - size + 1)]
        assert len(ngrams) == len(set(ngrams)), row


def test_the_options_are_off_by_default():
    model = random_model(7, 30)
    src = random_sources(7, 30)
    plain = greedy_search(model, src)
    off = greedy_search(model, src, no_repeat_ngram_size=0, repetition_penalty=1.0, processors=())
    assert torch.equal(plain.tokens, off.tokens) and torch.equal(plain.scores, off.scores)


def test_the_translator_takes_the_runs_repetition_options_unless_told_otherwise(tokenizer):
    """The data config's options are the translator's defaults (so training-time evaluation and
    ``attnlab evaluate`` decode as the run says); an explicit argument wins."""
    model = random_model(11, tokenizer.target.vocab_size)
    texts = ["March 15, 2024", "forty-two", "Insert a table."]
    data = {"max_decode_len_a": 0.0, "max_decode_len_b": 24}
    plain = Translator(model, tokenizer, TextDataConfig(**data))
    ruled = Translator(model, tokenizer, TextDataConfig(**data, no_repeat_ngram_size=1))
    unique = plain.translate(texts, no_repeat_ngram_size=1)
    assert ruled.translate(texts) == unique != plain.translate(texts)
    assert ruled.translate(texts, no_repeat_ngram_size=0) == plain.translate(texts)
