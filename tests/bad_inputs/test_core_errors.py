"""Bad calls of the core: ``attention()``'s dtypes, devices, scale, averaged dim and mask type,
``MultiHeadAttention`` fed another dtype than its weights, and a model config's unknown score.

Catalogue rows of issue 16 (docs/bad-inputs.md): each raised one of torch's messages, or nothing,
before. Every error is one line naming the values and what was expected; where a check sits on the
fast path, the valid neighbour of the bad call still agrees with torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from attnlab import MultiHeadAttention, attention
from attnlab.config import ConfigError
from attnlab.models.transformer_config import TransformerConfig
from attnlab.training import load_config


def _qkv(lq: int = 3, lk: int = 4, d: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, length, d, generator=generator) for length in (lq, lk, lk))


def _message(call: Callable[[], object], error: type[BaseException]) -> str:
    """The one-line message of the ``error`` that ``call`` raises."""
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message, message
    return message


Q, K, V = _qkv()

# (call, error, fragments of the message)
ATTENTION_CASES: dict[str, tuple[Callable[[], object], type[BaseException], tuple[str, ...]]] = {
    "key-of-another-dtype": (
        lambda: attention(Q, K.double(), V),
        ValueError,
        ("query torch.float32", "key torch.float64", "value torch.float32", ".to(query.dtype)"),
    ),
    "value-of-another-dtype": (lambda: attention(Q, K, V.half()), ValueError, ("value torch.float16",)),
    "key-on-another-device": (
        lambda: attention(Q, K.to("meta"), V),
        ValueError,
        ("one device", "query on cpu", "key on meta", "value on cpu", ".to(query.device)"),
    ),
    "scale-zero": (lambda: attention(Q, K, V, scale=0.0), ValueError, ("scale (0.0) must be finite and > 0",)),
    "scale-negative": (lambda: attention(Q, K, V, scale=-0.5), ValueError, ("scale (-0.5) must be finite and > 0",)),
    "scale-nan": (lambda: attention(Q, K, V, scale=float("nan")), ValueError, ("scale (nan) must be finite",)),
    "scale-inf": (lambda: attention(Q, K, V, scale=float("inf")), ValueError, ("scale (inf) must be finite",)),
    "scale-zero-explicit-kernel": (
        lambda: attention(Q, K, V, scale=0.0, fused=False),
        ValueError,
        ("scale (0.0)",),
    ),
    "average-dim-out-of-range": (
        lambda: attention(Q, K, V, need_weights=True, weights_average_dim=5),
        ValueError,
        ("weights_average_dim (5)", "(2, 3, 4)", "[-3, 2]"),
    ),
    "average-dim-below-range": (
        lambda: attention(Q, K, V, need_weights=True, weights_average_dim=-4),
        ValueError,
        ("weights_average_dim (-4)", "[-3, 2]"),
    ),
    "average-dim-out-of-range-general-path": (
        lambda: attention(Q, K, V, normalize="sparsemax", need_weights=True, weights_average_dim=3),
        ValueError,
        ("weights_average_dim (3)",),
    ),
    "numpy-mask": (
        lambda: attention(Q, K, V, mask=torch.ones(3, 4, dtype=torch.bool).numpy()),
        TypeError,
        ("mask must be a Tensor", "got ndarray"),
    ),
    "list-mask": (lambda: attention(Q, K, V, mask=[[True] * 4] * 3), TypeError, ("mask must be a Tensor", "got list")),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_rejects(case: str) -> None:
    call, error, fragments = ATTENTION_CASES[case]
    message = _message(call, error)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("fused", [None, True, False], ids=["chosen", "sdpa", "explicit"])
def test_the_valid_neighbours_still_agree_with_torch(fused: bool | None) -> None:
    """One dtype and device, a positive scale, an in-range dim, a tensor mask: SDPA's numbers."""
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[:, 0] = True  # every query keeps a key: SDPA's NaN rows are not the point here
    out, weights = attention(Q, K, V, mask=mask, scale=0.7, fused=fused, need_weights=True, weights_average_dim=-3)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(Q, K, V, attn_mask=mask, scale=0.7))
    reference = torch.softmax((Q @ K.transpose(-2, -1) * 0.7).masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(weights, reference.mean(0))


# ----------------------------------------------------------------------------- MultiHeadAttention
def test_mha_rejects_a_dtype_other_than_its_weights() -> None:
    module = MultiHeadAttention(8, 2)
    x = Q.half()
    message = _message(lambda: module(x, x, x), ValueError)
    for fragment in ("query is torch.float16", "weights of MultiHeadAttention are torch.float32", "autocast", ".to("):
        assert fragment in message, message


def test_mha_rejects_a_key_of_another_dtype_with_separate_projections() -> None:
    module = MultiHeadAttention(8, 2, kdim=6, vdim=6)
    message = _message(lambda: module(Q, torch.randn(2, 4, 6).double(), torch.randn(2, 4, 6)), ValueError)
    assert "key is torch.float64" in message and "torch.float32" in message, message


def test_mha_under_autocast_takes_bf16_inputs_like_torch() -> None:
    """Autocast bridges the dtypes: no error, and torch's own module gives the same numbers."""
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(reference).eval()
    x = Q.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = ours(x, x, x)
        expected, _ = reference(x, x, x, need_weights=False)
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_mha_rejects_a_numpy_padding_mask() -> None:
    module = MultiHeadAttention(8, 2)
    padding = torch.zeros(2, 3, dtype=torch.bool).numpy()
    message = _message(lambda: module(Q, Q, Q, key_padding_mask=padding), TypeError)
    assert "key_padding_mask must be a Tensor" in message and "got ndarray" in message, message


# ----------------------------------------------------------------------------- model configs
@pytest.mark.parametrize(
    ("field", "fragment"),
    [("score", "score: unknown score 'foo'"), ("normalize", "normalize: unknown normalizer 'foo'")],
    ids=["score", "normalize"],
)
def test_a_transformer_config_names_the_field_of_an_unknown_choice(field: str, fragment: str) -> None:
    message = _message(lambda: TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, **{field: "foo"}), ValueError)
    assert message.startswith(fragment) and "expected one of" in message, message


def test_a_run_configs_unknown_score_names_model_score(tmp_path: Path) -> None:
    config = {
        "task": "translation",
        "output_dir": "run",
        "model": {"type": "transformer", "preset": "tiny", "score": "foo"},
        "data": {"corpus": {"name": "generated", "size": 50}, "tokenizer": {"vocab_size": 1000}},
        "training": {"max_steps": 2},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    section = load_config(path).model
    message = _message(lambda: section.resolve(src_vocab_size=100, tgt_vocab_size=100), ConfigError)
    assert message.startswith("model.score: unknown score 'foo'"), message
    assert "'scaled_dot'" in message, message
