"""Bad data files and configs: each fails (or warns) in one line naming the file, key or value and the fix."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attnlab.cli.main import main
from attnlab.config import ConfigError, load_yaml, load_yaml_mapping
from attnlab.data.corpora import CorpusConfig, prepare_corpus
from attnlab.data.image_files import ImageFolderDataset
from attnlab.data.tokenizer import TokenizerConfig, TranslationTokenizer
from attnlab.data.user_corpus import UserCorpusError, read_tsv_pairs

PAIRS = "hello\tbonjour\ngood day\tbonne journée\n"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))


def _one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("encoded", "line", "encoding"),
    [
        (PAIRS.encode("latin-1"), 2, "LATIN1"),  # é is 0xe9, invalid in UTF-8, on line 2
        (PAIRS.encode("utf-16"), 1, "UTF-16"),  # BOM and NUL bytes
        (PAIRS.encode("utf-16-le"), 1, "UTF-16"),  # no BOM: ASCII halves would decode as UTF-8 with NULs
        (b"hello\tworld\n\x89PNG\r\n\x1a\n\x00\x00", 2, "UTF-16"),  # binary
    ],
    ids=["latin-1", "utf-16", "utf-16le", "binary"],
)
def test_a_data_file_that_is_not_utf8_names_the_file_line_and_iconv(
    tmp_path: Path, encoded: bytes, line: int, encoding: str
) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_bytes(encoded)
    with pytest.raises(UserCorpusError) as error:
        read_tsv_pairs(path)
    message = _one_line(str(error.value))
    assert message.startswith(f"{path}:{line}: ")
    assert f"iconv -f {encoding} -t UTF-8 {path}" in message
    assert "UTF-8" in message


def test_a_utf8_file_with_bom_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_bytes(PAIRS.encode("utf-8-sig"))
    assert read_tsv_pairs(path)[0] == [("hello", "bonjour"), ("good day", "bonne journée")]


def test_a_latin1_corpus_through_the_cli_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_bytes(PAIRS.encode("latin-1"))
    assert main(["data", "prepare", "user", "--paths", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}:2:" in err and "iconv" in err and "Traceback" not in err


def test_a_tsv_without_any_pair_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("source only\nno tab either\n", encoding="utf-8")
    with pytest.raises(UserCorpusError) as error:
        prepare_corpus(CorpusConfig(name="user", paths=(str(path),)))
    message = _one_line(str(error.value))
    assert str(path) in message and "holds no pairs" in message and "source<TAB>target" in message
    assert main(["data", "prepare", "user", "--paths", str(path)]) == 2
    assert "holds no pairs" in capsys.readouterr().err


def test_an_empty_tsv_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(UserCorpusError, match=f"{path} is empty"):
        prepare_corpus(CorpusConfig(name="user", paths=(str(path),)))


def test_a_corpus_with_no_training_pair_says_so(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text(PAIRS, encoding="utf-8")
    config = CorpusConfig(name="user", paths=(str(path),), dev_fraction=0.5, test_fraction=0.4999)
    train = [pair for pair in read_tsv_pairs(path)[0] if _split_of(pair, config) == "train"]
    if train:  # the keyed hash decides; pick a seed that sends every pair out of train
        config = _seed_without_train(path, config)
    with pytest.raises(UserCorpusError) as error:
        prepare_corpus(config)
    message = _one_line(str(error.value))
    assert str(path) in message and "none into train" in message


def _split_of(pair: tuple[str, str], config: CorpusConfig) -> str:
    from attnlab.data.corpora import assign_split

    return assign_split(pair[0], config.seed, config.dev_fraction, config.test_fraction)


def _seed_without_train(path: Path, config: CorpusConfig) -> CorpusConfig:
    pairs = read_tsv_pairs(path)[0]
    for seed in range(1000):
        candidate = CorpusConfig(**{**config.to_dict(), "seed": seed})
        if all(_split_of(pair, candidate) != "train" for pair in pairs):
            return candidate
    raise AssertionError("no seed sends both pairs out of train")


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just words\n", "str"), ("42\n", "int")], ids=["list", "str", "int"]
)
def test_a_config_that_is_not_a_mapping_says_it_must_hold_one(text: str, kind: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_yaml_mapping(text.encode("utf-8"), "run.yaml")
    message = _one_line(str(error.value))
    assert "run.yaml" in message and "must hold a mapping" in message and f"top-level {kind}" in message


def test_an_empty_config_is_an_empty_mapping_and_a_mapping_reads_as_itself() -> None:
    assert load_yaml_mapping(b"", "run.yaml") == {}
    assert load_yaml_mapping(b"training:\n  lr: 3e-4\n", "run.yaml") == {"training": {"lr": 3e-4}}


def test_a_config_that_is_not_utf8_names_the_file_line_and_iconv() -> None:
    data = "task: translation\n# café\n".encode("latin-1")
    with pytest.raises(ConfigError) as error:
        load_yaml_mapping(data, "run.yaml")
    message = _one_line(str(error.value))
    assert "run.yaml:2" in message and "not UTF-8" in message and "iconv" in message


def test_invalid_yaml_is_one_line_naming_the_file() -> None:
    with pytest.raises(ConfigError) as error:
        load_yaml_mapping(b"training: [1, 2\n", "run.yaml")
    assert "run.yaml is not valid YAML" in _one_line(str(error.value))


def test_duplicate_keys_are_refused_naming_the_key_and_both_lines() -> None:
    text = "training:\n  lr: 0.1\n  max_steps: 5\n  lr: 0.2\n"
    with pytest.raises(ConfigError) as error:
        load_yaml(text)
    message = _one_line(str(error.value))
    assert "duplicate key 'lr' on line 4 (first on line 2)" in message
    with pytest.raises(ConfigError, match="run.yaml: duplicate key 'training' on line 3"):
        load_yaml_mapping(b"training: {}\nmodel: {}\ntraining: {}\n", "run.yaml")


def test_duplicate_keys_in_flow_mappings_and_equal_keys_in_other_mappings() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_yaml("{a: 1, a: 2}")
    assert load_yaml("x: {a: 1}\ny: {a: 2}\n") == {"x": {"a": 1}, "y": {"a": 2}}


def test_merge_keys_may_still_be_overridden() -> None:
    text = "base: &base {lr: 0.1, steps: 5}\nrun:\n  <<: *base\n  lr: 0.2\n"
    assert load_yaml(text)["run"] == {"lr": 0.2, "steps": 5}


def test_a_duplicate_key_through_the_cli_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("task: translation\ntask: classification\n", encoding="utf-8")
    assert main(["train", str(config), "--fresh"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "duplicate key 'task' on line 2 (first on line 1)" in err


def test_a_too_small_vocab_size_names_the_key_and_suggests_a_size() -> None:
    pairs = [("hello world", "bonjour le monde"), ("a small cat", "un petit chat")]
    with pytest.raises(ConfigError) as error:
        TranslationTokenizer.train(pairs, TokenizerConfig(vocab_size=30))
    message = _one_line(str(error.value))
    assert "data.tokenizer.vocab_size (30) is too small" in message
    required = int(message.split("needs at least ")[1].split()[0])
    assert required > 256  # byte fallback alone takes 256 pieces
    TranslationTokenizer.train(pairs, TokenizerConfig(vocab_size=required))  # the suggested size trains


def test_a_single_class_image_folder_warns_naming_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "images" / "cats"
    folder.mkdir(parents=True)
    for index in range(2):
        Image.fromarray(np.full((4, 4), index * 100, dtype=np.uint8)).save(folder / f"{index}.png")
    with caplog.at_level(logging.WARNING, logger="attnlab.data.image_files"):
        dataset = ImageFolderDataset(tmp_path / "images", channels=1)
    assert len(dataset) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tmp_path / "images") in w and "one class folder (cats)" in w for w in warnings), warnings


def test_two_class_folders_give_no_single_class_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / name / "0.png")
    with caplog.at_level(logging.WARNING, logger="attnlab.data.image_files"):
        ImageFolderDataset(tmp_path, channels=1)
    assert "one class folder" not in caplog.text


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"- a\n- b\n", "must hold a mapping"), ("task: translation\n# caf\xe9\n".encode("latin-1"), "iconv")],
    ids=["list", "latin-1"],
)
def test_train_on_a_list_or_latin1_config_is_one_line_exit_2(tmp_path, capsys, content, expected):
    from attnlab.cli.main import main

    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err and expected in err, err
