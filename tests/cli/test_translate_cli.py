"""attnlab train / translate / evaluate on a tiny generated corpus, and one-line errors for bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from attnlab.cli.main import main
from attnlab.training.checkpoints import MODEL_FILE


def write_config(tmp_path: Path, corpus: dict | None = None, **training) -> Path:
    """A 1+1-layer Transformer (d_model 32) on 300 generated en->ja pairs, 30 steps, one thread."""
    config = {
        "task": "translation",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {
            "type": "transformer",
            "preset": "tiny",
            "d_model": 32,
            "num_heads": 2,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "dim_feedforward": 64,
            "share_embeddings": True,
        },
        "data": {
            "corpus": corpus or {"name": "generated", "size": 300, "use_cache": False},
            "tokenizer": {"vocab_size": 400},
            "max_length": 24,
            "max_tokens": 512,
            "eval_max_sentences": 8,
            "max_decode_len_a": 1.0,
            "max_decode_len_b": 4,
        },
        "training": {
            "optimizer": "adam",
            "lr": 1.0,
            "schedule": "noam",
            "warmup_steps": 10,
            "max_steps": 30,
            "eval_every": 15,
            "eval_at_epoch_end": False,
            "precision": "fp32",
            "num_threads": 1,
            "tensorboard": False,
            **training,
        },
    }
    path = tmp_path / "tiny_translation.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("translate")
    assert main(["train", str(write_config(tmp_path)), "--no-progress"]) == 0
    return tmp_path / "run"


def test_train_writes_checkpoints_with_tokenizer_and_metrics(trained_run):
    for name in ("best", "last"):
        assert (trained_run / "checkpoints" / name / MODEL_FILE).is_file()
        assert (trained_run / "checkpoints" / name / "tokenizer" / "tokenizer.json").is_file()
    kinds = [json.loads(line)["kind"] for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("dev") == 2 and kinds[-1] == "test"


def test_translate_text_and_stdin_one_line_per_input(trained_run, capsys, monkeypatch):
    assert main(["translate", str(trained_run), "--text", "March 15, 2024", "--text", "forty-two"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("May 1, 2020\nseven\n"))
    assert main(["translate", str(trained_run), "--beam", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize(("precision", "autocast"), [("fp32", False), ("bf16", True)])
def test_translate_precision_runs_the_search_under_autocast(trained_run, capsys, autocast_spy, precision, autocast):
    from attnlab.models import Transformer

    seen = autocast_spy(Transformer, "encode")  # once per search batch
    assert main(["translate", str(trained_run), "--text", "March 15, 2024", "--precision", precision]) == 0
    assert seen == [autocast]
    assert len(capsys.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize(("trained_in", "autocast"), [("fp32", False), ("bf16", True)])
def test_by_default_evaluate_and_translate_take_the_runs_precision(
    trained_run, tmp_path, capsys, autocast_spy, trained_in, autocast
):
    """The trainer scored its final test in the run's precision; evaluate and translate repeat it."""
    import shutil

    from attnlab.models import Transformer
    from attnlab.training.translation import TranslationTask

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for path in run.glob("**/config.yaml"):  # the run's and each checkpoint's
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["training"]["precision"] = trained_in
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    translated, evaluated = autocast_spy(Transformer, "encode"), autocast_spy(TranslationTask, "evaluate")
    assert main(["translate", str(run), "--text", "March 15, 2024"]) == 0
    assert translated == [autocast]
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    assert evaluated == [autocast]
    translated.clear()
    assert main(["translate", str(run), "--text", "March 15, 2024", "--precision", "fp32"]) == 0
    assert translated == [False]


