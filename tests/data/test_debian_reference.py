"""Debian Reference: section-by-section pairing of the English and Japanese XHTML pages, the Debian fetch."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnlab.data.debian_reference import (
    build_debian_reference_pairs,
    clean_reference_pair,
    pair_reference_pages,
    pair_reference_sections,
    read_reference_sections,
)

_PAGE = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.1//EN" "http://www.w3.org/TR/xhtml11/DTD/xhtml11.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><body>
<div class="navheader"><table><tr><th>{nav}</th></tr></table></div>
<div class="chapter">
  <div class="titlepage"><div><div><h1 class="title"><a id="_tutorials"/>{chapter}</h1></div></div></div>
  <div class="toc"><p><strong>{toc}</strong></p></div>
  <p>{intro}<a href="#ftn.x" class="footnote" id="x"><sup class="footnote">[1]</sup></a></p>
  <div class="section">
    <div class="titlepage"><div><div><h2 class="title"><a id="_aligned"/>{aligned}</h2></div></div></div>
    <p>{shell}</p>
    <pre class="screen">$ ls -l</pre>
    <div class="itemizedlist"><ul class="itemizedlist">
      <li class="listitem"><p>{item}</p></li>
      <li class="listitem"><p>{untranslated}</p></li>
    </ul></div>
    <div class="table"><a id="listofshells"/><p class="title"><strong>{table}</strong></p>
      <div class="table-contents"><table class="table"><tbody>
        <tr><td>bash</td><td>{cell}</td></tr>
      </tbody></table></div></div>
  </div>
  <div class="section">
    <div class="titlepage"><div><div><h2 class="title"><a id="_misaligned"/>{misaligned}</h2></div></div></div>
    {misaligned_paragraphs}
  </div>
  {only_english}
  <div class="footnotes"><div id="ftn.x" class="footnote">
    <p><a href="#x" class="para"><sup class="para">[1] </sup></a>{footnote}</p></div></div>
</div>
</body></html>
"""

ENGLISH = _PAGE.format(
    nav="Chapter 1. GNU/Linux tutorials",
    chapter="Chapter 1. GNU/Linux tutorials",
    toc="Table of Contents",
    intro="I think learning a computer system is like learning a new foreign language.",
    aligned="1.1. Console basics",
    shell="The shell prompt\n  shows your user name.",
    item='Run <code class="literal">ls</code> to list files.',
    untranslated="Not yet translated.",
    table="Table 1.1. List of shells",
    cell="GNU Bourne Again SHell",
    misaligned="1.2. Misaligned",
    misaligned_paragraphs="<p>One paragraph.</p><p>Another paragraph.</p>",
    only_english='<div class="section"><div class="titlepage"><h2 class="title"><a id="_new"/>1.3. New</h2>'
    "</div><p>Only in English.</p></div>",
    footnote="Even the older vim can start in the sane mode.",
)
JAPANESE = _PAGE.format(
    nav="第1章 GNU/Linux チュートリアル",
    chapter="第1章 GNU/Linux チュートリアル",
    toc="目次",
    intro="コンピューターシステムを学ぶことは新しい外国語を\n  学ぶことに似ていると考えます。",
    aligned="1.1. コンソールの基礎",
    shell="シェルプロンプトは\n  ユーザー名を表示します。",
    item='ファイルを一覧するには <code class="literal">ls</code> を実行します。',
    untranslated="Not yet translated.",
    table="表1.1 シェルのリスト",
    cell="GNU Bourne Again SHell",
    misaligned="1.2. ずれ",
    misaligned_paragraphs="<p>一つの段落と別の段落。</p>",
    only_english="",
    footnote="古い vim でも正気なモードで起動できます。",
)
EXPECTED_PAIRS = [
    ("GNU/Linux tutorials", "GNU/Linux チュートリアル"),
    (
        "I think learning a computer system is like learning a new foreign language.",
        "コンピューターシステムを学ぶことは新しい外国語を学ぶことに似ていると考えます。",
    ),
    ("Even the older vim can start in the sane mode.", "古い vim でも正気なモードで起動できます。"),
    ("Console basics", "コンソールの基礎"),
    ("The shell prompt shows your user name.", "シェルプロンプトはユーザー名を表示します。"),
    ("Run ls to list files.", "ファイルを一覧するには ls を実行します。"),
    ("List of shells", "シェルのリスト"),
]


