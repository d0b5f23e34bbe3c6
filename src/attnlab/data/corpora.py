"""Parallel corpora as (source, target) string pairs with a deterministic train/dev/test split.

Four corpora, chosen by ``CorpusConfig.name``:

- ``libreoffice-help``: English-Japanese (or English-LANG) paragraphs of the LibreOffice help,
  fetched from Debian (:mod:`attnlab.data.libreoffice_help`); ~18.6k unique pairs for ``ja``.
- ``libreoffice-combined``: the help pairs plus further sources, by default the LibreOffice UI
  catalogue strings (:mod:`attnlab.data.libreoffice_ui`), optionally also the Debian Reference
  paragraphs (:mod:`attnlab.data.debian_reference`), de-duplicated; dev and test are exactly those of
  ``libreoffice-help`` and the other sources only add training pairs (:mod:`attnlab.data.combined`).
- ``generated``: English dates and numbers and their ``lang`` rendering by babel and num2words
  (:mod:`attnlab.data.generated_pairs`); any size, instant.
- ``user``: one TSV file or two line-aligned files (:mod:`attnlab.data.user_corpus`).

The split is hash-based: a pair goes to ``dev`` or ``test`` by a keyed hash of its English (for
``user``, its first-column) side, so the split does not depend on order or corpus size, the same
sentence never lands in two splits, and ``ja -> en`` sees exactly the ``en -> ja`` split reversed.
Prepared corpora are cached as JSON under ``<cache>/corpora/`` (see
:func:`attnlab.data.cache.default_cache_dir`), written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlab.config import ConfigMixin
from attnlab.data.cache import atomic_write_text, default_cache_dir
from attnlab.data.combined import CombinedSplits, SourcePairs, combine_sources
from attnlab.data.debian_reference import build_debian_reference_pairs
from attnlab.data.generated_pairs import build_generated_pairs
from attnlab.data.libreoffice_help import build_libreoffice_help_pairs
from attnlab.data.libreoffice_ui import build_libreoffice_ui_pairs
from attnlab.data.user_corpus import SkippedLine, UserCorpusError, read_user_pairs

__all__ = [
    "COMBINED_SOURCES",
    "CORPUS_NAMES",
    "DEFAULT_COMBINED_SOURCES",
    "SPLITS",
    "CorpusConfig",
    "ParallelCorpus",
    "assign_split",
    "prepare_corpus",
    "split_pairs",
]

logger = logging.getLogger(__name__)

Pair = tuple[str, str]
SourceCounts = dict[str, dict[str, int]]
CORPUS_NAMES = ("libreoffice-help", "libreoffice-combined", "generated", "user")
COMBINED_SOURCES = ("libreoffice-ui", "debian-reference")
DEFAULT_COMBINED_SOURCES = ("libreoffice-ui",)
SPLITS = ("train", "dev", "test")
_CACHE_FORMAT = 1  # bump when the prepared content of any corpus changes


@dataclass(frozen=True)
class CorpusConfig(ConfigMixin):
    """Which corpus to prepare, in which direction, and how to split it.

    Attributes:
        name: one of :data:`CORPUS_NAMES`.
        source_lang: source language code. For the built-in corpora one side
            must be ``"en"``; ``source_lang="ja", target_lang="en"`` gives the reverse direction.
            For ``user`` both are labels only.
        target_lang: target language code.
        paths: ``user`` only: one TSV file, or the source and the target file.
        size: ``generated`` only: number of pairs.
        seed: seeds the ``generated`` pairs and keys the split hash.
        dev_fraction: expected share of pairs in ``dev``.
        test_fraction: expected share of pairs in ``test``.
        use_cache: read and write the prepared corpus under ``cache_dir``.
        cache_dir: cache root; ``None`` means :func:`~attnlab.data.cache.default_cache_dir`.
        sources: ``libreoffice-combined`` only: the sources added to the help pairs, in order of
            precedence for de-duplication; names from :data:`COMBINED_SOURCES`.
    """

    name: str
    source_lang: str = "en"
    target_lang: str = "ja"
    paths: tuple[str, ...] = ()
    size: int = 20_000
    seed: int = 0
    dev_fraction: float = 0.05
    test_fraction: float = 0.05
    use_cache: bool = True
    cache_dir: str | None = None
    sources: tuple[str, ...] = DEFAULT_COMBINED_SOURCES

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(str(path) for path in self.paths))
        sources = (self.sources,) if isinstance(self.sources, str) else tuple(self.sources)
        object.__setattr__(self, "sources", sources)
        if self.name not in CORPUS_NAMES:
            raise ValueError(f"corpus name {self.name!r} is not one of {list(CORPUS_NAMES)}")
        self._check_sources()
        if not (self.dev_fraction >= 0 and self.test_fraction >= 0 and self.dev_fraction + self.test_fraction < 1):
            raise ValueError(
                f"dev_fraction ({self.dev_fraction}) and test_fraction ({self.test_fraction}) must be >= 0 "
                "and sum to less than 1"
            )
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size ({self.size!r}) must be >= 1: the number of generated pairs")
        if self.name == "user" and len(self.paths) not in (1, 2):
            raise ValueError(f"corpus 'user' needs paths = one TSV or two aligned files, got {list(self.paths)}")
        if self.name != "user" and "en" not in (self.source_lang, self.target_lang):
            raise ValueError(
                f"corpus {self.name!r} pairs English with one language: source_lang ({self.source_lang!r}) "
                f"or target_lang ({self.target_lang!r}) must be 'en'"
            )

    def _check_sources(self) -> None:
        """``sources``: known names, none twice, at least one, and only for ``libreoffice-combined``."""
        for source in self.sources:
            if source not in COMBINED_SOURCES:
                raise ValueError(f"sources ({list(self.sources)}): {source!r} is not one of {list(COMBINED_SOURCES)}")
        if len(set(self.sources)) != len(self.sources) or not self.sources:
            raise ValueError(
                f"sources ({list(self.sources)}) must name each of {list(COMBINED_SOURCES)} at most once, "
                "and at least one (corpus 'libreoffice-help' is the help alone)"
            )
        if self.name != "libreoffice-combined" and self.sources != DEFAULT_COMBINED_SOURCES:
            raise ValueError(
                f"sources ({list(self.sources)}) apply to corpus 'libreoffice-combined' only, not {self.name!r}"
            )

    @property
    def english_first(self) -> bool:
        """Whether the requested direction is the stored one (English, or the first file, as source)."""
        return self.name == "user" or self.source_lang == "en"

    @property
    def other_lang(self) -> str:
        """The non-English language of a built-in corpus."""
        return self.target_lang if self.source_lang == "en" else self.source_lang


@dataclass
class ParallelCorpus:
    """Aligned sentence pairs, split into ``train``, ``dev`` and ``test``.

    Attributes:
        name: the corpus name.
        source_lang: language of ``pair[0]``.
        target_lang: language of ``pair[1]``.
        splits: ``{"train": [...], "dev": [...], "test": [...]}`` of ``(source, target)`` pairs.
        skipped: input lines left out while reading (``user`` corpora only).
        sources: per-source counts of a combined corpus, ``{source: {"entries", "filtered",
            "duplicates", "dropped", "kept"}}`` (see :mod:`attnlab.data.combined`); empty otherwise.
    """

    name: str
    source_lang: str
    target_lang: str
    splits: dict[str, list[Pair]]
    skipped: list[SkippedLine] = field(default_factory=list)
    sources: SourceCounts = field(default_factory=dict)

    @property
    def train(self) -> list[Pair]:
        return self.splits["train"]

    @property
    def dev(self) -> list[Pair]:
        return self.splits["dev"]

    @property
    def test(self) -> list[Pair]:
        return self.splits["test"]

    def __len__(self) -> int:
        return sum(len(pairs) for pairs in self.splits.values())

    def reversed(self) -> ParallelCorpus:
        """The same corpus translating target -> source; splits stay the same pairs."""
        splits = {name: [(target, source) for source, target in pairs] for name, pairs in self.splits.items()}
        sources = {name: dict(counts) for name, counts in self.sources.items()}
        return ParallelCorpus(self.name, self.target_lang, self.source_lang, splits, list(self.skipped), sources)


def assign_split(key: str, seed: int = 0, dev_fraction: float = 0.05, test_fraction: float = 0.05) -> str:
    """The split of one sentence: a keyed BLAKE2b hash mapped to [0, 1) picks test, dev or train."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=str(seed).encode("utf-8")).digest()
    unit = int.from_bytes(digest, "big") / 2**64
    if unit < test_fraction:
        return "test"
    if unit < test_fraction + dev_fraction:
        return "dev"
    return "train"


