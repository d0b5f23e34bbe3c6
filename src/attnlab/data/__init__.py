"""Data: parallel corpora, tokenisers and batching for translation (and, beside them, image sets).

Text pipeline: :func:`prepare_corpus` (a :class:`CorpusConfig`) -> :class:`ParallelCorpus` of
``(source, target)`` strings split into train/dev/test -> :class:`TranslationTokenizer` trained
on the train split -> :class:`TranslationDataset` of token ids -> :class:`TokenBudgetBatchSampler`
and :func:`collate_translation` -> :class:`TranslationBatch` tensors.
"""

from attnlab.data.batching import (
    TokenBudgetBatchSampler,
    TranslationBatch,
    TranslationDataset,
    TranslationExample,
    collate_translation,
)
from attnlab.data.cache import default_cache_dir
from attnlab.data.corpora import CORPUS_NAMES, SPLITS, CorpusConfig, ParallelCorpus, prepare_corpus, split_pairs
from attnlab.data.corpus_stats import corpus_statistics
from attnlab.data.images import (
    FASHION_MNIST_CLASSES,
    ImageAugmentation,
    ImageDataset,
    ImageFolderDataset,
    ImageNormalization,
    ImageSpec,
    ImageSplits,
    TensorImageLoader,
    load_digits,
    load_fashion_mnist,
    load_image,
    split_dataset,
)
from attnlab.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    SentencePieceTokenizer,
    TokenizerConfig,
    TranslationTokenizer,
)
from attnlab.data.user_corpus import SkippedLine
