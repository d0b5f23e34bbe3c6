"""attnlab.load on a tiny trained translation run: the Translator against the CLI and against
greedy / beam search run on the model by hand."""

from __future__ import annotations

import logging

import pytest
import torch

import attnlab
from attnlab.cli.main import main
from attnlab.decoding import beam_search, greedy_search
from attnlab.inference import Translation, Translator
from attnlab.training import CheckpointError, ConfigError

TEXTS = ["March 15, 2024", "forty-two", "May 1, 2020", "seven hundred and twelve"]


def reference(translator: Translator, text: str, beam: int = 1, attention: str | None = None):
    """One sentence searched on the model itself, unbatched: (translation, best tokens, attention)."""
    data, tokenizer = translator.data, translator.tokenizer
    src = torch.tensor([tokenizer.source.encode([text])[0][: data.max_length]])  # (1, S)
    limits = {"max_len_a": data.max_decode_len_a, "max_len_b": data.max_decode_len_b, "attention": attention}
    model = translator.model.eval()
    if beam == 1:
        result = greedy_search(model, src, **limits)
        tokens, weights = result.tokens[0], None if attention is None else result.attention[0]
    else:
        result = beam_search(model, src, beam_size=beam, **limits)
        tokens, weights = result.tokens[0, 0], None if attention is None else result.attention[0, 0]
    return tokenizer.target.decode([tokens.tolist()])[0], tokens, weights


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


def test_a_string_gives_one_result_and_a_list_one_per_line(translation_run):
    translator = attnlab.load(translation_run)
    single = translator.translate(TEXTS[0])
    assert isinstance(single, str)
    assert translator.translate([TEXTS[0]]) == [single]
    assert translator.translate([]) == []


@pytest.mark.parametrize("beam", [1, 2])
def test_return_attention_gives_the_last_layers_source_attention(translation_run, beam):
    translator = attnlab.load(translation_run)
    results = translator.translate(TEXTS, beam=beam, return_attention=True)
    assert [r.translation for r in results] == translator.translate(TEXTS, beam=beam)
    for text, result in zip(TEXTS, results):
        assert isinstance(result, Translation) and result.source == text
        assert result.source_pieces == translator.tokenizer.source.pieces([text])[0]
        _, tokens, weights = reference(translator, text, beam, attention="last")
        assert len(result.target_pieces) == int(tokens.ne(translator.model.pad_id).sum())
        assert result.attention.shape == (len(result.target_pieces), len(result.source_pieces))
        rows = torch.ones(len(result.target_pieces))
        torch.testing.assert_close(result.attention.sum(-1), rows, atol=1e-5, rtol=0)
        # Batched with longer sentences (padding) or alone, the same distribution over the same pieces.
        torch.testing.assert_close(result.attention, weights[: len(result.target_pieces)], atol=1e-5, rtol=1e-4)


def test_blank_and_overlong_lines_keep_their_place_and_are_named(translation_run, caplog):
    translator = attnlab.load(translation_run)
    texts = [TEXTS[0], "", " ".join(["twelve"] * 100)]
    with caplog.at_level(logging.WARNING):
        out = translator.translate(texts)
    assert len(out) == 3 and out[1] == "" and out[0] == translator.translate(TEXTS[0])
    assert "input line 2: empty" in caplog.text
    assert f"input line 3: longer than max_length={translator.data.max_length} tokens" in caplog.text
    blank = translator.translate("", return_attention=True)
    assert blank.translation == "" and blank.target_pieces == [] and blank.attention.shape == (0, 0)


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
    loaded.translate(TEXTS[0], return_attention=True)
    assert steps


def test_precision_names_the_autocast_dtype(translation_run):
    assert attnlab.load(translation_run).precision is None  # the run trained in fp32
    assert attnlab.load(translation_run, precision="bf16").precision == torch.bfloat16
    with pytest.raises(ValueError, match=r"precision 'fp16' is not one of \['run', 'fp32', 'bf16', 'auto'\]"):
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