def split_pairs(
    pairs: Sequence[Pair], seed: int = 0, dev_fraction: float = 0.05, test_fraction: float = 0.05
) -> dict[str, list[Pair]]:
    """Split pairs by :func:`assign_split` of their first side, keeping their order within a split."""
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        splits[assign_split(pair[0], seed, dev_fraction, test_fraction)].append(pair)
    return splits


def _build_pairs(config: CorpusConfig) -> tuple[list[Pair], list[SkippedLine]]:
    if config.name == "libreoffice-help":
        return build_libreoffice_help_pairs(config.other_lang), []
    if config.name == "generated":
        return build_generated_pairs(config.size, config.seed, config.other_lang), []
    pairs, skipped = read_user_pairs(config.paths)
    if not pairs:
        raise UserCorpusError(
            f"user corpus {' and '.join(config.paths)} holds no pairs ({len(skipped)} lines skipped, "
            f"first {skipped[0] if skipped else 'none'}); expected source<TAB>target lines"
        )
    return pairs, skipped


def _read_source(name: str, lang: str) -> SourcePairs:
    """The pairs of one of :data:`COMBINED_SOURCES`."""
    if name == "libreoffice-ui":
        ui = build_libreoffice_ui_pairs(lang)
        return SourcePairs(name, ui.pairs, ui.entries)
    reference = build_debian_reference_pairs(lang)
    return SourcePairs(name, reference.pairs, reference.entries)