def test_aligned_sections_pair_block_by_block_and_the_rest_is_dropped() -> None:
    reference = pair_reference_sections(read_reference_sections(ENGLISH), read_reference_sections(JAPANESE))
    assert reference.pairs == EXPECTED_PAIRS
    # chapter: title, intro, footnote; aligned: title, shell, 2 items, table title, 2 cells;
    # misaligned: title + 2; only-English: title + 1 (the screen and the navigation are not counted).
    assert reference.entries == 3 + 7 + 3 + 2
    assert (reference.sections, reference.misaligned) == (4, 2)


def test_sections_are_keyed_by_title_id_and_code_blocks_are_kept_as_placeholders() -> None:
    sections = read_reference_sections(ENGLISH)
    assert list(sections) == ["_tutorials", "_aligned", "_misaligned", "_new"]
    kinds = [kind for kind, _ in sections["_aligned"]]
    assert kinds == ["h2.title", "p.", "pre.screen", "p.", "p.", "p.title", "td.", "td."]
    assert sections["_aligned"][2] == ("pre.screen", None)


def test_a_changed_block_sequence_drops_the_section() -> None:
    japanese = JAPANESE.replace('<pre class="screen">$ ls -l</pre>', "<p>余分な段落です。</p>")
    reference = pair_reference_sections(read_reference_sections(ENGLISH), read_reference_sections(japanese))
    assert reference.pairs == EXPECTED_PAIRS[:3]
    assert reference.misaligned == 3


@pytest.mark.parametrize(
    ("kind", "english", "translation", "expected"),
    [
        ("h1.title", "Appendix A. Appendix", "付録A 補遺", ("Appendix", "補遺")),
        ("h3.title", "3.1.1. Stage 1: the UEFI", "3.1.1. 1段目: UEFI", ("Stage 1: the UEFI", "1段目: UEFI")),
        (
            "p.title",
            "Table 3.1. List of boot loaders",
            "表3.1 ブートローダーのリスト",
            ("List of boot loaders", "ブートローダーのリスト"),
        ),
        ("p.", "3.1. is a version.", "3.1. は版です。", ("3.1. is a version.", "3.1. は版です。")),  # not a title
        ("p.", "A  line\nbreak", "改行\nです and\nmore", ("A line break", "改行です and more")),
        ("td.", "bash", "bash", None),
        ("p.", "Untranslated.", "Untranslated too.", None),
        ("p.", "Empty", "  ", None),
    ],
)
def test_clean_pair(kind: str, english: str, translation: str, expected: tuple[str, str] | None) -> None:
    assert clean_reference_pair(kind, english, translation) == expected


def _write_pages(folder: Path, pages: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        (folder / name).write_text(text, encoding="utf-8")


def test_pages_pair_by_name_and_a_page_without_counterpart_is_all_misaligned(tmp_path: Path) -> None:
    _write_pages(tmp_path, {"ch01.en.html": ENGLISH, "ch01.ja.html": JAPANESE, "ch02.en.html": ENGLISH})
    reference = pair_reference_pages(tmp_path, "ja")
    assert reference.pairs == EXPECTED_PAIRS
    assert (reference.entries, reference.sections, reference.misaligned) == (30, 8, 6)


def test_a_folder_without_pages_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"no \\*.en.html page in {tmp_path}"):
        pair_reference_pages(tmp_path, "ja")


def test_pairs_come_from_the_debian_packages(tmp_path: Path, fake_apt) -> None:
    fake_apt.add("debian-reference-en", {"usr/share/debian-reference/ch01.en.html": ENGLISH})
    fake_apt.add("debian-reference-ja", {"usr/share/debian-reference/ch01.ja.html": JAPANESE})
    reference = build_debian_reference_pairs("ja")
    assert reference.pairs == EXPECTED_PAIRS and reference.entries == 15
    assert fake_apt.calls() == ["download debian-reference-en debian-reference-ja"]


def test_a_package_without_pages_is_named(fake_apt) -> None:
    fake_apt.add("debian-reference-en", {"usr/share/doc/debian-reference-en/copyright": "x"})
    fake_apt.add("debian-reference-ja", {"usr/share/doc/debian-reference-ja/copyright": "x"})
    with pytest.raises(RuntimeError, match=r"expected folder .*/usr/share/debian-reference after unpacking"):
        build_debian_reference_pairs("ja")
