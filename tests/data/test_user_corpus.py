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
