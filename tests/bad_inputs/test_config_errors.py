"""Bad run configs: each fails in one line naming the file, the dotted key, the value and what is allowed.

Catalogue rows of issue 16 (docs/bad-inputs.md). Each case is one key=value override of a tiny,
valid config (the same one the trainer tests use), read by :func:`attnlab.training.load_config`
exactly as ``attnlab train CONFIG key=value`` reads it; no model is built and nothing trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from attnlab.config import ConfigError
from attnlab.training import load_config

CLASSIFICATION: dict[str, Any] = {
    "task": "classification",
    "seed": 0,
    "output_dir": "run",
    "model": {"type": "vit", "preset": "vit_digits_patch2_8", "embed_dim": 16, "depth": 1, "num_heads": 2},
    "data": {"dataset": "digits", "batch_size": 128},
    "training": {"max_steps": 2, "num_threads": 1, "tensorboard": False},
}
TRANSLATION: dict[str, Any] = {
    "task": "translation",
    "seed": 0,
    "output_dir": "run",
    "model": {"type": "transformer", "preset": "tiny"},
    "data": {"corpus": {"name": "generated", "size": 50}, "tokenizer": {"vocab_size": 1000}},
    "training": {"max_steps": 2, "num_threads": 1, "tensorboard": False},
}

# (config, override, fragments the one-line message must hold)
CASES: dict[str, tuple[dict[str, Any], str, tuple[str, ...]]] = {
    "negative-max-steps": (CLASSIFICATION, "training.max_steps=-1", ("training.max_steps (-1) must be >= 1",)),
    "negative-warmup": (CLASSIFICATION, "training.warmup_steps=-2", ("training.warmup_steps (-2) must be >= 0",)),
    "zero-threads": (CLASSIFICATION, "training.num_threads=0", ("training.num_threads (0) must be >= 1",)),
    "negative-lr": (CLASSIFICATION, "training.lr=-1", ("training.lr (-1.0) must be >= 0",)),
    "infinite-lr": (CLASSIFICATION, "training.lr=.inf", ("training.lr (inf)",)),
    "negative-grad-clip": (CLASSIFICATION, "training.grad_clip=-1", ("training.grad_clip (-1.0) must be > 0",)),
    "one-beta": (CLASSIFICATION, "training.betas=[0.9]", ("training.betas ([0.9]) must be 2 numbers",)),
    "beta-of-one": (CLASSIFICATION, "training.betas=[0.9,1.0]", ("training.betas ([0.9, 1.0]) must be in [0, 1)",)),
    "label-smoothing-above-one": (CLASSIFICATION, "training.label_smoothing=1.5", ("training.label_smoothing (1.5)",)),
    "negative-weight-decay": (CLASSIFICATION, "training.weight_decay=-1", ("training.weight_decay (-1.0)",)),
    "zero-eval-every": (CLASSIFICATION, "training.eval_every=0", ("training.eval_every (0) must be >= 1",)),
    "unknown-schedule": (CLASSIFICATION, "training.schedule=foo", ("training.schedule 'foo'", "noam")),
    "unknown-precision": (CLASSIFICATION, "training.precision=fp16", ("training.precision 'fp16'", "bf16")),
    "unknown-optimizer": (CLASSIFICATION, "training.optimizer=sgd", ("training.optimizer 'sgd'", "adamw")),
    "cosine-without-max-steps": (
        CLASSIFICATION,
        "training={max_epochs: 1, schedule: cosine}",
        ("training.", "cosine", "set max_steps"),
    ),
    "no-stopping-rule": (CLASSIFICATION, "training.max_steps=null", ("max_steps, max_epochs, max_minutes",)),
    "word-for-a-number": (CLASSIFICATION, "training.max_steps=abc", ("training.max_steps: expected int", "'abc'")),
    "fraction-for-a-count": (CLASSIFICATION, "training.max_steps=1.5", ("training.max_steps: expected int", "1.5")),
    "bool-for-a-count": (CLASSIFICATION, "training.max_steps=true", ("training.max_steps: expected int", "True")),
    "misspelt-key": (CLASSIFICATION, "training.lrr=1", ("unknown config key training.lrr", "known keys", "lr,")),
    "final-split-of-another-task": (
        CLASSIFICATION,
        "training.final_split=dev",
        ("training.final_split ('dev')", "classification", "'val'"),
    ),
    "unknown-task": (CLASSIFICATION, "task=regression", ("task:", "'regression'", "translation")),
    "section-that-is-a-list": (CLASSIFICATION, "training=[]", ("training: expected a mapping", "list")),
    "model-without-type": (CLASSIFICATION, "model=3", ("model.type is required",)),
    "unknown-model-type": (CLASSIFICATION, "model.type=foo", ("model.type", "'foo'", "vit")),
    "unknown-preset": (CLASSIFICATION, "model.preset=nope", ("model.preset", "'nope'", "vit_digits_patch2_8")),
    "key-of-another-model-type": (CLASSIFICATION, "model.d_model=64", ("model.d_model", "not a field of vit model")),
    "model-of-another-task": (CLASSIFICATION, "task=translation", ("model.type: a vit model does not do translation",)),
    "zero-batch-size": (CLASSIFICATION, "data.batch_size=0", ("data.batch_size (0) must be >= 1",)),
    "unknown-dataset": (CLASSIFICATION, "data.dataset=cifar", ("data.dataset 'cifar'", "folder:PATH")),
    "two-channels": (CLASSIFICATION, "data.channels=2", ("data.channels (2)", "1 (grayscale) or 3 (RGB)")),
    "word-for-a-bool": (CLASSIFICATION, "data.augment=maybe", ("data.augment: expected bool", "'maybe'")),
    "null-output-dir": (CLASSIFICATION, "output_dir=null", ("output_dir: expected str",)),
    "negative-corpus-size": (TRANSLATION, "data.corpus.size=-5", ("data.corpus.size (-5) must be >= 1",)),
    "zero-corpus-size": (TRANSLATION, "data.corpus.size=0", ("data.corpus.size (0) must be >= 1",)),
    "zero-max-sentences": (
        TRANSLATION,
        "data.tokenizer.max_sentences=0",
        ("data.tokenizer.max_sentences (0) must be >= 1",),
    ),
    "vocab-below-the-special-ids": (TRANSLATION, "data.tokenizer.vocab_size=2", ("data.tokenizer.vocab_size (2)",)),
    "zero-character-coverage": (
        TRANSLATION,
        "data.tokenizer.character_coverage=0",
        ("data.tokenizer.character_coverage (0.0) must be in (0, 1]",),
    ),
    "unknown-tokenizer-type": (TRANSLATION, "data.tokenizer.model_type=word", ("data.tokenizer.model_type 'word'",)),
    "unknown-corpus": (TRANSLATION, "data.corpus.name=foo", ("data.corpus: corpus name 'foo'", "generated")),
    "dev-and-test-take-everything": (
        TRANSLATION,
        "data.corpus={name: generated, dev_fraction: 0.5, test_fraction: 0.5}",
        ("data.corpus.dev_fraction (0.5) and test_fraction (0.5)", "sum to less than 1"),
    ),
    "no-english-side": (
        TRANSLATION,
        "data.corpus={name: generated, source_lang: fr, target_lang: de}",
        ("data.corpus", "'fr'", "'de'", "must be 'en'"),
    ),
    "user-corpus-without-paths": (TRANSLATION, "data.corpus.name=user", ("data.corpus", "paths", "one TSV")),
    "unknown-combined-source": (
        TRANSLATION,
        "data.corpus={name: libreoffice-combined, sources: [libreoffice-ui, wikipedia]}",
        ("data.corpus.sources (['libreoffice-ui', 'wikipedia']): 'wikipedia' is not one of", "'debian-reference'"),
    ),
    "misspelt-corpus-key": (TRANSLATION, "data.corpus.colour=1", ("unknown config key data.corpus.colour",)),
    "zero-max-length": (TRANSLATION, "data.max_length=0", ("data.max_length (0) must be >= 1",)),
    "final-split-val-in-translation": (
        TRANSLATION,
        "training.final_split=val",
        ("training.final_split ('val')", "translation", "'dev'"),
    ),
}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    return CASES[request.param]


def _write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_a_bad_key_fails_naming_file_key_and_value(tmp_path: Path, case) -> None:
    config, override, fragments = case
    path = _write(tmp_path, config)
    load_config(path)  # the base config is valid: the override alone is at fault
    with pytest.raises(ConfigError) as error:
        load_config(path, [override])
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("max_steps", ("override 'max_steps' must look like section.key=value",)),
        ("training.lr=[1,", ("override 'training.lr=[1,'", "not valid YAML")),
        ("seed.value=1", ("override 'seed.value=1'", "seed is 0, not a section")),
    ],
    ids=["no-equals-sign", "value-not-yaml", "key-under-a-scalar"],
)
def test_a_malformed_override_names_it(tmp_path: Path, override: str, fragments: tuple[str, ...]) -> None:
    path = _write(tmp_path, CLASSIFICATION)
    with pytest.raises(ConfigError) as error:
        load_config(path, [override])
    message = str(error.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_a_config_file_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'nowhere.yaml'} does not exist"):
        load_config(tmp_path / "nowhere.yaml")


def test_a_directory_for_a_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
