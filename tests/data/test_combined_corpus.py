"""The combined LibreOffice corpus: de-duplication, the help's dev/test kept, no held-out text in train."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnlab.cli.main import main
from attnlab.data import corpora
from attnlab.data.combined import SourcePairs, combine_sources
from attnlab.data.corpora import CorpusConfig, _cache_key, _cache_path, prepare_corpus, split_pairs
from attnlab.data.corpus_stats import corpus_statistics
from attnlab.data.debian_reference import ReferencePairs
from attnlab.data.libreoffice_help import pair_help_pages
from attnlab.data.libreoffice_ui import UICatalogues
from attnlab.data.text import normalize_whitespace

_PAGE = '<html><body><div id="DisplayArea">{body}</div></body></html>'
HELP_PARAGRAPHS = 400


def _normalized(pair: tuple[str, str]) -> tuple[str, str]:
    return normalize_whitespace(pair[0]), normalize_whitespace(pair[1])


@pytest.fixture
def many_help_pages(tmp_path: Path) -> Path:
    """A help root whose one page holds ``HELP_PARAGRAPHS`` translated paragraphs."""
    texts = {
        "en-US": [f"Paragraph number {i} of the help." for i in range(HELP_PARAGRAPHS)],
        "ja": [f"ヘルプの段落 {i} 番です。" for i in range(HELP_PARAGRAPHS)],
    }
    for lang, paragraphs in texts.items():
        body = "\n".join(f'<p id="par_id{i}">{text}</p>' for i, text in enumerate(paragraphs))
        (tmp_path / "help" / lang).mkdir(parents=True)
        (tmp_path / "help" / lang / "page.html").write_text(_PAGE.format(body=body), encoding="utf-8")
    return tmp_path / "help"


def _ui_pairs(help_splits: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """UI strings of every kind: new, repeated, equal to help pairs, sharing a side with held-out pairs."""
    fresh = [(f"Button {i}", f"ボタン {i}") for i in range(50)]
    held_out = help_splits["test"] + help_splits["dev"]
    overlapping = []
    for english, japanese in held_out:
        overlapping += [(english, "別の訳です"), ("Another English text", japanese), (f"  {english} ", japanese)]
    train_copy = [(f"{english}\n", japanese) for english, japanese in help_splits["train"][:5]]
    return fresh + fresh[:10] + overlapping + train_copy


@pytest.fixture
def fake_sources(many_help_pages: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Help and UI builders that read the fake help pages and return :func:`_ui_pairs`; returns the UI pairs."""
    help_pairs = pair_help_pages(many_help_pages / "en-US", many_help_pages / "ja", "ja")
    ui_pairs = _ui_pairs(split_pairs(help_pairs))
    monkeypatch.setattr(corpora, "build_libreoffice_help_pairs", lambda lang: list(help_pairs))
    monkeypatch.setattr(corpora, "build_libreoffice_ui_pairs", lambda lang: UICatalogues(ui_pairs, len(ui_pairs) + 7))
    monkeypatch.setattr(corpora, "build_debian_reference_pairs", lambda lang: pytest.fail("not asked for"))
    return ui_pairs