def _build_combined(config: CorpusConfig) -> CombinedSplits:
    """The help pairs split as in ``libreoffice-help``, the other sources' pairs added to train."""
    help_splits = split_pairs(
        build_libreoffice_help_pairs(config.other_lang), config.seed, config.dev_fraction, config.test_fraction
    )
    extra = [_read_source(name, config.other_lang) for name in config.sources]
    return combine_sources("libreoffice-help", help_splits, extra)


def _build_splits(config: CorpusConfig) -> tuple[dict[str, list[Pair]], list[SkippedLine], SourceCounts]:
    """The splits, the skipped input lines and the per-source counts of a corpus."""
    if config.name == "libreoffice-combined":
        combined = _build_combined(config)
        return combined.splits, [], combined.sources
    pairs, skipped = _build_pairs(config)
    splits = split_pairs(pairs, config.seed, config.dev_fraction, config.test_fraction)
    _check_train_split(config, splits)
    return splits, skipped, {}


def _check_train_split(config: CorpusConfig, splits: dict[str, list[Pair]]) -> None:
    """A user corpus too small to leave a training pair fails naming its files."""
    if config.name == "user" and not splits["train"]:
        total = sum(len(pairs) for pairs in splits.values())
        raise UserCorpusError(
            f"user corpus {' and '.join(config.paths)}: all {total} pairs fell into dev/test, none into train; "
            f"add more pairs or lower dev_fraction ({config.dev_fraction}) and test_fraction ({config.test_fraction})"
        )


def _cache_key(config: CorpusConfig) -> dict[str, Any]:
    """Everything the stored (English-first) corpus depends on; the direction is not part of it."""
    key: dict[str, Any] = {
        "format": _CACHE_FORMAT,
        "name": config.name,
        "seed": config.seed,
        "dev_fraction": config.dev_fraction,
        "test_fraction": config.test_fraction,
    }
    if config.name == "generated":
        key["size"] = config.size
    # The default sources leave the key as it was before sources could be chosen, so corpora cached
    # then (possibly on machines that cannot fetch packages again) stay valid.
    if config.name == "libreoffice-combined" and config.sources != DEFAULT_COMBINED_SOURCES:
        key["sources"] = list(config.sources)
    if config.name == "user":
        files = [Path(path).resolve() for path in config.paths]
        for path in files:
            if not path.exists():
                raise FileNotFoundError(f"user corpus file {path} does not exist: check data.corpus.paths")
        key["files"] = [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in files]
    else:
        key["lang"] = config.other_lang
    return key


def _cache_path(config: CorpusConfig) -> Path:
    key = _cache_key(config)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    label = "user" if config.name == "user" else f"{config.name}-en-{config.other_lang}"
    root = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    return root / "corpora" / f"{label}-{digest}.json"


def _read_cache(path: Path) -> tuple[dict[str, list[Pair]], list[SkippedLine], SourceCounts] | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        splits = {name: [(pair[0], pair[1]) for pair in stored["splits"][name]] for name in SPLITS}
        skipped = [SkippedLine(**item) for item in stored["skipped"]]
        sources = stored.get("sources", {})  # absent for single-source corpora
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        logger.warning("ignoring unreadable corpus cache %s (%s); rebuilding", path, error)
        return None
    logger.info("loaded corpus from cache %s", path)
    return splits, skipped, sources


def _write_cache(
    path: Path,
    config: CorpusConfig,
    splits: dict[str, list[Pair]],
    skipped: list[SkippedLine],
    sources: SourceCounts,
) -> None:
    stored = {
        "key": _cache_key(config),
        "splits": splits,
        "skipped": [dataclasses.asdict(item) for item in skipped],
    }
    if sources:
        stored["sources"] = sources
    atomic_write_text(path, json.dumps(stored, ensure_ascii=False))
    logger.info("cached corpus at %s", path)


def prepare_corpus(config: CorpusConfig) -> ParallelCorpus:
    """Build (or load from the cache) a split parallel corpus.

    Args:
        config: which corpus and direction; see :class:`CorpusConfig`.

    Returns:
        The corpus with ``source_lang``/``target_lang`` as asked. ``libreoffice-help`` downloads
        two Debian packages on first use (~6 s); later calls read the cache (~0.1 s).

    Raises:
        ValueError: a ``user`` corpus with misaligned files, or an unsupported ``generated`` lang.
        FileNotFoundError: the UI package of ``libreoffice-combined`` holds no catalogue, or the
            Debian Reference package no page.
        UserCorpusError: a ``user`` corpus that is not UTF-8, is empty, or leaves no training pair.
        RuntimeError: the Debian packages could not be fetched.
    """
    path = _cache_path(config) if config.use_cache else None
    cached = _read_cache(path) if path else None
    if cached is None:
        splits, skipped, sources = _build_splits(config)
        if path:
            _write_cache(path, config, splits, skipped, sources)
    else:
        splits, skipped, sources = cached
    if config.english_first:
        return ParallelCorpus(config.name, config.source_lang, config.target_lang, splits, skipped, sources)
    return ParallelCorpus(config.name, config.target_lang, config.source_lang, splits, skipped, sources).reversed()
