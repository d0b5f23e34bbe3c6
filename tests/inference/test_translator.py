"""attnlab.load on a tiny trained translation run: the Translator against the CLI and against
greedy / beam search run on the model by hand."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from sacrebleu.metrics import CHRF

import attnlab
from attnlab.cli.main import main
from attnlab.data import BOS_ID, EOS_ID
from attnlab.decoding import Utf8Constraint, beam_search, greedy_search
from attnlab.decoding.constraints import decoding_processors
from attnlab.decoding.nbest import select_hypothesis
from attnlab.inference import Translation, Translator
from attnlab.models.transformer import Transformer
from attnlab.training import CheckpointError, ConfigError
from attnlab.training.metrics import is_repetitive, word_tokenizer
from attnlab.viz.capture import CaptureSpec

TEXTS = ["March 15, 2024", "forty-two", "May 1, 2020", "seven hundred and twelve"]


def reference(translator: Translator, text: str, beam: int = 1, alpha: float = 0.6):
    """One sentence searched on the model itself, unbatched: (translation, best tokens, source ids (1, S))."""
    data, tokenizer = translator.data, translator.tokenizer
    src = torch.tensor([tokenizer.source.encode([text])[0][: data.max_length]])  # (1, S)
    limits = {"max_len_a": data.max_decode_len_a, "max_len_b": data.max_decode_len_b}
    limits["processors"] = [Utf8Constraint.from_tokenizer(tokenizer.target)]  # as the translator decodes
    model = translator.model.eval()
    if beam == 1:
        tokens = greedy_search(model, src, **limits).tokens[0]
    else:
        tokens = beam_search(model, src, beam_size=beam, alpha=alpha, **limits).tokens[0, 0]
    tokens = tokens[tokens.ne(model.pad_id)]  # (T,)
    return tokenizer.target.decode([tokens.tolist()])[0], tokens, src


def explicit_maps(model, src: torch.Tensor, tokens: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
    """Every attention site's per-head weights ``(1, H, Lq, Lk)`` for ``model(src, tgt_in)`` teacher-forced
    on ``tokens (T,)``, from calling each module again as torch's ``need_weights=True, average_attn_weights=False``."""
    tgt_in = torch.cat([torch.tensor([BOS_ID]), tokens[:-1]])[None]  # (1, T): BOS y_1 .. y_{T-1}
    calls, handles = {}, []

    def recorder(key):
        def record(module, args, kwargs, output) -> None:  # the first call of each site: the full sequences
            calls.setdefault(key, (module, args, kwargs))

        return record

    for kind, layer, module in model.attention_sites():
        handles.append(module.register_forward_hook(recorder((kind, layer)), with_kwargs=True))
    try:
        with torch.no_grad():
            model(src, tgt_in)
            return {
                key: mod(*args, **{**kwargs, "need_weights": True, "average_attn_weights": False})[1]
                for key, (mod, args, kwargs) in calls.items()
            }
    finally:
        for handle in handles:
            handle.remove()


def test_load_gives_a_translator_that_translates_as_the_cli(translation_run, capsys):
    translator = attnlab.load(translation_run)
    assert isinstance(translator, Translator)
    args = [arg for text in TEXTS for arg in ("--text", text)]
    assert main(["translate", str(translation_run), *args]) == 0
    assert capsys.readouterr().out.splitlines() == translator.translate(TEXTS)
    assert main(["translate", str(translation_run), "--beam", "3", *args]) == 0
    assert capsys.readouterr().out.splitlines() == translator.translate(TEXTS, beam=3)


@pytest.mark.parametrize("beam", [1, 3])
def test_a_sentence_translates_as_the_search_on_the_model_itself(translation_run, beam):
    translator = attnlab.load(translation_run)
    for text in TEXTS:
        expected, _, _ = reference(translator, text, beam)
        assert translator.translate(text, beam=beam) == expected


