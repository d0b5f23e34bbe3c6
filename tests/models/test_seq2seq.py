"""RNN seq2seq: packing, the scores inside the decoders against their formulas, overfitting every
decoder, the search protocol (cache vs recompute, beam 1 vs greedy, beam alignments), configs."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnlab.decoding import beam_search, greedy_search
from attnlab.models.rnn_seq2seq import ATTENTION_VARIANTS, RNNSeq2Seq, Seq2SeqConfig
from attnlab.training.config import ConfigError, ModelSection
from attnlab.viz.capture import capture

PAD, BOS, EOS = 0, 2, 3
VOCAB = 12

DECODERS = ATTENTION_VARIANTS
ATTENTIVE = [name for name in DECODERS if name != "none"]


def make(decoder: str = "bahdanau", seed: int = 0, **overrides) -> RNNSeq2Seq:
    torch.manual_seed(seed)
    values = dict(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, embed_dim=8, hidden_size=16, dropout=0.0)
    return RNNSeq2Seq(Seq2SeqConfig(**{**values, **DECODERS[decoder], **overrides}))


def padded_source() -> torch.Tensor:
    """``(3, 6)``: rows of 6, 4 and 2 real tokens (EOS last), padding after."""
    return torch.tensor([[5, 6, 7, 8, 9, EOS], [9, 4, 5, EOS, PAD, PAD], [7, EOS, PAD, PAD, PAD, PAD]])


# --------------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bidirectional_packing_matches_each_row_alone(cell):
    model = make("bahdanau", cell=cell, bidirectional=True, num_layers=2).eval()
    src = padded_source()
    batch = model.encode(src)
    assert torch.all(batch.memory[src.eq(PAD)] == 0)
    for row in range(src.shape[0]):
        length = int(src[row].ne(PAD).sum())
        alone = model.encode(src[row : row + 1, :length])
        torch.testing.assert_close(batch.memory[row, :length], alone.memory[0])
        torch.testing.assert_close(batch.summary[row], alone.summary[0])
        finals = zip(batch.final, alone.final) if cell == "lstm" else [(batch.final, alone.final)]
        for batched, single in finals:
            torch.testing.assert_close(batched[:, row], single[:, 0])


def test_bidirectional_summary_is_last_forward_and_first_backward_state():
    model = make("none", cell="gru", bidirectional=True).eval()
    src = padded_source()
    out = model.encode(src)
    half = model.config.hidden_size // 2
    lengths = src.ne(PAD).sum(dim=1)
    for row, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(out.summary[row, :half], out.memory[row, length - 1, :half])
        torch.testing.assert_close(out.summary[row, half:], out.memory[row, 0, half:])


# --------------------------------------------------------------------------------- formulas


def _one_step(model: RNNSeq2Seq, src: torch.Tensor, token: int = 4):
    source = model.encode(src)
    state = model.decoder.start(source)
    embedded = model.tgt_embed(torch.full((src.shape[0],), token))  # (B, E)
    o, _new_state, weights = model.decoder.step(embedded, state, source)
    return source, state, embedded, o, weights


def _softmax_on_real(scores: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(src.eq(PAD), float("-inf")), dim=-1)


def test_bahdanau_step_matches_eq_5_and_6():
    model = make("bahdanau", cell="gru").double().eval()
    src = padded_source()
    source, state, embedded, o, weights = _one_step(model, src)
    score = model.decoder.attention.score
    s_prev = state.hidden[-1]  # (B, H) s_{t-1}
    w1, w2, b, v = score.query_proj.weight, score.key_proj.weight, score.key_proj.bias, score.v.weight[0]
    energies = torch.tanh((s_prev @ w1.T)[:, None] + source.memory @ w2.T + b) @ v  # (B, S) Eq. 6
    alpha = _softmax_on_real(energies, src)  # Eq. 5
    context = (alpha[:, :, None] * source.memory).sum(dim=1)  # (B, H)
    torch.testing.assert_close(weights, alpha)
    out, _ = model.decoder.rnn(torch.cat([embedded, context], dim=-1)[:, None], state.hidden)  # s_t
    expected = torch.tanh(torch.cat([context, out[:, 0]], dim=-1) @ model.decoder.readout.weight.T)
    torch.testing.assert_close(o, expected)


@pytest.mark.parametrize("score_name", ["dot", "general", "concat"])
def test_luong_step_matches_eq_5_7_8(score_name):
    model = make(f"luong_{score_name}", cell="lstm").double().eval()
    src = padded_source()
    source, state, embedded, o, weights = _one_step(model, src)
    h0 = torch.zeros(src.shape[0], model.config.hidden_size, dtype=torch.float64)  # h~_0
    out, _ = model.decoder.rnn(torch.cat([embedded, h0], dim=-1)[:, None], state.hidden)
    h_t, h_s = out[:, 0], source.memory  # (B, H), (B, S, H)
    score = model.decoder.attention.score
    if score_name == "dot":
        scores = torch.einsum("bh,bsh->bs", h_t, h_s)
    elif score_name == "general":
        scores = torch.einsum("bh,hk,bsk->bs", h_t, score.weight, h_s)
    else:
        hidden = torch.tanh(
            (h_t @ score.query_proj.weight.T)[:, None] + h_s @ score.key_proj.weight.T + score.key_proj.bias
        )
        scores = hidden @ score.v.weight[0]
    alpha = _softmax_on_real(scores, src)  # Eq. 7
    context = torch.einsum("bs,bsh->bh", alpha, h_s)
    h_tilde = torch.tanh(torch.cat([context, h_t], dim=-1) @ model.decoder.readout.weight.T)  # Eq. 5
    torch.testing.assert_close(weights, alpha)
    torch.testing.assert_close(o, h_tilde)


@pytest.mark.parametrize("decoder", ATTENTIVE)
def test_attention_sums_to_one_over_real_tokens_and_is_zero_on_padding(decoder):
    model = make(decoder, cell="gru").eval()
    src = padded_source()
    tgt_in = torch.tensor([[BOS, 4, 5, 6], [BOS, 7, PAD, PAD], [BOS, 8, 9, PAD]])
    with capture(model) as maps:
        model(src, tgt_in)
    assert [m.name for m in maps] == ["rnn_source.0"]
    weights = maps["rnn_source", 0][:, 0]  # (B, T, S)
    assert weights.shape == (3, 4, 6)
    assert torch.all(weights.masked_select(src.eq(PAD)[:, None, :].expand_as(weights)) == 0)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, 4))


@pytest.mark.parametrize("decoder", ["none", "luong_general"])
def test_parallel_teacher_forcing_equals_step_by_step(decoder):
    model = make(decoder, cell="lstm", input_feeding=False if decoder != "none" else None, num_layers=2).eval()
    src, tgt_in = padded_source(), torch.tensor([[BOS, 4, 5], [BOS, 6, 7], [BOS, 8, PAD]])
    source = model.encode(src)
    torch.testing.assert_close(model.decode(tgt_in, source), model.decode(tgt_in, source, parallel=False))


@pytest.mark.parametrize("decoder", ["bahdanau", "luong_concat", "none"])
def test_every_parameter_gets_a_gradient(decoder):
    model = make(decoder, cell="lstm", num_layers=2, dropout=0.1)
    src, tgt = padded_source(), torch.tensor([[BOS, 4, 5], [BOS, 6, 7], [BOS, 8, PAD]])
    logits = model(src, tgt)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------- overfitting

PAIRS = [([5, 6, 7, 8], [8, 7, 6, 5]), ([9, 4, 5], [5, 4, 9, 9]), ([6, 10], [11, 10, 6])]


def _pair_batch():
    src = torch.full((len(PAIRS), 5), PAD)
    tgt = torch.full((len(PAIRS), 5), PAD)
    for row, (s, t) in enumerate(PAIRS):
        src[row, : len(s) + 1] = torch.tensor([*s, EOS])
        tgt[row, : len(t) + 1] = torch.tensor([*t, EOS])
    tgt_in = torch.cat([torch.full((len(PAIRS), 1), BOS), tgt[:, :-1]], dim=1).masked_fill(
        torch.cat([torch.zeros(len(PAIRS), 1, dtype=torch.bool), tgt[:, :-1].eq(PAD)], dim=1), PAD
    )
    return src, tgt_in, tgt


# Each decoder with each cell, and each decoder both bi- and unidirectional.
OVERFIT_CASES = [(d, c, (i + j) % 2 == 0) for i, d in enumerate(DECODERS) for j, c in enumerate(["rnn", "lstm", "gru"])]


@pytest.mark.parametrize("decoder,cell,bidirectional", OVERFIT_CASES)
def test_overfits_a_few_pairs(decoder, cell, bidirectional):
    model = make(decoder, cell=cell, bidirectional=bidirectional, hidden_size=32)
    src, tgt_in, tgt = _pair_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for step in range(300):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(src, tgt_in).transpose(1, 2), tgt, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 24 and loss.item() < 0.05:
            break
    model.eval()
    with torch.no_grad():
        result = greedy_search(model, src, max_len_a=0, max_len_b=6)
    width = tgt.shape[1]
    got = torch.nn.functional.pad(result.tokens, (0, max(0, width - result.tokens.shape[1])), value=PAD)[:, :width]
    assert torch.equal(got, tgt), (loss.item(), result.tokens)


# --------------------------------------------------------------------------------- search


@pytest.mark.parametrize(
    "decoder,cell", [*list(itertools.product(ATTENTIVE, ["lstm"])), ("bahdanau", "gru"), ("luong_dot", "rnn")]
)
def test_beam_one_equals_greedy_and_cache_equals_recompute(decoder, cell):
    model = make(decoder, cell=cell, num_layers=2).eval()
    src = padded_source()
    with torch.no_grad():
        greedy = greedy_search(model, src)
        recompute = greedy_search(model, src, use_cache=False)
        beam = beam_search(model, src, beam_size=1, alpha=0.0)
    assert torch.equal(greedy.tokens, recompute.tokens)
    torch.testing.assert_close(greedy.scores, recompute.scores)
    assert torch.equal(beam.tokens[:, 0, : greedy.tokens.shape[1]], greedy.tokens)
    torch.testing.assert_close(beam.scores[:, 0], greedy.scores)


@pytest.mark.parametrize("decoder", ATTENTIVE)
def test_captured_map_is_the_attention_of_each_decoding_step(decoder):
    """The map captured over teacher forcing equals what the decoder's ``step`` attends, step by step,
    on the hypotheses a beam search returns."""
    model = make(decoder, cell="lstm", seed=3).eval()
    src = padded_source()
    with torch.no_grad():
        result = beam_search(model, src, beam_size=3, n_best=1, alpha=0.6, max_len_b=5)
        tokens = result.tokens[:, 0]  # (B, T)
        tgt_in = torch.cat([torch.full((src.shape[0], 1), BOS), tokens[:, :-1]], dim=1)  # (B, T)
        with capture(model) as maps:
            model(src, tgt_in)
        source = model.encode(src)
        state, steps = model.decoder.start(source), []
        for t in range(tgt_in.shape[1]):
            _, state, weights = model.decoder.step(model.tgt_embed(tgt_in[:, t]), state, source)  # (B, S)
            steps.append(weights)
    torch.testing.assert_close(maps["rnn_source", 0][:, 0], torch.stack(steps, dim=1))


def test_a_model_without_attention_has_nothing_to_capture():
    model = make("none").eval()
    with pytest.raises(ValueError, match="computes no attention to capture"), capture(model):
        pass


# --------------------------------------------------------------------------------- configs


def test_config_round_trip_and_luong_defaults():
    config = Seq2SeqConfig.from_dict(dict(src_vocab_size=9, tgt_vocab_size=9, attention="luong"))
    assert (config.score, config.input_feeding) == ("general", True)
    assert Seq2SeqConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "values,pattern",
    [
        (dict(num_heads=4), "num_heads.*Transformer"),
        (dict(norm_first=True), "norm_first.*Transformer"),
        (dict(hidden_sise=8), "hidden_sise"),
        (dict(hidden_size="8"), "hidden_size"),
        (dict(cell="lstmm"), "lstmm"),
        (dict(attention="bahdanau", score="dot"), "score='dot'"),
        (dict(attention="none", input_feeding=True), "input_feeding"),
        (dict(tie_embeddings=True, embed_dim=8, hidden_size=16), r"embed_dim \(8\).*hidden_size \(16\)"),
        (dict(bidirectional=True, hidden_size=15), r"hidden_size \(15\)"),
    ],
)
def test_config_errors_name_the_key_or_value(values, pattern):
    with pytest.raises((KeyError, TypeError, ValueError), match=pattern):
        Seq2SeqConfig.from_dict(dict(src_vocab_size=9, tgt_vocab_size=9, **values))


def test_run_config_accepts_rnn_and_names_transformer_keys():
    section = ModelSection.from_dict({"type": "rnn", "attention": "luong", "score": "dot"})
    config = section.resolve(src_vocab_size=9, tgt_vocab_size=9)
    assert isinstance(config, Seq2SeqConfig) and config.score == "dot"
    with pytest.raises(ConfigError, match="model.num_heads"):
        ModelSection.from_dict({"type": "rnn", "num_heads": 4})


def test_the_split_modules_keep_every_public_name_importable_from_rnn_seq2seq():
    from attnlab.models import rnn_config, rnn_decoders, rnn_encoder, rnn_seq2seq

    for module in (rnn_config, rnn_encoder, rnn_decoders):
        for name in module.__all__:
            assert getattr(rnn_seq2seq, name) is getattr(module, name), name
    assert {"RNNSeq2Seq", "Seq2SeqSearchState", "Seq2SeqConfig", "ATTENTION_VARIANTS"} <= set(rnn_seq2seq.__all__)
