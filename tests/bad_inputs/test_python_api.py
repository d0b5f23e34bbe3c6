"""Bad calls of the Python API: each raises one error whose message names the value and what was expected.

Catalogue rows of issue 16 (docs/bad-inputs.md): ``attention()``, ``MultiHeadAttention``, model configs
and ``attnlab.load``. Each case is its own test (a parametrized id is one row).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

import attnlab
from attnlab import MultiHeadAttention, attention
from attnlab.cli.main import main
from attnlab.config import ConfigError
from attnlab.data.image_files import ImageInputError
from attnlab.models.transformer_config import TransformerConfig
from attnlab.models.vit import ViTConfig
from attnlab.training.checkpoints import CheckpointError


def _qkv(lq: int = 3, lk: int = 4, d: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, length, d, generator=generator) for length in (lq, lk, lk))


def _raises(call: Callable[[], object], error: type[BaseException], *fragments: str) -> str:
    """Run ``call``; it must raise ``error`` with a one-line message holding every fragment."""
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- attention()
Q, K, V = _qkv()

ATTENTION_CASES: dict[str, tuple[Callable[[], object], type[BaseException], tuple[str, ...]]] = {
    "query-without-a-length-dim": (lambda: attention(torch.randn(8), K, V), ValueError, ("query", "(8,)")),
    "query-key-feature-sizes-differ": (
        lambda: attention(Q, torch.randn(2, 4, 5), V),
        ValueError,
        ("(2, 3, 8)", "(2, 4, 5)", "GeneralScore"),
    ),
    "key-value-lengths-differ": (
        lambda: attention(Q, K, torch.randn(2, 5, 8)),
        ValueError,
        ("same length Lk", "(2, 4, 8)", "(2, 5, 8)"),
    ),
    "batch-dims-differ": (
        lambda: attention(Q, torch.randn(3, 4, 8), torch.randn(3, 4, 8)),
        ValueError,
        ("batch dims", "(2, 3, 8)", "(3, 4, 8)"),
    ),
    "integer-tensors": (lambda: attention(Q.long(), K.long(), V.long()), TypeError, ("floating point", "int64")),
    "numpy-array": (lambda: attention(Q.numpy(), K, V), TypeError, ("Tensor", "ndarray")),
    "unknown-score": (lambda: attention(Q, K, V, score="foo"), ValueError, ("'foo'", "scaled_dot")),
    "unknown-normalizer": (lambda: attention(Q, K, V, normalize="foo"), ValueError, ("'foo'", "softmax")),
    "mask-that-does-not-broadcast": (
        lambda: attention(Q, K, V, mask=torch.ones(3, 5, dtype=torch.bool)),
        ValueError,
        ("(3, 5)", "(2, 3, 4)"),
    ),
    "integer-mask": (
        lambda: attention(Q, K, V, mask=torch.ones(3, 4, dtype=torch.long)),
        TypeError,
        ("bool", "float bias", "int64"),
    ),
    "dropout-above-one": (lambda: attention(Q, K, V, dropout_p=1.5), ValueError, ("dropout_p", "[0, 1)", "1.5")),
    "negative-dropout": (lambda: attention(Q, K, V, dropout_p=-0.1), ValueError, ("dropout_p", "-0.1")),
    "learned-score-by-name": (
        lambda: attention(Q, K, V, score="additive"),
        ValueError,
        ("'additive'", "AdditiveScore"),
    ),
    "score-callable-of-the-wrong-shape": (
        lambda: attention(Q, K, V, score=lambda q, k: torch.zeros(2, 3)),
        ValueError,
        ("(2, 3)", "(2, 3, 4)"),
    ),
}


# ----------------------------------------------------------------------------- MultiHeadAttention
MHA_CASES: dict[str, tuple[Callable[[], object], type[BaseException], tuple[str, ...]]] = {
    "zero-embed-dim": (lambda: MultiHeadAttention(0, 2), ValueError, ("embed_dim (0)", "positive")),
    "embed-dim-not-divisible-by-heads": (
        lambda: MultiHeadAttention(10, 3),
        ValueError,
        ("embed_dim (10) must be divisible by num_heads (3)",),
    ),
    "dropout-of-one": (lambda: MultiHeadAttention(8, 2, dropout=1.0), ValueError, ("dropout", "[0, 1)", "1.0")),
    "unknown-score": (lambda: MultiHeadAttention(8, 2, score="foo"), ValueError, ("'foo'", "scaled_dot")),
    "unknown-normalizer": (lambda: MultiHeadAttention(8, 2, normalize="foo"), ValueError, ("'foo'", "softmax")),
    "rope-with-an-odd-head-dim": (lambda: MultiHeadAttention(6, 2, rope=True), ValueError, ("even", "3")),
    "query-of-another-width": (
        lambda: MultiHeadAttention(8, 2)(*(torch.randn(2, 3, 6) for _ in range(3))),
        ValueError,
        ("(B, L, 8)", "(2, 3, 6)"),
    ),
    "key-value-lengths-differ": (
        lambda: MultiHeadAttention(8, 2)(Q, K, torch.randn(2, 5, 8)),
        ValueError,
        ("(2, 4, 8)", "(2, 5, 8)"),
    ),
}


# ----------------------------------------------------------------------------- model configs
MODEL_CASES: dict[str, tuple[Callable[[], object], type[BaseException], tuple[str, ...]]] = {
    "transformer-d-model-not-divisible": (
        lambda: TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=15, num_heads=4),
        ValueError,
        ("d_model (15)", "num_heads (4)"),
    ),
    "transformer-unknown-key": (
        lambda: TransformerConfig.from_dict({"src_vocab_size": 10, "tgt_vocab_size": 10, "d_modle": 8}),
        ConfigError,
        ("d_modle", "d_model"),
    ),
    "vit-unknown-preset": (lambda: ViTConfig.from_preset("nope"), ConfigError, ("'nope'", "vit_tiny_patch16_224")),
    "vit-dropout-above-one": (
        lambda: ViTConfig.from_dict({**ViTConfig.from_preset("vit_digits_patch2_8").to_dict(), "dropout": 2.0}),
        ConfigError,
        ("dropout (2.0)", "[0, 1)"),
    ),
}


CASES = {
    **{f"attention-{name}": case for name, case in ATTENTION_CASES.items()},
    **{f"mha-{name}": case for name, case in MHA_CASES.items()},
    **{f"model-{name}": case for name, case in MODEL_CASES.items()},
}


@pytest.mark.parametrize("case", list(CASES))
def test_rejects(case: str) -> None:
    call, error, fragments = CASES[case]
    _raises(call, error, *fragments)


# ----------------------------------------------------------------------------- attnlab.load
def test_load_a_path_that_does_not_exist(tmp_path: Path) -> None:
    _raises(lambda: attnlab.load(tmp_path / "nowhere"), CheckpointError, str(tmp_path / "nowhere"), "does not exist")


def test_load_a_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"")
    _raises(lambda: attnlab.load(path), CheckpointError, str(path), "not a run directory but a file")


def test_load_a_directory_without_checkpoints(tmp_path: Path) -> None:
    _raises(lambda: attnlab.load(tmp_path), CheckpointError, str(tmp_path), "checkpoints/best/", "output_dir")


# ----------------------------------------------------------------------------- Classifier
@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step digits CNN run (1x8x8 images)."""
    tmp = tmp_path_factory.mktemp("classifier")
    config = {
        "task": "classification",
        "output_dir": str(tmp / "run"),
        "model": {"type": "cnn", "channels": [4], "blocks": [1], "attention": "se", "reduction": 2},
        "data": {"dataset": "digits", "batch_size": 64, "augment": False},
        "training": {"max_steps": 2, "eval_every": 2, "num_threads": 1, "tensorboard": False, "final_split": None},
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(tmp / "run.yaml"), "--no-progress"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def classifier(classifier_run: Path):
    """``attnlab.load`` of :func:`classifier_run`: a :class:`~attnlab.inference.Classifier`."""
    return attnlab.load(classifier_run)


def _not_an_image(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("not pixels", encoding="utf-8")
    return path


CLASSIFY_CASES: dict[str, tuple[Callable[..., object], type[BaseException], tuple[str, ...]]] = {
    "missing-file": (lambda c, tmp: c.classify(tmp / "nope.png"), FileNotFoundError, ("nope.png", "does not exist")),
    "a-folder": (lambda c, tmp: c.classify(tmp), IsADirectoryError, ("is a folder", "give image files")),
    "a-file-that-is-no-image": (
        lambda c, tmp: c.classify(_not_an_image(tmp)),
        ImageInputError,
        ("notes.png", "cannot load", "(1, 8, 8)"),
    ),
    "tensor-of-another-size": (
        lambda c, tmp: c.classify(torch.zeros(1, 5, 5)),
        ValueError,
        ("(1, 8, 8)", "(1, 5, 5)"),
    ),
    "tensor-of-other-channels": (
        lambda c, tmp: c.classify(torch.zeros(3, 8, 8, dtype=torch.uint8)),
        ValueError,
        ("(1, 8, 8)", "(3, 8, 8)"),
    ),
    "an-int": (
        lambda c, tmp: c.classify(42),
        TypeError,
        ("images must be a path, a Pillow image or a tensor", "got int"),
    ),
    "a-list-holding-an-int": (lambda c, tmp: c.classify([torch.zeros(1, 8, 8), 42]), TypeError, ("got int",)),
    "top-k-zero": (
        lambda c, tmp: c.classify(torch.zeros(1, 8, 8, dtype=torch.uint8), top_k=0),
        ValueError,
        ("top_k (0) must be >= 1",),
    ),
}


@pytest.mark.parametrize("case", list(CLASSIFY_CASES))
def test_classify_rejects(case: str, classifier, tmp_path: Path) -> None:
    call, error, fragments = CLASSIFY_CASES[case]
    _raises(lambda: call(classifier, tmp_path), error, *fragments)


def test_load_a_classification_run_as_a_translator(classifier_run: Path) -> None:
    _raises(
        lambda: attnlab.load(classifier_run, task="translation"),
        ConfigError,
        f"{classifier_run} is a classification run",
        "expected a translation run",
    )


def test_load_with_an_unknown_precision(classifier_run: Path) -> None:
    _raises(lambda: attnlab.load(classifier_run, precision="fp8"), ValueError, "'fp8'", "bf16")


def test_load_a_checkpoint_the_run_does_not_hold(classifier_run: Path) -> None:
    _raises(
        lambda: attnlab.load(classifier_run, checkpoint="middle"),
        CheckpointError,
        "checkpoint 'middle' is not one of ['best', 'last']",
        str(classifier_run),
    )
