"""``Translator``: a trained seq2seq model, its tokenizer and its length limits, as one object
that turns sentences into translations (and, on request, the source attention behind them).

Built by :func:`attnlab.load` from a run directory, or directly from a model in memory (the
training task evaluates through one): building it copies no weights.

Shapes: B sentences, S source pieces, T target pieces (EOS included).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data import EOS_ID, PAD_ID, TranslationExample, TranslationTokenizer, collate_translation
from attnlab.decoding import IncrementalDecoder, Utf8Constraint, beam_search, greedy_search
from attnlab.decoding.constraints import decoding_processors
from attnlab.decoding.nbest import select_hypothesis
from attnlab.decoding.search import SearchResult
from attnlab.inference.engine import DecodingEngine
from attnlab.training.config import TextDataConfig
from attnlab.training.devices import autocast_to
from attnlab.training.metrics import is_repetitive, word_tokenizer
from attnlab.viz.capture import CaptureSpec, capture
from attnlab.viz.maps import AttentionMaps

__all__ = ["Translation", "Translator", "strip_special"]

logger = logging.getLogger(__name__)


@dataclass
class Translation:
    """A translation and the attention behind it.

    Attributes:
        source: the input sentence.
        translation: the output sentence.
        source_pieces: the S SentencePiece pieces the model read (after the length limit).
        target_pieces: the T pieces it generated, EOS shown as ``</s>``.
        attention: the maps asked for, of this sentence alone (batch dim 1, padding cut), labelled
            ``source``, ``target`` and ``target_in`` (``AttentionMaps``): what the model computes
            teacher-forced on the returned hypothesis, so for a beam search the maps of the
            hypothesis returned.
    """

    source: str
    translation: str
    source_pieces: list[str]
    target_pieces: list[str]
    attention: AttentionMaps

    def alignment(self, layer: int = -1) -> Tensor:
        """``(T, S)``: the source attention of a decoder layer (the last by default), mean over the
        heads captured; each row sums to 1. Needs the ``cross`` (or ``rnn_source``) maps captured."""
        kind = "rnn_source" if self.attention.select("rnn_source") else "cross"
        return self.attention[kind, layer][0].float().mean(dim=0)


def strip_special(ids: Sequence[int]) -> list[int]:
    """Generated ids up to (not including) the first EOS, without padding."""
    out = []
    for token in ids:
        if token == EOS_ID:
            break
        if token != PAD_ID:
            out.append(token)
    return out


def _piece_labels(tokenizer, ids: Sequence[int]) -> list[str]:
    """SentencePiece pieces of ``ids`` for table labels, EOS shown as ``</s>``."""
    return [piece if i != EOS_ID else "</s>" for piece, i in zip(tokenizer.id_to_piece(ids), ids)]


def _line_numbers(indices: Sequence[int], shown: int = 5) -> str:
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(str(i + 1) for i in indices[:shown]) + more


def _warn_unfit_inputs(ids: Sequence[Sequence[int]], max_length: int) -> None:
    """One warning naming the (1-based) input lines that are empty or cut to ``max_length`` tokens."""
    empty = [i for i, row in enumerate(ids) if not row]
    long = [i for i, row in enumerate(ids) if len(row) > max_length]
    if empty:
        logger.warning("input line %s: empty; translated as an empty line", _line_numbers(empty))
    if long:
        longest = max(len(ids[i]) for i in long)
        logger.warning(
            "input line %s: longer than max_length=%d tokens (up to %d); only the first %d tokens are translated",
            _line_numbers(long),
            max_length,
            longest,
            max_length,
        )


# A translation still degenerate after the n-best choice is searched again with no n-gram of this
# size repeated (a stricter rule than any useful default; Whisper's decoder re-decodes a repetitive
# output likewise, with its temperature fallback).
FALLBACK_NGRAM = 2


class Translator:
    """Greedy or beam-search translation with a trained encoder-decoder.

    Args:
        model: an encoder-decoder speaking ``attnlab.decoding.IncrementalDecoder`` (a
            ``Transformer`` or an ``RNNSeq2Seq``); used as it is, never copied.
        tokenizer: the run's source and target SentencePiece models.
        data: the run's text data config: inputs are cut to ``max_length`` pieces and decoding
            stops after ``max_decode_len_a * |x| + max_decode_len_b`` tokens (defaults when None).
        precision: the autocast dtype searches run under (``torch.bfloat16``), or None for none
            of the translator's own (an enclosing autocast still applies).
        fast: decode through a ``DecodingEngine`` (plain steps, packed weights, beam pools),
            made with the translator: make a new translator after changing the model's weights.
            False decodes on the model's own teaching path.
        int8: the engine multiplies by int8 copies of the decoder's weights (a ``Transformer``
            on CPU; ``DecodingEngine(int8=True)``); needs ``fast``.

    Byte-fallback pieces are always constrained to valid UTF-8 (``Utf8Constraint`` of the target
    tokenizer), so no translation holds U+FFFD from broken bytes.

    Example:
        >>> translator = attnlab.load("runs/en_ja")
        >>> translator.translate("March 15, 2024")
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: TranslationTokenizer,
        data: TextDataConfig | None = None,
        *,
        precision: torch.dtype | None = None,
        fast: bool = True,
        int8: bool = False,
    ) -> None:
        if int8 and not fast:
            raise ValueError("int8 decoding runs in the decoding engine: int8=True needs fast=True")
        self.model = model
        self.tokenizer = tokenizer
        self.data = TextDataConfig() if data is None else data
        self.precision = precision
        self.fast = fast
        self._engine = DecodingEngine(model, int8=int8) if fast else None
        self._utf8 = Utf8Constraint.from_tokenizer(tokenizer.target)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (inputs are moved there)."""
        return next(self.model.parameters()).device

    def translate(
        self,
        texts: str | Sequence[str],
        *,
        beam: int = 1,
        attention: bool | CaptureSpec = False,
        batch_size: int = 64,
        no_repeat_ngram_size: int | None = None,
        repetition_penalty: float | None = None,
        length_penalty: float | None = None,
        avoid_repetitive: bool | None = None,
        mbr: bool | None = None,
    ) -> str | Translation | list[str] | list[Translation]:
        """Translate one sentence or a list, with greedy (``beam`` 1) or beam search.

        Sentences are batched by length; each is cut to the data config's ``max_length`` pieces
        (with one warning naming the lines cut), and an empty one translates to an empty line.

        Args:
            texts: a sentence, or a sequence of sentences.
            beam: beam size k (1: greedy search).
            attention: return :class:`Translation` objects with the attention maps of each
                translation instead of strings: ``True`` for all, or a ``CaptureSpec`` choosing
                layers, heads and kinds (e.g. ``CaptureSpec(layers=-1, kinds="cross")``).
            batch_size: sentences decoded together.
            no_repeat_ngram_size: n > 0 never repeats an n-gram within a translation; 0 is off;
                None takes the data config's.
            repetition_penalty: above 1 discourages pieces a translation already holds (Keskar et
                al., 2019); 1 is off; None takes the data config's.
            length_penalty: beam search's alpha (GNMT length penalty; higher favours longer
                translations); None takes the data config's.
            avoid_repetitive: beam search returns its best hypothesis that is not degenerate (a
                word 4+ times in a row or a 3-gram 3+ times, in BLEU's tokens of the target
                language) when its n-best holds one, and a translation still degenerate (greedy
                or beam) is searched again with no 2-gram repeated; None takes the data config's.
            mbr: beam search returns the minimum-Bayes-risk hypothesis of its n-best (sentence
                chrF as the utility; :func:`attnlab.decoding.nbest.select_hypothesis`); None
                takes the data config's.

        Returns:
            For a str, its translation; for a sequence, one translation per sentence in input
            order. Strings, or :class:`Translation` objects with ``attention``.
        """
        if beam < 1 or batch_size < 1:
            raise ValueError(f"beam ({beam}) and batch_size ({batch_size}) must be >= 1")
        alpha = self.data.length_penalty if length_penalty is None else length_penalty
        if not alpha >= 0:
            raise ValueError(f"length_penalty ({length_penalty}) must be >= 0 (0: rank by log-probability)")
        spec = CaptureSpec.of(attention)
        if spec is not None:
            with capture(self.model, **vars(spec)):  # names a layer, head or kind that does not exist
                pass
        single = isinstance(texts, str)
        sources = [texts] if single else list(texts)
        repetition = {
            "no_repeat_ngram_size": self.data.no_repeat_ngram_size
            if no_repeat_ngram_size is None
            else no_repeat_ngram_size,
            "repetition_penalty": self.data.repetition_penalty if repetition_penalty is None else repetition_penalty,
        }
        decoding_processors(**repetition)  # a size < 0 or a penalty <= 0 fails before any decoding
        select = {
            "avoid_repetitive": self.data.avoid_repetitive if avoid_repetitive is None else avoid_repetitive,
            "mbr": self.data.mbr if mbr is None else mbr,
        }
        search = {"beam": beam, "alpha": alpha, "repetition": repetition, "select": select}
        results = self._translate_all(sources, search, spec, batch_size)
        return results[0] if single else results

    def _translate_all(
        self, sources: list[str], search: dict, spec: CaptureSpec | None, batch_size: int
    ) -> list[str] | list[Translation]:
        ids = self.tokenizer.source.encode(sources)
        _warn_unfit_inputs(ids, self.data.max_length)
        # Blank inputs translate to blank lines (a model fed only EOS would invent a sentence).
        blank = [i for i in range(len(ids)) if not ids[i]]
        outputs = {i: self._blank(sources[i]) if spec else "" for i in blank}
        order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: len(ids[i]))  # similar lengths batch
        was_training = self.model.training
        self.model.eval()
        try:
            decoder = self._decoder()
            with torch.no_grad(), self._autocast():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    batch = [ids[i][: self.data.max_length] for i in rows]
                    translated = self._translate_batch(decoder, [sources[i] for i in rows], batch, search, spec)
                    outputs.update(zip(rows, translated))
        finally:
            self.model.train(was_training)
        return [outputs[i] for i in range(len(ids))]

    def _translate_batch(
        self,
        decoder: IncrementalDecoder,
        sources: list[str],
        ids: list[list[int]],
        search: dict,
        spec: CaptureSpec | None,
    ) -> list[str] | list[Translation]:
        src = collate_translation([TranslationExample(i, row, []) for i, row in enumerate(ids)]).src  # (B, S)
        src = src.to(self.device)
        tokens, lengths = self._search(decoder, src, **search)  # (B, T), (B,)
        if spec is None:
            return self.tokenizer.target.decode([strip_special(row) for row in tokens.tolist()])
        maps = self._maps(src, tokens, spec)
        targets = [tokens[b, : int(lengths[b])].tolist() for b in range(len(ids))]
        maps.labels = {
            "source": [_piece_labels(self.tokenizer.source, row) for row in ids],
            "target": [_piece_labels(self.tokenizer.target, row) for row in targets],
            "target_in": [["<s>", *_piece_labels(self.tokenizer.target, row[:-1])] for row in targets],
        }
        return [
            Translation(
                source,
                self.tokenizer.target.decode([strip_special(target)])[0],
                maps.labels["source"][b],
                maps.labels["target"][b],
                maps.item(b),
            )
            for b, (source, target) in enumerate(zip(sources, targets))
        ]

    def _maps(self, src: Tensor, tokens: Tensor, spec: CaptureSpec) -> AttentionMaps:
        """The maps of the model run teacher-forced on the hypotheses ``tokens (B, T)``: the maps
        of the decoding that produced them (cached steps attend as the full prefix does)."""
        bos = tokens.new_full((tokens.shape[0], 1), self.model.bos_id)
        tgt_in = torch.cat([bos, tokens[:, :-1]], dim=1)  # (B, T): BOS y_1 .. y_{T-1}, padding after the end
        with capture(self.model, **vars(spec)) as maps:
            self.model(src, tgt_in)
        return maps.float_cpu()

    @staticmethod
    def _blank(source: str) -> Translation:
        return Translation(source, "", [], [], AttentionMaps())

    def _search(
        self, decoder: IncrementalDecoder, src: Tensor, beam: int, alpha: float, repetition: dict, select: dict
    ) -> tuple[Tensor, Tensor]:
        """The chosen hypothesis per sentence of ``src (B, S)`` under the data's length limits, in
        valid UTF-8, with the ``repetition`` options, and for beams length penalty ``alpha`` and the
        n-best choice ``select``: ``(tokens (B, T), lengths (B,))``. With ``avoid_repetitive``, a
        sentence whose choice is still degenerate is searched again with no 2-gram repeated."""
        tokens, lengths = self._search_once(decoder, src, beam, alpha, repetition, select)
        size = repetition["no_repeat_ngram_size"]
        if not select["avoid_repetitive"] or 0 < size <= FALLBACK_NGRAM:
            return tokens, lengths
        texts = self.tokenizer.target.decode([strip_special(row) for row in tokens.tolist()])
        rows = [b for b, text in enumerate(texts) if self._degenerate(text)]
        if not rows:
            return tokens, lengths
        stricter = {**repetition, "no_repeat_ngram_size": FALLBACK_NGRAM}
        again, again_lengths = self._search_once(decoder, src[rows], beam, alpha, stricter, select)
        width = max(tokens.shape[1], again.shape[1])
        tokens = F.pad(tokens, (0, width - tokens.shape[1]), value=self.model.pad_id)  # (B, T')
        tokens[rows] = F.pad(again, (0, width - again.shape[1]), value=self.model.pad_id)
        lengths[rows] = again_lengths
        return tokens, lengths

    def _search_once(
        self, decoder: IncrementalDecoder, src: Tensor, beam: int, alpha: float, repetition: dict, select: dict
    ) -> tuple[Tensor, Tensor]:
        """One greedy or beam search of ``src (B, S)`` and the n-best choice: ``(tokens (B, T), lengths (B,))``."""
        options = {
            "max_len_a": self.data.max_decode_len_a,
            "max_len_b": self.data.max_decode_len_b,
            "processors": [self._utf8],
            **repetition,
        }
        if beam == 1:
            result = greedy_search(decoder, src, **options)
            return result.tokens, result.lengths
        if not any(select.values()):
            result = beam_search(decoder, src, beam_size=beam, alpha=alpha, **options)
            return result.tokens[:, 0], result.lengths[:, 0]
        result = beam_search(decoder, src, beam_size=beam, alpha=alpha, n_best=beam, **options)
        chosen = self._choose(result, **select)  # (B,)
        rows = torch.arange(len(chosen), device=chosen.device)
        return result.tokens[rows, chosen], result.lengths[rows, chosen]

    def _choose(self, result: SearchResult, avoid_repetitive: bool, mbr: bool) -> Tensor:
        """Index ``(B,)`` into the n-best of ``result`` (:func:`select_hypothesis` per sentence)."""
        reject = self._degenerate if avoid_repetitive else None
        utility = self._chrf if mbr else None
        chosen = []
        for tokens, scores in zip(result.tokens.tolist(), result.scores.tolist()):
            texts = self.tokenizer.target.decode([strip_special(row) for row in tokens])
            chosen.append(select_hypothesis(texts, scores, reject=reject, utility=utility))
        return torch.tensor(chosen, device=result.tokens.device)

    @functools.cached_property
    def _degenerate(self) -> Callable[[str], bool]:
        """The repetition rate's rule on a translation, in BLEU's words of the target language
        (the word tokenizer, MeCab for Japanese, is made once per translator)."""
        words = word_tokenizer(self.data.corpus.target_lang)
        return lambda text: is_repetitive(words(text))

    @functools.cached_property
    def _chrf(self) -> Callable[[str, str], float]:
        """MBR's utility ``u(hypothesis, reference)``: sacrebleu's sentence chrF."""
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        return lambda hypothesis, reference: chrf.sentence_score(hypothesis, [reference]).score

    def _decoder(self) -> IncrementalDecoder:
        """What greedy and beam search decode with: the engine, or the model itself when not ``fast``."""
        return self.model if self._engine is None else self._engine

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_to(self.precision, self.device)
