"""SentencePiece subword tokenisers for translation, joint or one per language.

Special ids are fixed across every model this module trains, so batching and models can rely on
them: ``pad = 0``, ``unk = 1``, ``bos = 2``, ``eos = 3`` (:data:`PAD_ID`, :data:`UNK_ID`,
:data:`BOS_ID`, :data:`EOS_ID`). ``encode`` never adds BOS/EOS; batching does.

Japanese needs no pre-tokeniser: SentencePiece treats text as a raw character stream (Kudo &
Richardson, 2018). ``character_coverage=0.9995`` is the setting its authors recommend for
Japanese and Chinese; ``byte_fallback`` spells the remaining rare characters as UTF-8 bytes instead
of ``<unk>``, so ``decode(encode(x)) == normalize(x)`` holds for any text.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from attnlab.config import ConfigError, ConfigMixin
from attnlab.data.cache import atomic_write_bytes, atomic_write_text

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "SentencePieceTokenizer",
    "TokenizerConfig",
    "TranslationTokenizer",
]

logger = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_MODEL_TYPES = ("unigram", "bpe")
_MANIFEST = "tokenizer.json"
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


@dataclass(frozen=True)
class TokenizerConfig(ConfigMixin):
    """How to train the tokeniser(s).

    Attributes:
        model_type: ``"unigram"`` (Kudo, 2018) or ``"bpe"`` (Sennrich et al., 2016).
        vocab_size: pieces per model, specials included; an upper bound when the text is too
            small to fill it (``hard_vocab_limit=False``).
        joint: one model shared by both sides, or one per language.
        character_coverage: share of characters covered by single-character pieces.
        byte_fallback: spell uncovered characters as bytes rather than ``<unk>``.
        max_sentences: at most this many sentences (sampled) are read per model.
        split_digits: every digit is its own piece, so numbers are spelled digit by digit
            (otherwise pieces such as ``"/02/1"`` or ``"2083"`` merge digits with punctuation).
    """

    model_type: str = "unigram"
    vocab_size: int = 8000
    joint: bool = True
    character_coverage: float = 0.9995
    byte_fallback: bool = True
    max_sentences: int = 1_000_000
    split_digits: bool = False

    def __post_init__(self) -> None:
        if self.model_type not in _MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {list(_MODEL_TYPES)}")
        if self.vocab_size <= EOS_ID + 1:
            raise ValueError(f"vocab_size ({self.vocab_size}) must exceed the {EOS_ID + 1} special ids")
        if isinstance(self.max_sentences, bool) or not isinstance(self.max_sentences, int) or self.max_sentences < 1:
            raise ValueError(f"max_sentences ({self.max_sentences!r}) must be >= 1: sentences read per model")
        if not 0 < self.character_coverage <= 1:
            raise ValueError(f"character_coverage ({self.character_coverage}) must be in (0, 1]")


class SentencePieceTokenizer:
    """One SentencePiece model: text <-> ids, with the fixed special ids of this module.

    Args:
        model_proto: the serialised model (the bytes of a ``.model`` file).
    """

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = bytes(model_proto)
        self._processor = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(cls, texts: Iterable[str], config: TokenizerConfig) -> SentencePieceTokenizer:
        """Train a model on ``texts`` (use the training split only); takes seconds for ~20k sentences."""
        model = io.BytesIO()
        try:
            cls._train_into(model, texts, config)
        except RuntimeError as error:
            raise _explain_training_error(error, config) from error
        tokenizer = cls(model.getvalue())
        logger.info("trained %s tokenizer with %d pieces", config.model_type, tokenizer.vocab_size)
        return tokenizer

    @staticmethod
    def _train_into(model: io.BytesIO, texts: Iterable[str], config: TokenizerConfig) -> None:
        """Run SentencePiece's trainer on ``texts``, writing the model to ``model``."""
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            model_type=config.model_type,
            vocab_size=config.vocab_size,
            hard_vocab_limit=False,
            character_coverage=config.character_coverage,
            byte_fallback=config.byte_fallback,
            input_sentence_size=config.max_sentences,
            split_digits=config.split_digits,
            shuffle_input_sentence=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,  # one thread keeps training reproducible and fast enough at this size
            minloglevel=2,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """Read a ``.model`` file; a damaged one raises ``ValueError`` naming it."""
        try:
            return cls(Path(path).read_bytes())
        except RuntimeError as error:  # SentencePiece's parse error does not say which file
            raise ValueError(f"{path} is not a valid SentencePiece model: {error}") from error

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.model`` file atomically."""
        atomic_write_bytes(path, self.model_proto)

    @property
    def vocab_size(self) -> int:
        """Number of pieces, specials included; ids are ``0 .. vocab_size - 1``."""
        return self._processor.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS."""
        return self._processor.encode(_as_list(texts), out_type=int)

    def pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """The subword strings ``encode`` would give ids for (for labelling attention maps)."""
        return self._processor.encode(_as_list(texts), out_type=str)

    def id_to_piece(self, ids: Sequence[int]) -> list[str]:
        """The pieces of one id sequence (``▁`` marks a word start), e.g. to label attention maps."""
        return [self._processor.id_to_piece(int(i)) for i in ids]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Text of each id sequence; pad, BOS and EOS are dropped."""
        return self._processor.decode([[int(i) for i in seq] for seq in ids])

    def normalize(self, text: str) -> str:
        """The text as the model sees it (NFKC, collapsed spaces): what ``decode(encode(.))`` returns."""
        # SentencePiece writes spaces as U+2581 with a leading one; decode gives plain spaces back.
        return self._processor.normalize(text).replace("\u2581", " ").strip()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SentencePieceTokenizer) and self.model_proto == other.model_proto

    __hash__ = None  # type: ignore[assignment]


def _as_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"texts must be a sequence of strings, got one string {texts[:40]!r}; wrap it in a list")
    return list(texts)


def _explain_training_error(error: RuntimeError, config: TokenizerConfig) -> Exception:
    """SentencePiece's too-small-vocabulary failure as a :class:`ConfigError` that suggests a size."""
    match = _TOO_SMALL.search(str(error))
    if match is None:
        return error
    required = int(match.group(2))
    fallback = " (256 byte pieces for byte_fallback, the characters of the text and 4 special ids)"
    return ConfigError(
        f"data.tokenizer.vocab_size ({config.vocab_size}) is too small for this text: its model needs at least "
        f"{required} pieces{fallback if config.byte_fallback else ''}; set data.tokenizer.vocab_size to {required} "
        f"or more (e.g. {max(2 * required, 1000)})"
    )


