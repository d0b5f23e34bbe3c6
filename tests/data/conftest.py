"""Fixtures of the data tests: an isolated cache, a tiny help tree, a small trained tokenizer, a stand-in apt,
an IDX encoder."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from attnlab.data.generated_pairs import build_generated_pairs
from attnlab.data.tokenizer import TokenizerConfig, TranslationTokenizer

JAPANESE_SENTENCES = [
    ("Insert a table.", "表を挿入します。"),
    ("Click the arrow next to the icon.", "アイコンの横の矢印をクリックします。"),
    ("Choose Tools - Options.", "ツール - オプション を選択します。"),
    ("The selected cells are copied to the clipboard.", "選択したセルがクリップボードにコピーされます。"),
    ("Hold down the Shift key while you drag.", "Shift キーを押しながらドラッグします。"),
]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test-private ``$ATTNLAB_CACHE``: request it in every test that prepares a corpus."""
    root = tmp_path / "cache"
    monkeypatch.setenv("ATTNLAB_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def training_pairs() -> list[tuple[str, str]]:
    """English-Japanese pairs: generated dates and numbers plus a few help-style sentences."""
    return build_generated_pairs(1500, seed=7) + JAPANESE_SENTENCES * 20


@pytest.fixture(scope="session")
def small_tokenizer(training_pairs: list[tuple[str, str]]) -> TranslationTokenizer:
    """A joint 600-piece unigram model trained in well under a second."""
    return TranslationTokenizer.train(training_pairs, TokenizerConfig(vocab_size=600))


_PAGE = """<!DOCTYPE html>
<html lang="{lang}"><head><title>{title}</title>
<script type="text/javascript">var x = "<p id='par_id999'>not a paragraph</p>";</script></head>
<body><div id="DisplayArea">
<a name="bm_id100"></a>
{body}
</div></body></html>
"""

EN_BODY = """<h1 id="hd_id1" dir="auto">Insert <b>Table</b></h1>
<p id="par_id2" class="paragraph">Press <span id="sw1" class="switchinline"><span hidden="true" id="MACsw1" class="MAC"><span class="keycode">Command</span></span><span hidden="true" id="defaultsw1"><span class="keycode">Ctrl</span></span></span><span class="keycode"> + C</span>
   to copy &amp; keep.</p>
<p id="par_id3" class="paragraph">Choose <span class="menuitem">Format - Cells</span>.</p>
<p id="par_id4">Only in English.</p>
<table><tr><td><p id="par_id5">Line one<br>line two</p></td></tr></table>
<p id="par_id6"></p>
<p id="other_id7">Not a help paragraph id.</p>
"""

JA_BODY = """<h1 id="hd_id1" dir="auto"><b>表</b>の挿入</h1>
<p id="par_id2" class="paragraph"><span id="sw1" class="switchinline"><span hidden="true" id="MACsw1" class="MAC"><span class="keycode">Command</span></span><span hidden="true" id="defaultsw1"><span class="keycode">Ctrl</span></span></span><span class="keycode"> + C</span> キーでコピー＆保持します。</p>
<p id="par_id3" class="paragraph">Choose <span class="menuitem">Format - Cells</span>.</p>
<table><tr><td><p id="par_id5">一行目<br>二行目</p></td></tr></table>
<p id="par_id6">空</p>
<p id="other_id7">ヘルプの段落ではない。</p>
"""


@pytest.fixture
def help_tree(tmp_path: Path) -> Path:
    """A help root with ``en-US`` and ``ja`` holding two matching pages and one English-only page."""
    root = tmp_path / "help"
    for lang, body, title in (("en-US", EN_BODY, "Insert Table"), ("ja", JA_BODY, "表の挿入")):
        for page in ("text/swriter/insert.html", "text/scalc/insert_copy.html"):
            path = root / lang / page
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_PAGE.format(lang=lang, title=title, body=body), encoding="utf-8")
    only_english = root / "en-US" / "text" / "shared" / "new.html"
    only_english.parent.mkdir(parents=True)
    only_english.write_text(_PAGE.format(lang="en-US", title="New", body='<p id="par_id1">New page.</p>'))
    return root


# apt-get download copies PKG_*.deb from $FAKE_REPO into the current folder; while the file
# $FAKE_STALE exists it fails, as on a machine without package lists, until apt-get update has
# run. Every call is logged to $FAKE_LOG.
_FAKE_APT_GET = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
if [ "$1" = update ]; then rm -f "$FAKE_STALE"; exit 0; fi
if [ -n "$FAKE_STALE" ] && [ -e "$FAKE_STALE" ]; then echo "E: Unable to locate package $2" >&2; exit 100; fi
shift
for package in "$@"; do
    ls "$FAKE_REPO/${package}"_*.deb >/dev/null 2>&1 || { echo "E: Unable to locate package $package" >&2; exit 100; }
    cp "$FAKE_REPO/${package}"_*.deb .
done
"""


@dataclass
class FakeApt:
    """A package repository served by a stand-in ``apt-get`` on PATH; ``dpkg`` is the real one."""

    repo: Path
    log: Path

    def add(self, package: str, files: dict[str, str | bytes]) -> Path:
        """Build a real .deb named like Debian's (NAME_VERSION_ARCH.deb) holding ``files`` under /."""
        tree = self.repo / f"{package}-tree"
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN" / "control").write_text(
            f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n"
        )
        for name, content in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (tree / name).write_bytes(content)
            else:
                (tree / name).write_text(content, encoding="utf-8")
        deb = self.repo / f"{package}_1.0-1_all.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True
        )
        return deb

    def calls(self) -> list[str]:
        """The apt-get command lines run so far."""
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeApt:
    """An empty :class:`FakeApt`; PATH holds its apt-get and the system's dpkg."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb to build test packages")
    repo, bin_dir = tmp_path / "apt-repo", tmp_path / "apt-bin"
    repo.mkdir()
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(_FAKE_APT_GET)
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(shutil.which('dpkg-deb')).parent}")
    monkeypatch.setenv("FAKE_REPO", str(repo))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "apt.log"))
    monkeypatch.delenv("FAKE_STALE", raising=False)
    return FakeApt(repo, tmp_path / "apt.log")


def _encode_idx(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def encode_idx() -> Callable[..., bytes]:
    """Encode an array as an IDX file: zero magic, dtype ``code``, ndim, big-endian dims, data."""
    return _encode_idx