def test_the_length_penalty_reaches_beam_search(untrained, monkeypatch):
    # alpha 0 ranks by log-probability, 3 strongly favours long hypotheses (GNMT, Wu et al., 2016).
    for alpha in (0.0, 3.0):
        assert untrained.translate(TEXTS[:2], beam=3, length_penalty=alpha) == [
            reference(untrained, text, 3, alpha)[0] for text in TEXTS[:2]
        ]
    seen = []

    def spy(*args, alpha, **kwargs):
        seen.append(alpha)
        return beam_search(*args, alpha=alpha, **kwargs)

    monkeypatch.setattr("attnlab.inference.translator.beam_search", spy)
    untrained.translate(TEXTS[:1], beam=3)
    untrained.translate(TEXTS[:1], beam=3, length_penalty=1.5)
    assert seen == [untrained.data.length_penalty, 1.5] == [0.6, 1.5]
    with pytest.raises(ValueError, match=r"length_penalty \(-1\) must be >= 0"):
        untrained.translate(TEXTS, beam=3, length_penalty=-1)


def nbest(translator: Translator, text: str, beam: int) -> tuple[list[str], list[float]]:
    """The beam's finished hypotheses of one sentence searched on the model itself: (texts, scores)."""
    data, tokenizer = translator.data, translator.tokenizer
    src = torch.tensor([tokenizer.source.encode([text])[0][: data.max_length]])  # (1, S)
    result = beam_search(
        translator.model.eval(),
        src,
        beam_size=beam,
        alpha=data.length_penalty,
        n_best=beam,
        max_len_a=data.max_decode_len_a,
        max_len_b=data.max_decode_len_b,
        processors=decoding_processors(
            [Utf8Constraint.from_tokenizer(tokenizer.target)],
            no_repeat_ngram_size=data.no_repeat_ngram_size,
            repetition_penalty=data.repetition_penalty,
        ),
    )
    rows = [[t for t in row if t not in (translator.model.pad_id, EOS_ID)] for row in result.tokens[0].tolist()]
    return tokenizer.target.decode(rows), result.scores[0].tolist()


def test_the_n_best_choices_pick_what_select_hypothesis_picks(untrained, monkeypatch):
    # No 3-gram repeated: the untrained model's n-best lists differ beyond their first pieces.
    data = dataclasses.replace(untrained.data, no_repeat_ngram_size=3)
    untrained = Translator(untrained.model, untrained.tokenizer, data)
    words = word_tokenizer(data.corpus.target_lang)
    chrf = CHRF()
    lists = {text: nbest(untrained, text, beam=4) for text in TEXTS}
    for text, (texts, scores) in lists.items():
        assert untrained.translate(text, beam=4) == texts[0]
        reject = lambda t: is_repetitive(words(t))
        choice = texts[select_hypothesis(texts, scores, reject=reject)]
        assert not reject(choice)  # so no second search
        assert untrained.translate(text, beam=4, avoid_repetitive=True) == choice
        utility = lambda h, r: chrf.sentence_score(h, [r]).score
        assert untrained.translate(text, beam=4, mbr=True) == texts[select_hypothesis(texts, scores, utility=utility)]
    # A rule that rejects each sentence's best hypothesis moves every choice to the second best.
    firsts = {texts[0].replace(" ", "") for texts, _ in lists.values()}
    monkeypatch.setattr("attnlab.inference.translator.is_repetitive", lambda tokens: "".join(tokens) in firsts)
    assert untrained.translate(TEXTS, beam=4, avoid_repetitive=True) == [lists[t][0][1] for t in TEXTS]
    # The data config's key is the default.
    configured = Translator(untrained.model, untrained.tokenizer, dataclasses.replace(data, avoid_repetitive=True))
    assert configured.translate(TEXTS, beam=4) == [lists[t][0][1] for t in TEXTS]


@pytest.mark.parametrize("beam", [1, 4])
def test_a_translation_still_degenerate_is_searched_again_without_repeated_2_grams(untrained, beam):
    # With no n-gram rule, every hypothesis of the untrained model repeats one piece.
    assert untrained.data.no_repeat_ngram_size == 0
    words = word_tokenizer(untrained.data.corpus.target_lang)
    loops = untrained.translate(TEXTS, beam=beam)
    assert all(is_repetitive(words(text)) for text in loops)
    again = untrained.translate(TEXTS, beam=beam, avoid_repetitive=True)
    assert again == untrained.translate(TEXTS, beam=beam, no_repeat_ngram_size=2, avoid_repetitive=beam > 1)
    assert again != loops
    assert not any(is_repetitive(words(text)) for text in again)


