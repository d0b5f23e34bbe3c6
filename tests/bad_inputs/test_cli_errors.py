"""Bad command lines: one line on stderr naming the argument and the fix, exit 2, no traceback.

Catalogue rows of issue 16 (docs/bad-inputs.md). ``main()`` runs in-process (fast); one case runs the
installed entry point in a subprocess to check what a shell sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attnlab.cli.main import main


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path / "cache"))


def _exit_code(argv: list[str]) -> int:
    """``main(argv)``; argparse's own errors exit through SystemExit, whose code is returned."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    return lines[0]


USAGE = {
    "no-subcommand": ([], ("attnlab: error:", "COMMAND", "attnlab --help")),
    "unknown-subcommand": (["frobnicate"], ("invalid choice: 'frobnicate'", "train")),
    "train-without-config": (["train"], ("attnlab train: error:", "config", "attnlab train --help")),
    "unknown-option": (["train", "run.yaml", "--frsh"], ("unrecognized arguments: --frsh",)),
    "unknown-corpus": (["data", "prepare", "foo"], ("invalid choice: 'foo'", "generated")),
    "size-not-a-number": (["data", "prepare", "generated", "--size", "x"], ("--size", "invalid int value: 'x'")),
    "classify-without-images": (["classify", "somewhere"], ("attnlab classify: error:", "IMAGE")),
    "translate-without-run": (["translate"], ("attnlab translate: error:", "run_dir")),
}


@pytest.mark.parametrize("case", list(USAGE))
def test_a_usage_error_is_one_line_exit_2(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, fragments = USAGE[case]
    assert _exit_code(argv) == 2
    line = _one_line(capsys.readouterr().err)
    for fragment in fragments:
        assert fragment in line, line


def _bad_prepare(tmp_path: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    source, target = tmp_path / "src.txt", tmp_path / "tgt.txt"
    source.write_text("a\nb\n", encoding="utf-8")
    target.write_text("x\n", encoding="utf-8")
    generated = ["data", "prepare", "generated"]
    user = ["data", "prepare", "user"]
    return {
        "zero-size": ([*generated, "--size", "0"], ("--size (0) must be >= 1",)),
        "no-english-side": ([*generated, "--source-lang", "fr", "--target-lang", "de"], ("'fr'", "'de'", "'en'")),
        "user-without-paths": (user, ("corpus 'user' needs --paths",)),
        "user-path-missing": ([*user, "--paths", str(tmp_path / "nope.tsv")], (str(tmp_path / "nope.tsv"), "exist")),
        "user-path-a-folder": ([*user, "--paths", str(tmp_path)], (str(tmp_path), "is not a file")),
        "aligned-files-of-unequal-length": (
            [*user, "--paths", str(source), str(target)],
            (f"{source} has 2", f"{target} has 1"),
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["zero-size", "no-english-side", "user-without-paths", "user-path-missing", "user-path-a-folder",
     "aligned-files-of-unequal-length"],
)  # fmt: skip
def test_data_prepare_with_bad_options_is_one_line_exit_2(case: str, tmp_path: Path, capsys) -> None:
    argv, fragments = _bad_prepare(tmp_path)[case]
    assert _exit_code(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("attnlab data: error: ") and "--debug" not in line, line
    for fragment in fragments:
        assert fragment in line, line


@pytest.mark.parametrize(
    ("name", "fragments"),
    [("nowhere.yaml", ("does not exist",)), (".", ("cannot read config", "Is a directory"))],
    ids=["missing-config", "config-is-a-folder"],
)
def test_train_on_a_config_that_cannot_be_read_is_one_line_exit_2(tmp_path, capsys, name, fragments) -> None:
    path = tmp_path / name
    assert _exit_code(["train", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(path) in line, line
    for fragment in fragments:
        assert fragment in line, line


def test_a_bad_override_on_the_command_line_is_one_line_exit_2(tmp_path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("task: classification\nmodel: {type: cnn}\ntraining: {max_steps: 1}\n", encoding="utf-8")
    assert _exit_code(["train", str(config), "training.lr=[1,"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "override 'training.lr=[1,'" in line and "not valid YAML" in line


def test_the_entry_point_in_a_shell_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "attnlab.cli.main", "train", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "Warning" not in line and line.strip()]
    assert errors == [f"attnlab train: error: config file {missing} does not exist"], done.stderr


def test_debug_shows_the_traceback_of_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "train", str(tmp_path / "nowhere.yaml")])