@dataclass
class TranslationTokenizer:
    """The source and target tokenisers of a translation task (the same object when joint).

    Attributes:
        source: tokenises source sentences.
        target: tokenises target sentences.
        config: how they were trained.
    """

    source: SentencePieceTokenizer
    target: SentencePieceTokenizer
    config: TokenizerConfig

    @classmethod
    def train(cls, pairs: Sequence[tuple[str, str]], config: TokenizerConfig) -> TranslationTokenizer:
        """Train on ``(source, target)`` pairs: pass the corpus' ``train`` split, never dev or test."""
        if not pairs:
            raise ValueError("pairs is empty; a tokenizer needs training text")
        sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
        if config.joint:
            joint = SentencePieceTokenizer.train(sources + targets, config)
            return cls(joint, joint, config)
        return cls(SentencePieceTokenizer.train(sources, config), SentencePieceTokenizer.train(targets, config), config)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``joint.model`` (or ``source.model`` and ``target.model``) and ``tokenizer.json``."""
        directory = Path(directory)
        files = (
            {"source": "joint.model", "target": "joint.model"}
            if self.config.joint
            else {
                "source": "source.model",
                "target": "target.model",
            }
        )
        self.source.save(directory / files["source"])
        self.target.save(directory / files["target"])
        manifest = {
            "config": self.config.to_dict(),
            "files": files,
            "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        }
        atomic_write_text(directory / _MANIFEST, json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TranslationTokenizer:
        """Read what :meth:`save` wrote."""
        directory = Path(directory)
        manifest = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
        config = TokenizerConfig.from_dict(manifest["config"])
        source = SentencePieceTokenizer.load(directory / manifest["files"]["source"])
        target = source if config.joint else SentencePieceTokenizer.load(directory / manifest["files"]["target"])
        return cls(source, target, config)
