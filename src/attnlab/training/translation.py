"""Translation as a :class:`~attnlab.training.task.Task`: a Transformer on a parallel corpus.

SentencePiece is trained on the train split only and saved with every checkpoint; batches are
token-budget batches; the loss is label-smoothed cross-entropy over non-pad target tokens; dev
evaluation reports loss, perplexity, BLEU and chrF (sacrebleu, with signatures) and exact match
of greedy or beam-search translations by a :class:`~attnlab.inference.Translator` of the model.

Shapes: B batch, S source length, T target length, V target vocabulary.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    ParallelCorpus,
    TokenBudgetBatchSampler,
    TranslationBatch,
    TranslationDataset,
    TranslationTokenizer,
    collate_translation,
)
from attnlab.inference.translator import Translator
from attnlab.models.transformer import Transformer
from attnlab.training.checkpoints import CheckpointError
from attnlab.training.config import RunConfig
from attnlab.training.linear_cross_entropy import linear_cross_entropy
from attnlab.training.metrics import translation_metrics

__all__ = ["TOKENIZER_DIR", "TranslationTask", "beam_suffix"]

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
_SPLITS = ("train", "dev", "test")


def _output_projection(model: nn.Module) -> nn.Linear | None:
    """The bias-free output projection of a Transformer (inside DDP or not) whose forward can stop
    before it (``features_only``); None for other models."""
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if isinstance(core, Transformer) and core.output.bias is None:
        return core.output
    return None


def beam_suffix(beam_size: int) -> str:
    """What names a report of beam-search output: ``""`` for greedy, ``"_beam5"`` for beam 5."""
    return "" if beam_size == 1 else f"_beam{beam_size}"


class TranslationTask:
    """Sequence-to-sequence translation; selects checkpoints on dev BLEU.

    Args:
        config: a run config with ``task: translation`` and a ``transformer`` model.
    """

    unit = "tokens"
    eval_split = "dev"
    selection_metric = "bleu"
    selection_mode = "max"

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.corpus: ParallelCorpus | None = None
        self.tokenizer: TranslationTokenizer | None = None
        self.model_config: Any = None
        self.device = torch.device("cpu")
        self._train: tuple[TranslationDataset, TokenBudgetBatchSampler] | None = None

    # ----------------------------------------------------------------------------- setup
    def prepare(self, device: torch.device, restore_from: Path | None = None, *, need_data: bool = True) -> None:
        """Prepare the corpus; load the tokenizer from ``restore_from`` or train it on the train split."""
        self.device = device
        if need_data:
            self._check_model_config()  # before the corpus, which can take minutes to read
            self.corpus = self.config.data.prepare_corpus()
        saved = Path(restore_from) / TOKENIZER_DIR if restore_from is not None else None
        if saved is not None:
            if not (saved / "tokenizer.json").is_file():
                raise FileNotFoundError(
                    f"checkpoint {restore_from} is incomplete: missing {TOKENIZER_DIR}/tokenizer.json"
                )
            try:
                self.tokenizer = TranslationTokenizer.load(saved)
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise CheckpointError(f"cannot read the tokenizer of checkpoint {restore_from}: {error}") from error
        elif self.corpus is not None:
            logger.info("training SentencePiece on %d train pairs", len(self.corpus.train))
            self.tokenizer = TranslationTokenizer.train(self.corpus.train, self.config.data.tokenizer)
        else:
            raise ValueError("prepare needs data or a checkpoint to read the tokenizer from")
        self._train = None

    def _check_model_config(self) -> None:
        """Raise the error ``build_model`` would raise for the model config, with the configured
        vocabulary size standing in for the tokenizer's."""
        size = self.config.data.tokenizer.vocab_size
        stand_in = self._derived_model_fields(size, size)
        self.config.model.resolve(
            **{key: value for key, value in stand_in.items() if key not in self.config.model.params}
        )

    @staticmethod
    def _derived_model_fields(src_vocab_size: int, tgt_vocab_size: int) -> dict[str, int]:
        """The model fields the data decides: vocabulary sizes and special ids."""
        return {
            "src_vocab_size": src_vocab_size,
            "tgt_vocab_size": tgt_vocab_size,
            "pad_id": PAD_ID,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
        }

    @property
    def target_lang(self) -> str:
        """The target language code (picks BLEU's tokeniser)."""
        return self.config.data.corpus.target_lang

    def build_model(self) -> nn.Module:
        """A Transformer or RNN seq2seq sized to the tokenizer's vocabularies, on the task's device."""
        derived = self._derived_model_fields(self.tokenizer.source.vocab_size, self.tokenizer.target.vocab_size)
        self.model_config = self.config.model.resolve(**derived)
        return self.config.model.build(self.model_config).to(self.device)

    def resolved_config(self) -> RunConfig:
        """The config with every model field written out."""
        model = dataclasses.replace(self.config.model, preset=None, params=self.model_config.to_dict())
        return dataclasses.replace(self.config, model=model)

    def model_width(self) -> int:
        return self.model_config.d_model

    # ----------------------------------------------------------------------------- training
    def _dataset(self, split: str) -> TranslationDataset:
        if split not in _SPLITS:
            raise ValueError(f"split {split!r} is not one of {list(_SPLITS)}")
        return TranslationDataset.from_pairs(self.corpus.splits[split], self.tokenizer, self.config.data.max_length)

    def _train_data(self) -> tuple[TranslationDataset, TokenBudgetBatchSampler]:
        if self._train is None:
            dataset = self._dataset("train")
            costs = dataset.costs(self.config.data.pad_to_multiple)
            sampler = TokenBudgetBatchSampler(costs, self.config.data.max_tokens, seed=self.config.seed)
            self._train = (dataset, sampler)
        return self._train

    def batches_per_epoch(self) -> int:
        _dataset, sampler = self._train_data()
        return len(sampler.batches_for_epoch(0))

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[TranslationBatch]:
        dataset, sampler = self._train_data()
        sampler.set_epoch(epoch, skip_batches=start_batch)
        multiple = self.config.data.pad_to_multiple
        return (collate_translation([dataset[i] for i in indices], multiple) for indices in sampler)

    def batch_units(self, batch: TranslationBatch) -> int:
        return int(batch.src_lengths.sum()) + batch.num_target_tokens

    def loss(
        self, model: nn.Module, batch: TranslationBatch, label_smoothing: float | None = None
    ) -> tuple[torch.Tensor, int]:
        """Summed label-smoothed cross-entropy over non-pad target tokens, and their count.

        A Transformer's output projection and loss are computed together in row chunks
        (:func:`linear_cross_entropy`: same value and gradients, without the whole ``(B, T, V)``
        logits); other models' logits go to ``F.cross_entropy``.
        """
        batch = batch.to(self.device)
        smoothing = self.config.training.label_smoothing if label_smoothing is None else label_smoothing
        targets = batch.tgt_out.reshape(-1)  # (B T,)
        head = _output_projection(model)
        if head is not None:
            features = model(batch.src, batch.tgt_in, features_only=True)  # (B, T, D)
            features = features.reshape(-1, features.shape[-1])  # (B T, D)
            loss = linear_cross_entropy(features, head.weight, targets, ignore_index=PAD_ID, label_smoothing=smoothing)
            return loss, batch.num_target_tokens
        logits = model(batch.src, batch.tgt_in).float()  # (B, T, V)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets,
            ignore_index=PAD_ID,
            reduction="sum",
            label_smoothing=smoothing,
        )
        return loss, batch.num_target_tokens

    # ----------------------------------------------------------------------------- evaluation
    def _eval_batches(self, dataset: TranslationDataset) -> Iterable[TranslationBatch]:
        sampler = TokenBudgetBatchSampler(dataset.costs(), self.config.data.eval_max_tokens, shuffle=False)
        return (collate_translation([dataset[i] for i in indices]) for indices in sampler)

    def evaluate(
        self,
        model: nn.Module,
        split: str,
        output_dir: Path | None = None,
        beam_size: int = 1,
        int8: bool = False,
        translations_name: str | None = None,
    ) -> dict[str, Any]:
        """Loss and perplexity (no smoothing) on a split; BLEU, chrF and exact match of greedy
        (``beam_size`` 1) or beam-search translations, written to ``output_dir/translations_name``
        (default ``translations_<split>.tsv``, ``translations_<split>_beam<N>.tsv`` for beams).
        ``int8`` decodes with int8 products (``Translator(int8=True)``); the loss stays fp32."""
        dataset = self._dataset(split)
        total, tokens = 0.0, 0
        with torch.no_grad():
            for batch in self._eval_batches(dataset):
                loss, count = self.loss(model, batch, label_smoothing=0.0)
                total, tokens = total + float(loss), tokens + count
        loss = total / max(tokens, 1)
        # eval_max_sentences caps the dev decoding done during training; test is always decoded whole.
        limit = self.config.data.eval_max_sentences if split == self.eval_split else None
        pairs = self.corpus.splits[split][:limit]
        translator = Translator(model, self.tokenizer, self.config.data, int8=int8)
        hypotheses = translator.translate([source for source, _ in pairs], beam=beam_size)
        references = [target for _, target in pairs]
        metrics = {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "sentences": len(pairs),
            "beam_size": beam_size,
            **translation_metrics(hypotheses, references, self.target_lang),
        }
        if output_dir is not None:
            path = Path(output_dir) / (translations_name or f"translations_{split}{beam_suffix(beam_size)}.tsv")
            rows = [f"{s}\t{r}\t{h}" for (s, r), h in zip(pairs, hypotheses)]
            path.write_text("source\treference\thypothesis\n" + "\n".join(rows) + "\n", encoding="utf-8")
            metrics["translations_file"] = str(path)
        return metrics

    def write_extras(self, directory: Path) -> None:
        """The SentencePiece model(s) under ``tokenizer/``."""
        target = Path(directory) / TOKENIZER_DIR
        target.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(target)
