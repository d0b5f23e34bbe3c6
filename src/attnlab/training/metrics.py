"""Metrics: the JSON-lines / TensorBoard log, classification and translation scores.

Translation scores come from sacrebleu; a Japanese (or Chinese, Korean) target is tokenised
for BLEU with MeCab (``ja-mecab``, from ``sacrebleu[ja]``) when it imports, else by character,
and the signature string of each score is returned with it. Outputs too short for BLEU's 4-grams
get an effective-order BLEU and a note besides the standard score. The repetition rate counts
degenerate outputs (a token 4+ times in a row, or a 3-gram 3+ times) in BLEU's own tokens.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MetricsLogger",
    "bleu_tokenizer_for",
    "classification_metrics",
    "confusion_matrix",
    "is_repetitive",
    "repetition_rate",
    "save_confusion_matrix_png",
    "scalar_metrics",
    "translation_metrics",
    "word_tokenizer",
]

logger = logging.getLogger(__name__)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers of a metrics dict (lists, matrices and strings left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsLogger:
    """Appends one JSON object per record to ``metrics.jsonl``; mirrors scalars to TensorBoard.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard events under ``run_dir/tensorboard`` if it imports.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._tensorboard(Path(run_dir) / "tensorboard") if tensorboard else None

    @staticmethod
    def _tensorboard(directory: Path) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            logger.info("tensorboard is not installed; writing metrics.jsonl only")
            return None
        return SummaryWriter(str(directory))

    def log(self, kind: str, step: int, metrics: Mapping[str, Any]) -> None:
        """Write ``{"kind", "step", "time", **metrics}``; ``kind`` is e.g. ``train``, ``val``, ``test``."""
        record = {"kind": kind, "step": step, "time": time.time(), **metrics}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
        if self._writer is not None:
            for key, value in scalar_metrics(metrics).items():
                if math.isfinite(value):
                    self._writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        """Flush and close TensorBoard."""
        if self._writer is not None:
            self._writer.close()


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(K, K)`` counts, row = true class, column = predicted class."""
    index = labels.long() * num_classes + predictions.long()  # (N,)
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(predictions: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class accuracy (recall) and the confusion matrix as plain values."""
    matrix = confusion_matrix(predictions, labels, len(classes))
    totals = matrix.sum(dim=1).clamp(min=1)
    per_class = (matrix.diag().double() / totals).tolist()
    return {
        "accuracy": float(matrix.diag().sum()) / max(int(matrix.sum()), 1),
        "per_class_accuracy": dict(zip(classes, per_class)),
        "confusion_matrix": matrix.tolist(),
    }


def save_confusion_matrix_png(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Draw a confusion matrix (rows true, columns predicted) to a PNG with matplotlib's Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = torch.as_tensor(matrix, dtype=torch.float64)
    k = len(classes)
    figure = Figure(figsize=(1.2 + 0.55 * k, 1.0 + 0.5 * k))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(counts.numpy(), cmap="Blues")
    axes.set_xticks(range(k), classes, rotation=45, ha="right")
    axes.set_yticks(range(k), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    peak = float(counts.max()) or 1.0
    for i in range(k):
        for j in range(k):
            value = int(counts[i, j])
            axes.text(
                j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > peak / 2 else "black"
            )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------------------------------------
# Translation
# ---------------------------------------------------------------------------------------------

_CJK_FALLBACK = {"ja": "char", "zh": "zh", "ko": "char"}


def bleu_tokenizer_for(target_lang: str) -> str:
    """sacrebleu's tokeniser for a target language: ``ja-mecab`` for Japanese if MeCab imports, else
    ``char``; ``zh`` for Chinese; ``13a`` otherwise."""
    if target_lang == "ja":
        try:
            import MeCab  # noqa: F401  (sacrebleu[ja])
        except ImportError:
            logger.warning("MeCab is not installed (pip install 'sacrebleu[ja]'); BLEU uses tokenize='char'")
            return "char"
        return "ja-mecab"
    return _CJK_FALLBACK.get(target_lang, "13a")


def word_tokenizer(target_lang: str) -> Callable[[str], list[str]]:
    """text -> BLEU's tokens for ``target_lang`` (:func:`bleu_tokenizer_for`): MeCab words for Japanese."""
    from sacrebleu.metrics import BLEU

    tokenize = BLEU(tokenize=bleu_tokenizer_for(target_lang)).tokenizer
    return lambda text: tokenize(text).split()


def is_repetitive(tokens: Sequence[str], run: int = 4, ngram: int = 3, count: int = 3) -> bool:
    """Whether a token comes ``run``+ times in a row, or some ``ngram``-gram ``count``+ times (overlaps count)."""
    if any(len(set(tokens[i : i + run])) == 1 for i in range(len(tokens) - run + 1)):
        return True
    grams = Counter(tuple(tokens[i : i + ngram]) for i in range(len(tokens) - ngram + 1))
    return any(n >= count for n in grams.values())


def repetition_rate(hypotheses: Sequence[str], tokenize: Callable[[str], str]) -> float:
    """Share of ``hypotheses`` that :func:`is_repetitive` finds degenerate, 0 for none.

    Args:
        hypotheses: decoded system outputs.
        tokenize: text -> space-separated tokens; :func:`translation_metrics` passes BLEU's own
            sacrebleu tokeniser, so a "token" of a Japanese output is a MeCab word (``ja-mecab``)
            or a character (``char``), and a looping word is caught in either.
    """
    flagged = sum(is_repetitive(tokenize(h).split()) for h in hypotheses)
    return flagged / len(hypotheses) if hypotheses else 0.0


def translation_metrics(hypotheses: Sequence[str], references: Sequence[str], target_lang: str) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu) with their signatures, the exact-match rate and the
    repetition rate (:func:`repetition_rate`, in BLEU's tokens).

    Args:
        hypotheses: decoded system outputs.
        references: one reference per hypothesis.
        target_lang: picks BLEU's tokeniser (:func:`bleu_tokenizer_for`).
    """
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(tokenize=bleu_tokenizer_for(target_lang)), CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)])
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)])
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references))
    metrics = {
        "bleu": bleu_score.score,
        "chrf": chrf_score.score,
        "exact_match": exact / max(len(references), 1),
        "repetition_rate": repetition_rate(hypotheses, bleu.tokenizer),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }
    if hypotheses and bleu_score.totals[-1] == 0:
        metrics.update(_short_segment_bleu(hypotheses, references, target_lang))
    return metrics


def _short_segment_bleu(hypotheses: Sequence[str], references: Sequence[str], target_lang: str) -> dict[str, Any]:
    """BLEU over the n-gram orders present, for outputs that hold no 4-gram at all.

    BLEU's geometric mean needs the 4-gram precision, which is 0/0 when no hypothesis has 4
    tokens (short references, such as dates or numbers): sacrebleu then returns 0 whatever the
    output. ``bleu`` stays that standard score, comparable with published ones and steady for
    checkpoint selection; ``bleu_effective_order`` is sacrebleu's ``effective_order=True``
    score (the mean over orders 1..n of the longest n-grams present, as for sentence-level BLEU),
    and ``bleu_note`` says why the two differ.
    """
    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize=bleu_tokenizer_for(target_lang), effective_order=True)
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    order = max((n + 1 for n, total in enumerate(score.totals) if total), default=0)
    return {
        "bleu_effective_order": score.score,
        "bleu_note": (
            f"no output has {len(score.totals)} tokens, so BLEU's {len(score.totals)}-gram precision is undefined "
            f"and sacrebleu gives 0; bleu_effective_order uses n-grams up to {order} ({bleu.get_signature()})"
        ),
    }
