"""The documentation site: every figure made by ``make figures``, both languages, the CLI reference whole."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnlab import experiments
from attnlab.cli.main import build_parser
from attnlab.training.config import TrainingConfig

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "docs" / "site"
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)[^)]*\)|<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']")


def _hook(name: str):
    """``docs/hooks/NAME.py``, one of the site's MkDocs hooks."""
    spec = importlib.util.spec_from_file_location(f"site_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_hook():
    """The hook that writes the CLI and config reference."""
    return _hook("reference")


def _pages() -> list[Path]:
    return sorted(SITE.glob("*.md"))


def _images(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not a figure
    return [a or b for a, b in IMAGE.findall(text)]


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "attnlab") -> list[str]:
    """Every runnable ``attnlab ...`` command, walked here independently of the hook."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                nested = _leaf_commands(child, f"{prefix} {name}")
                found += nested or [f"{prefix} {name}"]
    return found


def test_the_image_pattern_finds_markdown_and_html_images(tmp_path):
    page = tmp_path / "p.md"
    page.write_text('![a](figures/x/a.png)\n<img alt="b" src="figures/y/b.png">\n```\n![c](not/a/figure.png)\n```\n')
    assert _images(page) == ["figures/x/a.png", "figures/y/b.png"]


def test_every_image_on_a_page_is_declared_by_an_experiment_and_on_disk():
    declared = set(experiments.declared_figures())
    referenced = {(page.name, src) for page in _pages() for src in _images(page)}
    assert referenced, "the site should show figures"
    undeclared = sorted(f"{page}: {src}" for page, src in referenced if src not in declared)
    assert not undeclared, (
        f"figures that no experiment's FIGURES declares (make figures would not make them): {undeclared}"
    )
    missing = sorted(f"{page}: {src}" for page, src in referenced if not (SITE / src).is_file())
    assert not missing, f"figures not on disk (run make figures and commit them): {missing}"


def test_every_page_has_its_english_and_japanese_twin():
    english = {p.name.removesuffix(".md") for p in _pages() if not p.name.endswith(".ja.md")}
    japanese = {p.name.removesuffix(".ja.md") for p in _pages() if p.name.endswith(".ja.md")}
    assert english, "no pages found in docs/site"
    assert english - japanese == set(), f"English pages without a Japanese twin: {sorted(english - japanese)}"
    assert japanese - english == set(), f"Japanese pages without an English twin: {sorted(japanese - english)}"


def test_every_nav_entry_is_a_page_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def entries(nav) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [page for value in nav.values() for page in entries(value)]
        return [page for item in nav for page in entries(item)]

    in_nav = entries(config["nav"])
    english = sorted(p.name for p in _pages() if not p.name.endswith(".ja.md"))
    assert sorted(in_nav) == english


def test_cli_reference_lists_every_subcommand_and_option():
    hook = _reference_hook()
    reference = hook.on_page_markdown(f"before\n{hook.CLI_MARKER}\nafter", page=None, config=None, files=None)
    commands = _leaf_commands(build_parser())
    assert {"attnlab train", "attnlab data prepare", "attnlab visualize"} <= set(commands)
    for command in commands:
        assert f"### `{command}`" in reference, f"{command} is missing from the CLI reference"
    translate = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    own = [a for a in translate.choices["translate"]._actions if a.default is not argparse.SUPPRESS]  # not -h, -v
    for action in own:
        for option in action.option_strings:
            assert f"`{option}" in reference or f", {option}" in reference, f"translate {option} missing"
    for page in ("cli.md", "cli.ja.md"):
        text = (SITE / page).read_text(encoding="utf-8")
        assert hook.CLI_MARKER in text and hook.CONFIG_MARKER in text, f"{page} lost a reference marker"


def test_config_reference_lists_every_training_key_with_its_docstring():
    hook = _reference_hook()
    reference = hook.config_reference()
    for field in dataclasses.fields(TrainingConfig):
        assert re.search(rf"^\| `{field.name}` \|", reference, flags=re.M), f"training.{field.name} missing"
    assert "| `label_smoothing` | float | `0.0` | epsilon_ls of the cross-entropy (0.1 in the paper). |" in reference
    assert "### `model` (type: transformer)" in reference and "`base`, `big`, `small`, `tiny`" in reference


def test_attribute_docs_joins_continuation_lines_and_plain_roles():
    @dataclasses.dataclass
    class Example:
        """One line.

        Attributes:
            first: a value that
                goes on (:class:`~attnlab.data.CorpusConfig`).
            second (int): ``code`` here.

        Returns:
            nothing to read here.
        """

        first: int = 0
        second: int = 1

    docs = _reference_hook().attribute_docs(Example)
    assert docs == {"first": "a value that goes on (`CorpusConfig`).", "second": "`code` here."}


def test_line_breaks_between_japanese_characters_are_joined_outside_code():
    join = _hook("cjk").join_cjk_lines
    text = "最初の\n層では、\n- 項目の\n  続き。\n```text\nコードの\n中\n```\nattnlab は\nPyTorch の\n部品。\n"
    assert join(text) == "最初の層では、\n- 項目の続き。\n```text\nコードの\n中\n```\nattnlab は\nPyTorch の部品。\n"
    assert join("English\nlines stay.\n") == "English\nlines stay.\n"


@pytest.mark.slow
def test_strict_build_succeeds_offline_in_both_languages(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (the test extra includes it)")
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    for page in _pages():
        name = page.name.removesuffix(".ja.md").removesuffix(".md") + ".html"
        assert (site / ("ja/" + name if page.name.endswith(".ja.md") else name)).is_file()
    external = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=[\"']https?://", re.I)
    offenders = [str(p.relative_to(site)) for p in site.rglob("*.html") if external.search(p.read_text("utf-8"))]
    assert not offenders, f"pages that load from the network: {offenders}"
