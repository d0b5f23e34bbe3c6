"""LibreOffice UI catalogues: the .mo reader, accelerator stripping, filtering, the Debian fetch."""

from __future__ import annotations

import gettext
import struct
from pathlib import Path

import pytest

from attnlab.data.libreoffice_ui import (
    build_libreoffice_ui_pairs,
    clean_ui_pair,
    pair_ui_catalogues,
    read_catalogue,
    strip_accelerators,
)

_HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=1; plural=0;\n"
UI_LC_MESSAGES = "usr/lib/libreoffice/program/resource/ja/LC_MESSAGES"


def encode_mo(messages: dict[str, str]) -> bytes:
    """A GNU .mo file (little-endian, no hash table) holding ``messages`` and a UTF-8 header.

    Keys follow gettext: ``"ctx\\x04msgid"`` for a context, ``"one\\x00many"`` for a plural msgid.
    """
    entries = sorted({"": _HEADER, **messages}.items())
    ids = [key.encode("utf-8") for key, _ in entries]
    strs = [value.encode("utf-8") for _, value in entries]
    count = len(entries)
    data_start = 28 + 16 * count
    blob, tables = b"", []
    for strings in (ids, strs):
        table = []
        for string in strings:
            table.append((len(string), data_start + len(blob)))
            blob += string + b"\x00"
        tables.append(table)
    header = struct.pack("<7I", 0x950412DE, 0, count, 28, 28 + 8 * count, 0, 0)
    offsets = b"".join(struct.pack("<2I", *entry) for table in tables for entry in table)
    return header + offsets + blob


MESSAGES = {
    "svx\x04~Save": "保存(~S)",
    "cui\x04Hori_zontal ruler:": "水平ルーラー(_Z):",
    "sw\x04Insert Table": "表の挿入",
    "sw\x04DPI": "DPI",  # untranslated (no kana or kanji)
    "sc\x04_OK": "_OK",  # identical once the marker is stripped
    "sc\x04Empty": "",
    "sc\x04%1 page\x00%1 pages": "%1 ページ",  # plural
    "No context": "文脈なし",
}


def test_mo_writer_agrees_with_gettext(tmp_path: Path) -> None:
    path = tmp_path / "a.mo"
    path.write_bytes(encode_mo(MESSAGES))
    with open(path, "rb") as handle:
        translations = gettext.GNUTranslations(handle)
    assert translations.pgettext("svx", "~Save") == "保存(~S)"
    assert translations.gettext("No context") == "文脈なし"
    assert translations.npgettext("sc", "%1 page", "%1 pages", 2) == "%1 ページ"


def test_reader_returns_singular_entries_without_context(tmp_path: Path) -> None:
    path = tmp_path / "a.mo"
    path.write_bytes(encode_mo(MESSAGES))
    expected = {(key.rpartition("\x04")[2], value) for key, value in MESSAGES.items() if "\x00" not in key}
    assert sorted(read_catalogue(path)) == sorted(expected)  # header and plural left out


@pytest.mark.parametrize(
    ("english", "translation", "expected"),
    [
        ("~Save", "保存(~S)", ("Save", "保存")),
        ("Column ~Format...", "列の書式(~F)...", ("Column Format...", "列の書式...")),
        ("Hori_zontal ruler:", "水平ルーラー (_Z):", ("Horizontal ruler:", "水平ルーラー:")),
        ("_Name:", "名前（_N）:", ("Name:", "名前:")),
        ("HT_ML Source", "HT_ML ソース", ("HTML Source", "HTML ソース")),
        ("A_pply to %MODULE", "%MODULEに適用", ("Apply to %MODULE", "%MODULEに適用")),
        ("%FILE_NAME was saved", "%FILE_NAME を保存しました", ("%FILE_NAME was saved", "%FILE_NAME を保存しました")),
        ("Automatic _underline_", "自動_下線_", ("Automatic _underline_", "自動_下線_")),
        ("Enter a tilde (~) first", "チルダ (~) を入力", ("Enter a tilde (~) first", "チルダ (~) を入力")),
        ("OPT_PROB_HIT", "OPT_PROB_HIT", ("OPT_PROB_HIT", "OPT_PROB_HIT")),
        ("<wizard_name> on <current_date>", "<current_date> に <wizard_name>", None),
    ],
)
def test_strip_accelerators(english: str, translation: str, expected: tuple[str, str] | None) -> None:
    assert strip_accelerators(english, translation) == (expected or (english, translation))


def test_clean_drops_empty_untranslated_and_identical() -> None:
    assert clean_ui_pair("~Save", "保存(~S)") == ("Save", "保存")
    assert clean_ui_pair("Two\n\nlines", "二行\n\nです") == ("Two lines", "二行 です")
    assert clean_ui_pair("DPI", "DPI") is None
    assert clean_ui_pair("_OK", "_OK") is None
    assert clean_ui_pair("Empty", "") is None
    assert clean_ui_pair("Save", "Speichern", "de") == ("Save", "Speichern")
    assert clean_ui_pair("PDF", "PDF", "de") is None


def test_catalogues_of_a_folder_keep_repeats_and_count_entries(tmp_path: Path) -> None:
    (tmp_path / "b.mo").write_bytes(encode_mo(MESSAGES))
    (tmp_path / "a.mo").write_bytes(encode_mo({"sw\x04Insert Table": "表の挿入"}))
    catalogues = pair_ui_catalogues(tmp_path, "ja")
    singular = sum("\x00" not in key for key in MESSAGES) + 1
    assert catalogues.entries == singular
    assert catalogues.pairs[0] == ("Insert Table", "表の挿入")  # a.mo first
    assert sorted(catalogues.pairs) == sorted(
        [("Insert Table", "表の挿入")] * 2
        + [("Save", "保存"), ("Horizontal ruler:", "水平ルーラー:"), ("No context", "文脈なし")]
    )


def test_a_folder_without_catalogues_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"no .mo catalogue in {tmp_path}"):
        pair_ui_catalogues(tmp_path, "ja")


def test_pairs_come_from_the_debian_package(tmp_path: Path, fake_apt) -> None:
    fake_apt.add("libreoffice-l10n-ja", {f"{UI_LC_MESSAGES}/svx.mo": encode_mo(MESSAGES)})
    (tmp_path / "svx.mo").write_bytes(encode_mo(MESSAGES))
    assert build_libreoffice_ui_pairs("ja") == pair_ui_catalogues(tmp_path, "ja")
    assert fake_apt.calls() == ["download libreoffice-l10n-ja"]


def test_a_package_without_catalogues_is_named(fake_apt) -> None:
    fake_apt.add("libreoffice-l10n-de", {"usr/share/doc/libreoffice-l10n-de/copyright": "x"})
    with pytest.raises(RuntimeError, match=r"expected catalogue folder .*/resource/de/LC_MESSAGES after unpacking"):
        build_libreoffice_ui_pairs("de")
