"""The data sections of a run config: ``data:`` for image classification and for translation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from attnlab.data.corpora import CorpusConfig
from attnlab.data.tokenizer import TokenizerConfig
from attnlab.training.ranges import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, check_ranges

__all__ = ["ImageDataConfig", "TextDataConfig"]


@dataclass
class ImageDataConfig:
    """Images for classification.

    Attributes:
        dataset: ``digits``, ``fashion-mnist`` or ``folder:PATH`` (one sub-folder per class).
        batch_size: training batch size B.
        eval_batch_size: batch size for evaluation.
        augment: apply the data set's recommended augmentation while training.
        crop_padding: with ``augment``, replaces the recommended random-crop padding (0: no crops).
        horizontal_flip: with ``augment``, replaces the recommended choice of random flips.
        val_fraction: digits and folders: share held out for validation.
        test_fraction: digits and folders: share held out for testing.
        val_size: fashion-mnist: training images held out for validation.
        channels: folders: 1 (grayscale) or 3 (RGB).
        image_size: folders: resize every image to this square size; None keeps sizes.
        split_seed: fixes the train/val/test split.
    """

    dataset: str = "digits"
    batch_size: int = 64
    eval_batch_size: int = 512
    augment: bool = True
    crop_padding: int | None = None
    horizontal_flip: bool | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    val_size: int = 5000
    channels: int = 3
    image_size: int | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in ("digits", "fashion-mnist") and not self.dataset.startswith("folder:"):
            raise ValueError(f"dataset {self.dataset!r} must be 'digits', 'fashion-mnist' or 'folder:PATH'")
        check_ranges(self, _IMAGE_RANGES)
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction ({self.val_fraction}) and test_fraction ({self.test_fraction}) must sum below 1"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels ({self.channels}) must be 1 (grayscale) or 3 (RGB)")


_IMAGE_RANGES = {
    "batch_size": COUNT,
    "eval_batch_size": COUNT,
    "crop_padding": NON_NEGATIVE,
    "val_fraction": FRACTION,
    "test_fraction": FRACTION,
    "val_size": NON_NEGATIVE,
    "image_size": COUNT,
}


@dataclass
class TextDataConfig:
    """A parallel corpus for translation.

    Attributes:
        corpus: which corpus and direction (:class:`~attnlab.data.CorpusConfig`).
        tokenizer: the SentencePiece model trained on the train split.
        max_length: pairs with more tokens on either side are dropped from training.
        max_tokens: token budget of a training batch (padded B * max(S, T)).
        pad_to_multiple: training batches pad S and T up to a multiple of this: fewer distinct
            tensor shapes, which the allocator reuses (1: pad to the longest sentence only).
        eval_max_tokens: token budget of an evaluation batch.
        eval_max_sentences: dev sentences decoded for BLEU at each evaluation (None: all).
        max_decode_len_a: greedy decoding stops after a * |x| + b tokens.
        max_decode_len_b: b of that limit.
        no_repeat_ngram_size: decoding (evaluation, ``translate``) never repeats an n-gram of this
            size within a translation; 0 is off.
        repetition_penalty: decoding discourages pieces a translation already holds (Keskar et
            al., 2019); 1 is off.
        length_penalty: alpha of beam search's length penalty ((5 + |Y|) / 6)^alpha (Wu et al.,
            2016); higher favours longer translations, 0 ranks by log-probability.
        avoid_repetitive: beam search returns its best hypothesis that is not degenerate (a word
            4+ times in a row or a 3-gram 3+ times, in the target language's BLEU tokens: the
            repetition rate's rule), when its n-best holds one; a translation (greedy or beam)
            still degenerate is searched again with no 2-gram of pieces repeated.
        mbr: beam search returns the minimum-Bayes-risk hypothesis of its n-best (Kumar & Byrne,
            2004; sentence chrF as the utility, the beam's scores as the evidence) instead of the
            best-scored one.
        dev_paths: a ``user`` corpus kept in split files, as JoeyNMT's ``train`` / ``dev`` /
            ``test``: the dev split's TSV file or source and target files. ``corpus.paths`` are
            then the train split, whole (its ``dev_fraction`` and ``test_fraction`` become 0).
        test_paths: the test split's files, given together with ``dev_paths``.
    """

    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(name="generated"))
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    max_length: int = 128
    max_tokens: int = 4096
    pad_to_multiple: int = 1
    eval_max_tokens: int = 8192
    eval_max_sentences: int | None = 500
    max_decode_len_a: float = 1.5
    max_decode_len_b: float = 10.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    length_penalty: float = 0.6
    avoid_repetitive: bool = False
    mbr: bool = False
    dev_paths: tuple[str, ...] = ()
    test_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_ranges(self, _TEXT_RANGES)
        if not (self.dev_paths or self.test_paths):
            return
        if self.corpus.name != "user":
            raise ValueError(f"dev_paths and test_paths need corpus.name 'user', got {self.corpus.name!r}")
        for name in ("dev_paths", "test_paths"):
            if len(getattr(self, name)) not in (1, 2):
                raise ValueError(f"{name} must be one TSV file or two aligned files, got {list(getattr(self, name))}")
        self.corpus = dataclasses.replace(self.corpus, dev_fraction=0.0, test_fraction=0.0)

    def prepare_corpus(self) -> Any:
        """The :class:`~attnlab.data.ParallelCorpus`: ``corpus`` split by hash, or with ``dev_paths``
        and ``test_paths`` the three splits as the files give them."""
        from attnlab.data.corpora import ParallelCorpus, prepare_corpus
        from attnlab.data.user_corpus import read_user_splits

        corpus = prepare_corpus(self.corpus)
        if not self.dev_paths:
            return corpus
        held_out, skipped = read_user_splits({"dev": self.dev_paths, "test": self.test_paths})
        splits = {"train": corpus.train, **held_out}
        return ParallelCorpus(corpus.name, corpus.source_lang, corpus.target_lang, splits, corpus.skipped + skipped)


_TEXT_RANGES = {
    "max_length": COUNT,
    "max_tokens": COUNT,
    "eval_max_tokens": COUNT,
    "eval_max_sentences": COUNT,
    "max_decode_len_a": NON_NEGATIVE,
    "max_decode_len_b": NON_NEGATIVE,
    "no_repeat_ngram_size": NON_NEGATIVE,
    "repetition_penalty": POSITIVE,
    "length_penalty": NON_NEGATIVE,
    "pad_to_multiple": COUNT,
}