def test_evaluate_with_a_beam_scores_beam_search_translations(trained_run, capsys):
    import attnlab

    assert main(["evaluate", str(trained_run), "--split", "test", "--beam", "3"]) == 0
    metrics = json.loads((trained_run / "test_metrics_evaluate_best_beam3.json").read_text(encoding="utf-8"))
    assert metrics["beam_size"] == 3
    rows = (trained_run / "test_translations_evaluate_best_beam3.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sources = [row.split("\t")[0] for row in rows[:5]]
    assert [row.split("\t")[2] for row in rows[:5]] == attnlab.load(trained_run).translate(sources, beam=3)


def test_evaluate_and_translate_take_the_repetition_options(trained_run, capsys):
    import attnlab

    assert main(["evaluate", str(trained_run), "--split", "test", "--no-repeat-ngram-size", "1"]) == 0
    report = trained_run / "test_metrics_evaluate_best_no_repeat_ngram_size1.json"
    assert json.loads(report.read_text(encoding="utf-8"))["sentences"] > 0
    translations = trained_run / "test_translations_evaluate_best_no_repeat_ngram_size1.tsv"
    rows = translations.read_text(encoding="utf-8").splitlines()[1:]
    sources = [row.split("\t")[0] for row in rows[:5]]
    expected = attnlab.load(trained_run).translate(sources, no_repeat_ngram_size=1)
    assert [row.split("\t")[2] for row in rows[:5]] == expected
    capsys.readouterr()
    assert (
        main(
            [
                "translate",
                str(trained_run),
                "--repetition-penalty",
                "1.5",
                *[arg for s in sources for arg in ("--text", s)],
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines() == attnlab.load(trained_run).translate(sources, repetition_penalty=1.5)


def test_evaluate_and_translate_take_the_n_best_choices(trained_run, capsys):
    import attnlab

    args = ["evaluate", str(trained_run), "--split", "test", "--beam", "3", "--avoid-repetitive", "--mbr"]
    assert main(args) == 0
    report = trained_run / "test_metrics_evaluate_best_beam3_avoid_repetitive1_mbr1.json"
    assert json.loads(report.read_text(encoding="utf-8"))["beam_size"] == 3
    translations = trained_run / "test_translations_evaluate_best_beam3_avoid_repetitive1_mbr1.tsv"
    rows = translations.read_text(encoding="utf-8").splitlines()[1:]
    sources = [row.split("\t")[0] for row in rows[:5]]
    expected = attnlab.load(trained_run).translate(sources, beam=3, avoid_repetitive=True, mbr=True)
    assert [row.split("\t")[2] for row in rows[:5]] == expected
    capsys.readouterr()
    assert (
        main(["translate", str(trained_run), "--beam", "3", "--mbr", *[a for s in sources for a in ("--text", s)]]) == 0
    )
    assert capsys.readouterr().out.splitlines() == attnlab.load(trained_run).translate(sources, beam=3, mbr=True)


def test_a_bad_repetition_option_is_named(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--repetition-penalty", "0"]) == 2
    assert "--repetition-penalty (0.0) must be > 0" in capsys.readouterr().err
    assert main(["evaluate", str(trained_run), "--beam", "2", "--length-penalty", "-1"]) == 2
    assert "--length-penalty (-1.0) must be >= 0" in capsys.readouterr().err


def test_translate_rejects_a_beam_below_one(trained_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["translate", str(trained_run), "--text", "seven", "--beam", "0"])
    assert exit_info.value.code == 2
    assert "argument --beam: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_evaluate_writes_bleu_and_chrf_with_signatures(trained_run, capsys):
    trainers = (trained_run / "translations_test.tsv").read_bytes()
    assert main(["evaluate", str(trained_run), "--split", "test"]) == 0
    assert "bleu" in capsys.readouterr().out
    metrics = json.loads((trained_run / "test_metrics_evaluate_best.json").read_text(encoding="utf-8"))
    assert {"bleu", "chrf", "exact_match", "loss"} <= set(metrics)
    assert metrics["sentences"] > 8  # all of test, not the dev cap eval_max_sentences (8)
    assert "tok:ja-mecab" in metrics["bleu_signature"] and "nc:6" in metrics["chrf_signature"]
    written = Path(metrics["translations_file"])
    assert written.name == "test_translations_evaluate_best.tsv"
    assert written.read_text(encoding="utf-8").startswith("source\treference\t")
    assert (trained_run / "translations_test.tsv").read_bytes() == trainers  # the trainer's file is kept


def test_bad_input_lines_keep_the_output_aligned_and_are_named(trained_run, capsys, caplog, monkeypatch):
    # Line 2 is empty, line 3 is far longer than max_length (24), line 4 holds characters the
    # tokenizer never saw: each still gets exactly one output line, and the problems name their line.
    lines = ["June 3, 2001", "", " ".join(["twelve"] * 200), "\u2603 \U0001f600 \u0416"]
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("\n".join(lines) + "\n"))
    with caplog.at_level(logging.WARNING):  # the CLI's logging prints these on stderr
        assert main(["translate", str(trained_run)]) == 0
    out = capsys.readouterr().out.split("\n")[:-1]
    assert len(out) == 4 and out[1] == ""
    assert "input line 2: empty" in caplog.text
    assert "input line 3: longer than max_length=24 tokens" in caplog.text


def test_missing_and_corrupt_checkpoints_exit_2_with_one_line(trained_run, tmp_path, capsys):
    assert main(["translate", str(tmp_path / "nowhere"), "--text", "x"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    run = tmp_path / "copy"
    __import__("shutil").copytree(trained_run / "checkpoints", run / "checkpoints")
    weights = run / "checkpoints" / "best" / MODEL_FILE
    weights.write_bytes(b"not safetensors at all")
    assert main(["translate", str(run), "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    spm_model = next((run / "checkpoints" / "last" / "tokenizer").glob("*.model"))
    spm_model.write_bytes(b"\x00garbage")
    assert main(["translate", str(run), "--checkpoint", "last", "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert spm_model.name in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_mismatched_aligned_files_name_both_files_and_counts(tmp_path, capsys):
    src, tgt = tmp_path / "train.en", tmp_path / "train.ja"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    tgt.write_text("一\n二\n", encoding="utf-8")
    corpus = {"name": "user", "paths": [str(src), str(tgt)], "use_cache": False}
    assert main(["train", str(write_config(tmp_path, corpus)), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert f"{src} has 3" in err and f"{tgt} has 2" in err and "Traceback" not in err


def test_config_for_the_wrong_model_type_names_the_key(tmp_path, capsys):
    path = write_config(tmp_path)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["model"] = {"type": "vit", "preset": "vit_digits_patch2_8"}  # an image model asked to translate
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.type: a vit model does not do translation" in err and len(err.strip().splitlines()) == 1
    assert main(["train", str(write_config(tmp_path)), "model.patch_size=4"]) == 2
    assert "model.patch_size" in capsys.readouterr().err


def test_translate_refuses_a_classification_config(tmp_path, capsys):
    run = tmp_path / "cls" / "checkpoints" / "best"
    run.mkdir(parents=True)
    (run / MODEL_FILE).write_bytes(b"")
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "model": {"type": "cnn"},
                "data": {"dataset": "digits"},
                "training": {"max_steps": 1},
            }
        )
    )
    assert main(["translate", str(tmp_path / "cls"), "--text", "x"]) == 2
    assert "is a classification run" in capsys.readouterr().err


def test_show_attention_prints_the_alignment_behind_each_translation(trained_run, capsys):
    assert main(["translate", str(trained_run), "--text", "March 15, 2024"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert main(["translate", str(trained_run), "--text", "March 15, 2024", "--show-attention"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == plain[0]  # the same translation, then its table
    header, rows = lines[1], [line for line in lines[2:] if line.strip()]
    assert "▁M" in header or "▁March" in header  # source pieces label the columns
    assert rows  # one row per generated piece (this tiny model may stop at the length limit, before EOS)
    for row in rows:
        weights = [float(cell.rstrip("*")) for cell in row.split()[1:]]
        assert abs(sum(weights) - 1) < 0.02 * len(weights)  # rows of A, shown to 2 decimals


def test_align_weights_are_a_distribution_over_source_pieces(trained_run):
    import attnlab

    translator = attnlab.load(trained_run, task="translation")
    result = translator.translate("May 1, 2020", beam=2, attention=True)
    alignment = result.alignment()
    assert alignment.shape == (len(result.target_pieces), len(result.source_pieces))
    rows = torch.ones(len(result.target_pieces))
    torch.testing.assert_close(alignment.sum(-1), rows, atol=1e-3, rtol=0)
    assert result.attention.axis_labels("source") == result.source_pieces
    assert result.attention.axis_labels("target") == result.target_pieces
    assert result.translation == translator.translate(["May 1, 2020"], beam=2)[0]