def test_a_string_gives_one_result_and_a_list_one_per_line(translation_run):
    translator = attnlab.load(translation_run)
    single = translator.translate(TEXTS[0])
    assert isinstance(single, str)
    assert translator.translate([TEXTS[0]]) == [single]
    assert translator.translate([]) == []


@pytest.fixture
def untrained(translation_run) -> Translator:
    """An untrained Transformer of the run's shape with the run's tokenizer: the trained tiny model says
    EOS at once, this one talks up to the length limit, and beam search and greedy choose differently."""
    loaded = attnlab.load(translation_run)
    torch.manual_seed(1)
    return Translator(Transformer(loaded.model.config).eval(), loaded.tokenizer, loaded.data)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_attention_gives_the_maps_of_the_returned_hypothesis(translation_run, request, which, beam):
    """Batched with longer sentences (padding), the maps of each sentence are those of the model
    run alone, teacher-forced on the hypothesis that the search on the model itself returns."""
    translator = attnlab.load(translation_run) if which == "trained" else request.getfixturevalue("untrained")
    results = translator.translate(TEXTS, beam=beam, attention=True)
    assert [r.translation for r in results] == translator.translate(TEXTS, beam=beam)
    for text, result in zip(TEXTS, results):
        assert isinstance(result, Translation) and result.source == text
        assert result.source_pieces == translator.tokenizer.source.pieces([text])[0]
        _, tokens, src = reference(translator, text, beam)
        pieces = translator.tokenizer.target.id_to_piece(tokens.tolist())
        assert result.target_pieces == ["</s>" if i == EOS_ID else p for p, i in zip(pieces, tokens.tolist())]
        assert result.attention.labels == {
            "source": [result.source_pieces],
            "target": [result.target_pieces],
            "target_in": [["<s>", *result.target_pieces[:-1]]],
        }
        expected = explicit_maps(translator.model, src, tokens)
        assert [(m.kind, m.layer) for m in result.attention] == list(expected)
        for (kind, layer), weights in expected.items():
            torch.testing.assert_close(result.attention[kind, layer], weights, atol=1e-5, rtol=1e-4)
        alignment = result.alignment()
        assert alignment.shape == (len(result.target_pieces), len(result.source_pieces))
        torch.testing.assert_close(
            alignment, expected["cross", translator.model.config.num_decoder_layers - 1][0].mean(0)
        )
        torch.testing.assert_close(alignment.sum(-1), torch.ones(len(tokens)), atol=1e-5, rtol=0)


def test_beam_maps_belong_to_the_returned_hypothesis_not_to_greedys(untrained):
    results = untrained.translate(TEXTS, beam=3, attention=True)
    differing = 0
    for text, result in zip(TEXTS, results):
        _, tokens, src = reference(untrained, text, beam=3)
        _, greedy, _ = reference(untrained, text, beam=1)
        expected = explicit_maps(untrained.model, src, tokens)
        for (kind, layer), weights in expected.items():
            torch.testing.assert_close(result.attention[kind, layer], weights, atol=1e-5, rtol=1e-4)
        if not torch.equal(tokens, greedy):
            differing += 1
            others = explicit_maps(untrained.model, src, greedy)
            assert any(
                others[key].shape != weights.shape or not torch.allclose(others[key], weights, atol=1e-3)
                for key, weights in expected.items()
            )
    assert differing > 0  # else this test could not tell the two apart


def test_a_capture_spec_keeps_only_the_layers_heads_and_kinds_asked(untrained):
    translator = untrained
    full = translator.translate(TEXTS[0], attention=True).attention
    last = translator.model.config.num_decoder_layers - 1
    chosen = translator.translate(TEXTS[0], attention=CaptureSpec(layers=-1, heads=[1], kinds="cross")).attention
    assert [(m.kind, m.layer, m.heads) for m in chosen] == [("cross", last, (1,))]
    torch.testing.assert_close(chosen["cross", last], full["cross", last][:, 1:2])
    both = translator.translate(TEXTS[0], attention=CaptureSpec(layers=0, kinds=["encoder_self", "decoder_self"]))
    assert [(m.kind, m.layer) for m in both.attention] == [("encoder_self", 0), ("decoder_self", 0)]


