"""Corpus config, hash split, cache and statistics."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from attnlab.data import corpora
from attnlab.data.cache import atomic_write_text, default_cache_dir
from attnlab.data.corpora import CorpusConfig, ParallelCorpus, assign_split, prepare_corpus, split_pairs
from attnlab.data.corpus_stats import corpus_statistics


def _numbered_pairs(count: int) -> list[tuple[str, str]]:
    return [(f"sentence {i}", f"文 {i}") for i in range(count)]


def test_split_is_deterministic_disjoint_and_near_the_fractions() -> None:
    pairs = _numbered_pairs(20_000)
    splits = split_pairs(pairs, seed=1, dev_fraction=0.05, test_fraction=0.1)
    assert splits == split_pairs(pairs, seed=1, dev_fraction=0.05, test_fraction=0.1)
    sources = [{source for source, _ in split} for split in splits.values()]
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2]) and not (sources[1] & sources[2])
    assert sum(map(len, splits.values())) == 20_000
    assert 800 <= len(splits["dev"]) <= 1200 and 1700 <= len(splits["test"]) <= 2300


def test_split_ignores_order_and_depends_on_seed() -> None:
    pairs = _numbered_pairs(2000)
    shuffled = random.Random(0).sample(pairs, len(pairs))
    assert {assign_split(s) for s, _ in pairs[:50]} <= {"train", "dev", "test"}
    assert sorted(split_pairs(shuffled)["test"]) == sorted(split_pairs(pairs)["test"])
    assert split_pairs(pairs, seed=0)["test"] != split_pairs(pairs, seed=1)["test"]


def test_duplicate_sources_stay_in_one_split() -> None:
    pairs = [(f"s{i % 300}", f"t{i}") for i in range(3000)]
    seen: dict[str, str] = {}
    for name, split in split_pairs(pairs, dev_fraction=0.2, test_fraction=0.2).items():
        for source, _ in split:
            assert seen.setdefault(source, name) == name


def test_generated_corpus_is_cached_atomically_and_reloaded(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CorpusConfig("generated", size=500, seed=2)
    corpus = prepare_corpus(config)
    files = list((cache_dir / "corpora").iterdir())
    assert [f.suffix for f in files] == [".json"]  # no temporary file left behind
    monkeypatch.setattr(corpora, "build_generated_pairs", lambda *a: pytest.fail("cache not used"))
    assert prepare_corpus(config).splits == corpus.splits
    assert len(corpus) == 500 and len(corpus.train) > len(corpus.dev) > 0


def test_reverse_direction_reuses_cache_and_split(cache_dir: Path) -> None:
    forward = prepare_corpus(CorpusConfig("generated", size=300))
    backward = prepare_corpus(CorpusConfig("generated", size=300, source_lang="ja", target_lang="en"))
    assert (backward.source_lang, backward.target_lang) == ("ja", "en")
    assert backward.test == [(t, s) for s, t in forward.test]
    assert len(list((cache_dir / "corpora").iterdir())) == 1


def test_corrupt_cache_is_rebuilt(cache_dir: Path) -> None:
    config = CorpusConfig("generated", size=100)
    corpus = prepare_corpus(config)
    (path,) = (cache_dir / "corpora").iterdir()
    path.write_text("{ truncated", encoding="utf-8")
    assert prepare_corpus(config).splits == corpus.splits
    assert json.loads(path.read_text(encoding="utf-8"))["splits"]["test"] == [list(p) for p in corpus.test]


def test_no_cache_writes_nothing(cache_dir: Path) -> None:
    prepare_corpus(CorpusConfig("generated", size=50, use_cache=False))
    assert not cache_dir.exists()


def test_cache_dir_follows_environment(cache_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_cache_dir() == cache_dir
    monkeypatch.delenv("ATTNLAB_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "attnlab"
    atomic_write_text(tmp_path / "deep" / "file.txt", "データ")
    assert (tmp_path / "deep" / "file.txt").read_text(encoding="utf-8") == "データ"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": "generated", "sizee": 10}, "sizee"),
        ({"name": "wikipedia"}, "'wikipedia'"),
        ({"name": "generated", "dev_fraction": 0.6, "test_fraction": 0.5}, "dev_fraction \\(0.6\\)"),
        ({"name": "generated", "source_lang": "de", "target_lang": "ja"}, "source_lang \\('de'\\)"),
        ({"name": "user", "paths": []}, "paths"),
    ],
)
def test_config_errors_name_the_value(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CorpusConfig.from_dict(values)


def test_config_round_trips_through_dict() -> None:
    config = CorpusConfig.from_dict({"name": "user", "paths": ["a.tsv"], "seed": 3})
    assert config.paths == ("a.tsv",)
    assert CorpusConfig.from_dict(config.to_dict()) == config


def test_statistics_of_a_small_corpus() -> None:
    splits = {"train": [("a b c", "日本語です"), ("d", "ab")], "dev": [("e f", "テスト")], "test": []}
    stats = corpus_statistics(ParallelCorpus("tiny", "en", "ja", splits))
    assert stats["pairs"] == {"train": 2, "dev": 1, "test": 0, "total": 3}
    assert stats["source"]["words"] == {"median": 2.0, "mean": 2.0, "max": 3}
    assert stats["source"]["chars"]["max"] == 5
    assert stats["target"]["japanese_char_fraction"] == pytest.approx(8 / 10)
    assert stats["source"]["japanese_char_fraction"] == 0.0


def test_atomic_writes_keep_the_usual_file_permissions(tmp_path):
    import os
    import stat

    from attnlab.data.cache import atomic_write_text

    umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.txt"
        atomic_write_text(fresh, "a")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o640)
        atomic_write_text(kept, "new")
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "new"
    finally:
        os.umask(umask)
