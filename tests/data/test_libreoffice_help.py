"""LibreOffice help: pairing by id, markup, untranslated paragraphs; the Debian fetch; one real fetch (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.data.corpora import CorpusConfig, prepare_corpus
from attnlab.data.corpus_stats import corpus_statistics
from attnlab.data.libreoffice_help import build_libreoffice_help_pairs, extract_help_paragraphs, pair_help_pages
from attnlab.data.text import contains_japanese


def test_extract_strips_markup_and_keeps_default_switch_case(help_tree: Path) -> None:
    html = (help_tree / "en-US" / "text" / "swriter" / "insert.html").read_text()
    paragraphs = extract_help_paragraphs(html)
    assert paragraphs["hd_id1"] == "Insert Table"
    # Only the "default" case of the switch survives; entity decoded; newline + indent collapsed.
    assert paragraphs["par_id2"] == "Press Ctrl + C to copy & keep."
    assert paragraphs["par_id5"] == "Line one line two"
    assert paragraphs["par_id6"] == ""
    assert "other_id7" not in paragraphs
    assert "par_id999" not in paragraphs  # inside <script>, not an element


def test_pairs_by_id_and_drops_untranslated(help_tree: Path) -> None:
    pairs = pair_help_pages(help_tree / "en-US", help_tree / "ja", "ja")
    assert pairs == [
        ("Insert Table", "表の挿入"),
        ("Press Ctrl + C to copy & keep.", "Ctrl + C キーでコピー＆保持します。"),
        ("Line one line two", "一行目 二行目"),
    ]  # par_id3 untranslated, par_id4 missing in ja, par_id6 empty in en; 2 identical pages deduped


def test_missing_page_is_logged(help_tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    pair_help_pages(help_tree / "en-US", help_tree / "ja", "ja")
    assert "1 help pages" in caplog.text


def test_non_japanese_language_keeps_changed_text(tmp_path: Path) -> None:
    pages = {
        "en-US": "<p id='par_id1'>Save</p><p id='par_id2'>PDF</p>",
        "de": "<p id='par_id1'>Speichern</p><p id='par_id2'>PDF</p>",
    }
    for lang, text in pages.items():
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "a.html").write_text(text)
    assert pair_help_pages(tmp_path / "en-US", tmp_path / "de", "de") == [("Save", "Speichern")]


def _help_package(help_tree: Path, lang_dir: str) -> dict[str, str]:
    return {
        f"usr/share/libreoffice/help/{lang_dir}/{page.relative_to(help_tree / lang_dir)}": page.read_text()
        for page in (help_tree / lang_dir).rglob("*.html")
    }


def test_pairs_come_from_the_two_debian_packages(help_tree: Path, fake_apt) -> None:
    fake_apt.add("libreoffice-help-en-us", _help_package(help_tree, "en-US"))
    fake_apt.add("libreoffice-help-ja", _help_package(help_tree, "ja"))
    assert build_libreoffice_help_pairs("ja") == pair_help_pages(help_tree / "en-US", help_tree / "ja", "ja")
    assert fake_apt.calls() == ["download libreoffice-help-en-us libreoffice-help-ja"]


def test_a_package_without_its_help_folder_is_named(help_tree: Path, fake_apt) -> None:
    fake_apt.add("libreoffice-help-en-us", _help_package(help_tree, "en-US"))
    fake_apt.add("libreoffice-help-de", {"usr/share/doc/libreoffice-help-de/copyright": "x"})
    with pytest.raises(RuntimeError, match=r"expected help folder .*/help/de after unpacking"):
        build_libreoffice_help_pairs("de")


@pytest.mark.slow
def test_real_libreoffice_help_corpus(cache_dir: Path) -> None:
    corpus = prepare_corpus(CorpusConfig("libreoffice-help"))
    assert len(corpus) > 15_000
    assert all(contains_japanese(target) for _, target in corpus.train)
    stats = corpus_statistics(corpus)
    assert stats["target"]["japanese_char_fraction"] > 0.5
    assert stats["source"]["japanese_char_fraction"] < 0.01
    assert len(list((cache_dir / "corpora").glob("*.json"))) == 1
    reverse = prepare_corpus(CorpusConfig("libreoffice-help", source_lang="ja", target_lang="en"))
    assert reverse.test == [(target, source) for source, target in corpus.test]