def _reference_pairs(help_splits: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """Reference paragraphs: new ones, one equal to a UI pair, ones sharing a side with held-out pairs."""
    fresh = [(f"Run command {i} as root.", f"root でコマンド {i} を実行します。") for i in range(30)]
    held_out = help_splits["dev"] + help_splits["test"]
    overlapping = [(english, "参考書の訳です。") for english, _ in held_out[:5]]
    overlapping += [(f"Reference text {i}.", japanese) for i, (_, japanese) in enumerate(held_out[5:10])]
    return [*fresh, ("Button 3", "ボタン 3"), *overlapping]


@pytest.fixture
def fake_reference(many_help_pages: Path, fake_sources: list, monkeypatch: pytest.MonkeyPatch) -> list:
    """A Debian Reference builder returning :func:`_reference_pairs`; returns those pairs."""
    help_pairs = pair_help_pages(many_help_pages / "en-US", many_help_pages / "ja", "ja")
    pairs = _reference_pairs(split_pairs(help_pairs))
    reference = ReferencePairs(pairs, len(pairs) + 4, sections=3, misaligned=1)
    monkeypatch.setattr(corpora, "build_debian_reference_pairs", lambda lang: reference)
    return pairs


BOTH = ("libreoffice-ui", "debian-reference")


def test_combine_deduplicates_after_whitespace_normalisation_and_drops_held_out_sides() -> None:
    base = {
        "train": [("Open a file.", "ファイルを開きます。")],
        "dev": [("Close it.", "閉じます。")],
        "test": [("Save it.", "保存します。")],
    }
    extra = [
        ("Open  a file.", "ファイルを開きます。"),  # = a help train pair after normalisation
        ("Save it.", " 保存します。"),  # = a help test pair
        ("Save it.", "保存する。"),  # shares the English of a test pair
        ("Keep it.", "閉じます。"),  # shares the Japanese of a dev pair
        ("New label", "新しいラベル"),
        ("New\tlabel", "新しいラベル"),  # repeat within the source
    ]
    combined = combine_sources("help", base, [SourcePairs("ui", extra, entries=9)])
    assert combined.splits == {**base, "train": [*base["train"], ("New label", "新しいラベル")]}
    assert combined.sources == {
        "help": {"entries": 3, "filtered": 0, "duplicates": 0, "dropped": 0, "kept": 3},
        "ui": {"entries": 9, "filtered": 3, "duplicates": 3, "dropped": 2, "kept": 1},
    }


def test_help_dev_and_test_are_those_of_the_help_corpus(cache_dir: Path, fake_sources: list) -> None:
    combined = prepare_corpus(CorpusConfig("libreoffice-combined"))
    help_corpus = prepare_corpus(CorpusConfig("libreoffice-help"))
    assert combined.dev == help_corpus.dev and combined.test == help_corpus.test
    assert combined.test and combined.dev
    assert combined.train[: len(help_corpus.train)] == help_corpus.train


def test_no_training_pair_equals_or_shares_a_side_with_a_held_out_pair(cache_dir: Path, fake_sources: list) -> None:
    corpus = prepare_corpus(CorpusConfig("libreoffice-combined"))
    held_out = {_normalized(pair) for pair in corpus.dev + corpus.test}
    train = [_normalized(pair) for pair in corpus.train]
    assert not held_out & set(train)
    assert len(set(train)) == len(train)
    ui_train = set(train) & {_normalized(pair) for pair in fake_sources}
    assert ui_train and not {english for english, _ in ui_train} & {english for english, _ in held_out}
    assert not {japanese for _, japanese in ui_train} & {japanese for _, japanese in held_out}


def test_counts_add_up_and_survive_the_cache_and_reversal(
    cache_dir: Path, fake_sources: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = prepare_corpus(CorpusConfig("libreoffice-combined"))
    ui = corpus.sources["libreoffice-ui"]
    assert ui["entries"] - ui["filtered"] == len(fake_sources) == ui["duplicates"] + ui["dropped"] + ui["kept"]
    assert corpus.sources["libreoffice-help"]["kept"] + ui["kept"] == len(corpus)
    monkeypatch.setattr(corpora, "build_libreoffice_ui_pairs", lambda lang: pytest.fail("cache not used"))
    reverse = prepare_corpus(CorpusConfig("libreoffice-combined", source_lang="ja", target_lang="en"))
    assert reverse.sources == corpus.sources and reverse.test == [(t, s) for s, t in corpus.test]
    assert corpus_statistics(reverse)["sources"] == corpus.sources


def test_single_source_statistics_have_no_source_counts(cache_dir: Path, fake_sources: list) -> None:
    assert "sources" not in corpus_statistics(prepare_corpus(CorpusConfig("libreoffice-help")))


def test_cli_prints_the_per_source_counts(
    cache_dir: Path, fake_sources: list, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "prepare", "libreoffice-combined"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sources"] == prepare_corpus(CorpusConfig("libreoffice-combined")).sources
    assert set(printed["sources"]["libreoffice-ui"]) == {"entries", "filtered", "duplicates", "dropped", "kept"}


def test_sources_default_to_the_ui_and_reject_unknown_repeated_or_misplaced_names() -> None:
    assert CorpusConfig("libreoffice-combined").sources == ("libreoffice-ui",)
    assert CorpusConfig("libreoffice-combined", sources=["debian-reference"]).sources == ("debian-reference",)
    with pytest.raises(ValueError, match=r"'wikipedia' is not one of \['libreoffice-ui', 'debian-reference'\]"):
        CorpusConfig("libreoffice-combined", sources=("libreoffice-ui", "wikipedia"))
    with pytest.raises(ValueError, match="at most once"):
        CorpusConfig("libreoffice-combined", sources=("debian-reference", "debian-reference"))
    with pytest.raises(ValueError, match="at least one"):
        CorpusConfig("libreoffice-combined", sources=())
    with pytest.raises(ValueError, match="apply to corpus 'libreoffice-combined' only, not 'libreoffice-help'"):
        CorpusConfig("libreoffice-help", sources=BOTH)


def test_the_cache_key_changes_with_the_sources_but_not_for_the_default(cache_dir: Path) -> None:
    default = CorpusConfig("libreoffice-combined")
    assert "sources" not in _cache_key(default)  # corpora cached before sources existed stay valid
    paths = {_cache_path(CorpusConfig("libreoffice-combined", sources=sources)) for sources in (BOTH, BOTH[::-1])}
    assert len(paths | {_cache_path(default)}) == 3


def test_the_reference_adds_training_pairs_only_and_no_held_out_text(
    cache_dir: Path, fake_sources: list, fake_reference: list
) -> None:
    corpus = prepare_corpus(CorpusConfig("libreoffice-combined", sources=BOTH))
    ui_only = prepare_corpus(CorpusConfig("libreoffice-combined"))
    assert corpus.dev == ui_only.dev and corpus.test == ui_only.test
    assert corpus.train[: len(ui_only.train)] == ui_only.train
    reference = corpus.sources["debian-reference"]
    assert reference == {"entries": 45, "filtered": 4, "duplicates": 1, "dropped": 10, "kept": 30}
    assert corpus.train[len(ui_only.train) :] == fake_reference[:30]
    held_out = corpus.dev + corpus.test
    assert not {english for english, _ in corpus.train} & {english for english, _ in held_out}
    assert not {japanese for _, japanese in corpus.train} & {japanese for _, japanese in held_out}
    assert corpus.sources["libreoffice-help"]["kept"] + corpus.sources["libreoffice-ui"]["kept"] + 30 == len(corpus)


def test_cli_sources_print_the_reference_counts(
    cache_dir: Path, fake_sources: list, fake_reference: list, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "prepare", "libreoffice-combined", "--sources", *BOTH]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed["sources"]) == ["libreoffice-help", *BOTH]
    assert printed["sources"]["debian-reference"]["kept"] == 30


@pytest.mark.slow
def test_real_combined_corpus(cache_dir: Path) -> None:
    combined = prepare_corpus(CorpusConfig("libreoffice-combined"))
    help_corpus = prepare_corpus(CorpusConfig("libreoffice-help"))
    assert combined.dev == help_corpus.dev and combined.test == help_corpus.test
    assert not set(combined.train) & set(combined.test + combined.dev)
    assert combined.sources["libreoffice-ui"]["kept"] > 10_000
    assert len(combined.train) == len(help_corpus.train) + combined.sources["libreoffice-ui"]["kept"]