def test_a_capture_spec_of_what_the_model_lacks_names_what_exists(translation_run):
    translator = attnlab.load(translation_run)
    config = translator.model.config
    layers, heads = config.num_encoder_layers, config.num_heads
    with pytest.raises(ValueError, match=rf"layer {layers} does not exist: the model has {layers} encoder_self layers"):
        translator.translate(TEXTS[0], attention=CaptureSpec(layers=layers))
    with pytest.raises(ValueError, match=rf"head -{heads + 1} does not exist: the model has {heads} heads"):
        translator.translate(TEXTS[0], attention=CaptureSpec(heads=-(heads + 1)))
    with pytest.raises(ValueError, match=r"kind 'vit' is not in this Transformer: it has \['encoder_self', "):
        translator.translate(TEXTS[0], attention=CaptureSpec(kinds="vit"))
    with pytest.raises(TypeError, match="attention must be a bool or a CaptureSpec, got str"):
        translator.translate(TEXTS[0], attention="last")


def test_blank_and_overlong_lines_keep_their_place_and_are_named(translation_run, caplog):
    translator = attnlab.load(translation_run)
    texts = [TEXTS[0], "", " ".join(["twelve"] * 100)]
    with caplog.at_level(logging.WARNING):
        out = translator.translate(texts)
    assert len(out) == 3 and out[1] == "" and out[0] == translator.translate(TEXTS[0])
    assert "input line 2: empty" in caplog.text
    assert f"input line 3: longer than max_length={translator.data.max_length} tokens" in caplog.text
    blank = translator.translate("", attention=True)
    assert blank.translation == "" and blank.target_pieces == [] and len(blank.attention) == 0


def test_a_translator_of_a_model_in_memory_shares_its_weights_and_mode(translation_run):
    loaded = attnlab.load(translation_run)
    model = loaded.model.train()
    pointers = [p.data_ptr() for p in model.parameters()]
    translator = Translator(model, loaded.tokenizer, loaded.data)
    assert translator.translate(TEXTS) == loaded.translate(TEXTS)  # dropout off while translating
    assert model.training  # and the caller's mode back afterwards
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_fast_and_teaching_path_translators_agree(translation_run):
    loaded = attnlab.load(translation_run)
    slow = Translator(loaded.model, loaded.tokenizer, loaded.data, fast=False)
    assert loaded.fast and not slow.fast
    for beam in (1, 3):
        assert slow.translate(TEXTS, beam=beam) == loaded.translate(TEXTS, beam=beam)


def test_every_search_decodes_with_what_decoder_gives(translation_run, monkeypatch):
    loaded = attnlab.load(translation_run)
    expected = loaded.translate(TEXTS, beam=2)
    steps = []

    class Counting:
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def step(self, *args, **kwargs):
            steps.append(1)
            return self.model.step(*args, **kwargs)

    monkeypatch.setattr(Translator, "_decoder", lambda self: Counting(self.model))
    assert loaded.translate(TEXTS, beam=2) == expected and steps
    steps.clear()
    loaded.translate(TEXTS[0], attention=True)
    assert steps


def test_precision_names_the_autocast_dtype(translation_run):
    assert attnlab.load(translation_run).precision is None  # the run trained in fp32
    assert attnlab.load(translation_run, precision="bf16").precision == torch.bfloat16
    with pytest.raises(ValueError, match=r"precision 'fp16' is not one of \['run', 'fp32', 'bf16', 'auto', 'int8'\]"):
        attnlab.load(translation_run, precision="fp16")


def test_a_missing_run_or_another_task_is_a_clear_error(translation_run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        attnlab.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        attnlab.load(tmp_path)
    with pytest.raises(ConfigError, match="is a translation run .*; expected a classification run"):
        attnlab.load(translation_run, task="classification")


def test_bad_arguments_name_their_values(translation_run):
    translator = attnlab.load(translation_run)
    with pytest.raises(ValueError, match=r"beam \(0\)"):
        translator.translate(TEXTS, beam=0)
