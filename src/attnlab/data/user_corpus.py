"""Parallel text the user brings: two line-aligned files, or one tab-separated file, for the
whole corpus or, as JoeyNMT users keep it, for each of train, dev and test.

Bad lines (empty, no tab, an empty side) are reported with their file and line number and
skipped; a missing or empty file and a structural mismatch (aligned files of different
lengths) are fatal, naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from attnlab.data.text import NotUTF8Error, decode_utf8, normalize_whitespace

__all__ = [
    "SkippedLine",
    "UserCorpusError",
    "read_aligned_pairs",
    "read_tsv_pairs",
    "read_user_pairs",
    "read_user_splits",
]

logger = logging.getLogger(__name__)
_SHOWN_IN_WARNING = 5


class UserCorpusError(ValueError):
    """A user corpus file that cannot be read as parallel text; the message names the file."""


@dataclass(frozen=True)
class SkippedLine:
    """One input line that was left out, and why.

    Attributes:
        path: the file it came from (for aligned files, the source file).
        line_number: 1-based line number.
        reason: what was wrong, e.g. ``"no tab"``.
    """

    path: str
    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.reason}"


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"user corpus file {path} does not exist")
    if not path.is_file():
        raise UserCorpusError(f"user corpus file {path} is not a file")
    # Split on "\n" only: str.splitlines also breaks on U+2028, \x0b, \x1c..., which would misalign.
    try:
        text = decode_utf8(path.read_bytes(), path)
    except NotUTF8Error as error:
        raise UserCorpusError(str(error)) from error
    if not text.strip():
        raise UserCorpusError(f"user corpus file {path} is empty")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _warn_skipped(skipped: list[SkippedLine]) -> None:
    if skipped:
        shown = "; ".join(str(item) for item in skipped[:_SHOWN_IN_WARNING])
        more = f" (and {len(skipped) - _SHOWN_IN_WARNING} more)" if len(skipped) > _SHOWN_IN_WARNING else ""
        logger.warning("skipped %d bad lines: %s%s", len(skipped), shown, more)


def _empty_side(source: str, target: str) -> str | None:
    if not source and not target:
        return "empty line"
    if not source:
        return "empty source side"
    if not target:
        return "empty target side"
    return None


def read_tsv_pairs(path: str | os.PathLike) -> tuple[list[tuple[str, str]], list[SkippedLine]]:
    """Read ``source<TAB>target`` lines.

    Args:
        path: a UTF-8 file, one pair per line, exactly one tab per line.

    Returns:
        ``(pairs, skipped)``: whitespace-normalised pairs in file order, and the lines that were
        left out (no tab, more than one tab, empty line or side), each logged in one warning.
    """
    path = Path(path)
    pairs: list[tuple[str, str]] = []
    skipped: list[SkippedLine] = []
    for number, line in enumerate(_read_lines(path), start=1):
        tabs = line.count("\t")
        if tabs != 1 and line.strip():
            skipped.append(SkippedLine(str(path), number, f"expected 1 tab, found {tabs}"))
            continue
        source, _, target = (normalize_whitespace(part) for part in line.partition("\t"))
        problem = _empty_side(source, target)
        if problem:
            skipped.append(SkippedLine(str(path), number, problem))
            continue
        pairs.append((source, target))
    _warn_skipped(skipped)
    return pairs, skipped


def read_aligned_pairs(
    source_path: str | os.PathLike, target_path: str | os.PathLike
) -> tuple[list[tuple[str, str]], list[SkippedLine]]:
    """Read two files whose line ``i`` translate each other.

    Args:
        source_path: UTF-8 source sentences, one per line.
        target_path: UTF-8 target sentences, as many lines.

    Returns:
        ``(pairs, skipped)`` as in :func:`read_tsv_pairs`; a line empty on either side is skipped.

    Raises:
        UserCorpusError: the files have different numbers of lines; the message names both.
    """
    source_path, target_path = Path(source_path), Path(target_path)
    sources, targets = _read_lines(source_path), _read_lines(target_path)
    if len(sources) != len(targets):
        raise UserCorpusError(
            f"aligned files must have the same number of lines: {source_path} has {len(sources)}, "
            f"{target_path} has {len(targets)}; line i of one must translate line i of the other"
        )
    pairs: list[tuple[str, str]] = []
    skipped: list[SkippedLine] = []
    for number, (raw_source, raw_target) in enumerate(zip(sources, targets), start=1):
        source, target = normalize_whitespace(raw_source), normalize_whitespace(raw_target)
        problem = _empty_side(source, target)
        if problem:
            skipped.append(SkippedLine(str(source_path), number, f"{problem} (target file {target_path})"))
            continue
        pairs.append((source, target))
    _warn_skipped(skipped)
    return pairs, skipped


def read_user_pairs(paths: Sequence[str | os.PathLike]) -> tuple[list[tuple[str, str]], list[SkippedLine]]:
    """Read one TSV file or two aligned files, by the number of ``paths``."""
    if len(paths) == 1:
        return read_tsv_pairs(paths[0])
    if len(paths) == 2:
        return read_aligned_pairs(paths[0], paths[1])
    raise ValueError(f"paths must be one TSV file or two aligned files, got {len(paths)}: {list(paths)}")


def read_user_splits(
    files: Mapping[str, Sequence[str | os.PathLike]],
) -> tuple[dict[str, list[tuple[str, str]]], list[SkippedLine]]:
    """Read each split from its own files (JoeyNMT's ``train`` / ``dev`` / ``test``), no hash split.

    Args:
        files: split name -> one TSV file or the source and the target file of that split.

    Returns:
        ``(splits, skipped)``: the pairs of each split in file order, and the lines left out of all.

    Raises:
        FileNotFoundError: a file does not exist (named).
        UserCorpusError: a file is empty or holds no usable pair (named with its split).
    """
    splits: dict[str, list[tuple[str, str]]] = {}
    skipped: list[SkippedLine] = []
    for split, paths in files.items():
        pairs, bad = read_user_pairs(paths)
        if not pairs:
            raise UserCorpusError(f"{split} files {[str(p) for p in paths]} hold no usable pair ({len(bad)} bad lines)")
        splits[split], skipped = pairs, skipped + bad
    return splits, skipped
