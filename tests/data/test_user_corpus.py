"""User corpora: aligned files and TSV, with bad lines reported by file and line number."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.data.corpora import CorpusConfig, prepare_corpus
from attnlab.data.user_corpus import SkippedLine, read_aligned_pairs, read_tsv_pairs


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path: Path) -> None:
    source, target = tmp_path / "train.en", tmp_path / "train.ja"
    source.write_text("a\nb\nc\n", encoding="utf-8")
    target.write_text("あ\nい\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        read_aligned_pairs(source, target)
    message = str(error.value)
    assert f"{source} has 3" in message and f"{target} has 2" in message


def test_bad_tsv_lines_are_skipped_with_line_numbers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("hello\tこんにちは\nno tab here\n\n x \t \na\tb\tc\ngood  day\t良い 日\r\n", encoding="utf-8")
    pairs, skipped = read_tsv_pairs(path)
    assert pairs == [("hello", "こんにちは"), ("good day", "良い 日")]
    assert [(item.line_number, item.reason) for item in skipped] == [
        (2, "expected 1 tab, found 0"),
        (3, "empty line"),
        (4, "empty target side"),
        (5, "expected 1 tab, found 2"),
    ]
    assert all(item.path == str(path) for item in skipped)
    assert f"{path}:2: expected 1 tab" in caplog.text and "skipped 4 bad lines" in caplog.text


def test_aligned_files_skip_empty_sides_and_split_only_on_newline(tmp_path: Path) -> None:
    source, target = tmp_path / "s.txt", tmp_path / "t.txt"
    source.write_text("one\u2028still one\n\nthree\n", encoding="utf-8")
    target.write_text("一\n二\n三", encoding="utf-8")  # no final newline
    pairs, skipped = read_aligned_pairs(source, target)
    assert pairs == [("one still one", "一"), ("three", "三")]
    assert skipped == [SkippedLine(str(source), 2, f"empty source side (target file {target})")]


def test_user_corpus_through_prepare_records_skips_and_rebuilds_on_change(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "pairs.tsv"
    lines = [f"sentence {i}\t文 {i}" for i in range(200)] + ["broken"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = CorpusConfig("user", paths=(str(path),), source_lang="en", target_lang="ja")
    corpus = prepare_corpus(config)
    assert len(corpus) == 200 and [item.line_number for item in corpus.skipped] == [201]
    cached = prepare_corpus(config)
    assert cached.splits == corpus.splits and cached.skipped == corpus.skipped
    path.write_text("\n".join(lines[:50]) + "\n", encoding="utf-8")
    assert len(prepare_corpus(config)) == 50


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_missing_and_empty_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    from attnlab.data.user_corpus import UserCorpusError

    missing = tmp_path / "nowhere.tsv"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        read_tsv_pairs(missing)
    empty = _write(tmp_path / "empty.ja", [" ", ""])
    source = _write(tmp_path / "s.en", ["a", "b"])
    with pytest.raises(UserCorpusError, match=f"{empty} is empty"):
        read_aligned_pairs(source, empty)


def _joey_files(tmp_path: Path) -> dict[str, list[str]]:
    """JoeyNMT-style train/dev/test files, source and target side each."""
    files = {}
    for split, size in (("train", 40), ("dev", 5), ("test", 6)):
        source = _write(tmp_path / f"{split}.de", [f"{split} satz {i}" for i in range(size)])
        target = _write(tmp_path / f"{split}.en", [f"{split} sentence {i}" for i in range(size)])
        files[split] = [str(source), str(target)]
    return files


def test_split_files_are_read_as_given_without_a_hash_split(tmp_path: Path) -> None:
    from attnlab.data.user_corpus import read_user_splits

    files = _joey_files(tmp_path)
    splits, skipped = read_user_splits(files)
    assert skipped == []
    for split, (source, target) in files.items():
        expected = list(zip(Path(source).read_text().splitlines(), Path(target).read_text().splitlines()))
        assert splits[split] == expected


def test_text_data_config_takes_dev_and_test_files(tmp_path: Path, cache_dir: Path) -> None:
    from attnlab.config import read_dataclass, to_plain
    from attnlab.training.config import TextDataConfig

    files = _joey_files(tmp_path)
    values = {
        "corpus": {"name": "user", "paths": files["train"], "source_lang": "de", "target_lang": "en"},
        "dev_paths": files["dev"],
        "test_paths": files["test"],
    }
    config = read_dataclass(TextDataConfig, values, "data")
    corpus = config.prepare_corpus()
    assert (corpus.source_lang, corpus.target_lang) == ("de", "en")
    assert [len(corpus.splits[name]) for name in ("train", "dev", "test")] == [40, 5, 6]  # nothing moved by hash
    assert corpus.dev[0] == ("dev satz 0", "dev sentence 0") and corpus.test[-1] == ("test satz 5", "test sentence 5")
    again = read_dataclass(TextDataConfig, to_plain(config), "data")
    assert again == config  # the saved form reads back the same


def test_split_file_errors_name_the_key_or_the_file(tmp_path: Path, cache_dir: Path) -> None:
    from attnlab.config import ConfigError, read_dataclass
    from attnlab.data.user_corpus import UserCorpusError
    from attnlab.training.config import TextDataConfig

    files = _joey_files(tmp_path)
    with pytest.raises(ConfigError, match="corpus.name 'user'"):
        read_dataclass(TextDataConfig, {"dev_paths": files["dev"], "test_paths": files["test"]}, "data")
    user = {"name": "user", "paths": files["train"]}
    with pytest.raises(ConfigError, match=r"test_paths must be one TSV file or two aligned files, got \[\]"):
        read_dataclass(TextDataConfig, {"corpus": user, "dev_paths": files["dev"]}, "data")
    _write(Path(files["dev"][1]), [])
    config = read_dataclass(TextDataConfig, {"corpus": user, "dev_paths": files["dev"], "test_paths": files["test"]})
    with pytest.raises(UserCorpusError, match=f"{files['dev'][1]} is empty"):
        config.prepare_corpus()
