"""Packed-weight linear products (attnlab.layers.packed) against F.linear, and in decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.decoding import beam_search, greedy_search
from attnlab.layers.packed import (
    MIN_PACKED_ELEMENTS,
    Linear,
    PackedWeights,
    bf16_packing_available,
    linear,
    packing_available,
)
from attnlab.models.transformer import Transformer, TransformerConfig

pytestmark = pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN")


@pytest.mark.parametrize(("rows", "shape"), [(8, (512, 256)), (40, (1024, 256)), (3, (300, 130))])
def test_packed_product_matches_f_linear(rows: int, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x, weight, bias = torch.randn(rows, 1, shape[1]), torch.randn(shape), torch.randn(shape[0])
    with PackedWeights(rows) as packed:
        out = linear(x, weight, bias)
    assert len(packed) == 1
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-4)


def test_one_copy_serves_any_row_count() -> None:
    torch.manual_seed(0)
    weight = torch.randn(512, 256)
    with PackedWeights(8) as packed:
        for rows in (8, 5, 40, 1):
            x = torch.randn(rows, 256)
            torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-4)
    assert len(packed) == 1


def test_small_weights_grads_and_other_dtypes_are_not_packed() -> None:
    torch.manual_seed(0)
    small = torch.randn(8, 8)
    with PackedWeights(8) as packed:
        linear(torch.randn(8, 8), small)  # below MIN_PACKED_ELEMENTS
        trainable = torch.randn(256, 256, requires_grad=True)
        out = linear(torch.randn(8, 256), trainable)
        assert out.requires_grad  # gradients flow: the plain product was used
        weight = torch.randn(256, 256, dtype=torch.float64)
        x = torch.randn(8, 256, dtype=torch.float64)
        assert torch.equal(linear(x, weight), F.linear(x, weight))
    assert small.numel() < MIN_PACKED_ELEMENTS
    assert len(packed) == 0


def test_outside_the_context_linear_is_f_linear() -> None:
    layer = Linear(256, 512)
    x = torch.randn(8, 256)
    packed = PackedWeights(8)
    with packed, torch.no_grad():
        layer(x)
    assert len(packed) == 1
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_a_changed_weight_is_packed_again() -> None:
    torch.manual_seed(0)
    layer = Linear(256, 512)
    x = torch.randn(8, 256)
    packed = PackedWeights(8)
    with packed, torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2.0)  # in place, as an optimizer step or load_state_dict
        after = layer(x)
    torch.testing.assert_close(after, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(before, after)


needs_bf16 = pytest.mark.skipif(not bf16_packing_available(), reason="this CPU or build has no oneDNN bf16 linear")


@needs_bf16
@pytest.mark.parametrize("rows", [8, 5])  # bf16 copies serve any row count
def test_under_bf16_autocast_the_packed_product_is_autocasts(rows: int) -> None:
    torch.manual_seed(0)
    layer = Linear(256, 512)
    x = torch.randn(rows, 1, 256)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = layer(x)
        with PackedWeights(8) as packed:
            out = layer(x)
            again = layer(x.bfloat16())  # a bf16 input (the output of an earlier autocast product)
    assert out.dtype == again.dtype == torch.bfloat16
    assert len(packed) == 1
    # Same bf16 operands, fp32 accumulation: equal up to the summation order.
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(again, expected, rtol=1e-2, atol=1e-2)
    assert (out.float() - F.linear(x, layer.weight, layer.bias)).abs().max() > 0  # bf16, not the fp32 product


@needs_bf16
def test_a_bf16_weight_is_packed_and_an_fp16_autocast_is_not() -> None:
    torch.manual_seed(0)
    layer = Linear(256, 512).to(torch.bfloat16)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with PackedWeights(8) as packed, torch.no_grad():
        out = layer(x)
    assert len(packed) == 1
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-2, atol=1e-2)
    with PackedWeights(8) as packed, torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        Linear(256, 512)(torch.randn(8, 256))
    assert len(packed) == 0


def test_bad_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="rows must be positive, got 0"):
        PackedWeights(0)


@pytest.fixture(scope="module")
def model() -> Transformer:
    config = TransformerConfig.from_preset("small", src_vocab_size=1000, tgt_vocab_size=1000, share_embeddings=True)
    torch.manual_seed(0)
    return Transformer(config).eval()


def search_20_tokens(model: Transformer, beam: int) -> object:
    """Greedy (beam 1) or beam search of 20 tokens for 3 random sources of 12 tokens."""
    src = torch.randint(4, 1000, (3, 12), generator=torch.Generator().manual_seed(1))
    if beam == 1:
        return greedy_search(model, src, max_len_a=0.0, max_len_b=20, min_len=20)
    return beam_search(model, src, beam_size=beam, max_len_a=0.0, max_len_b=20, min_len=20)


@pytest.mark.parametrize("beam", [1, 4])
def test_decoding_with_packed_weights_equals_decoding_without(model: Transformer, beam: int) -> None:
    model.prepack_weights = False
    plain = search_20_tokens(model, beam)
    model.prepack_weights = True
    model._packed = None
    packed = search_20_tokens(model, beam)
    assert model._packed is not None and model._packed.rows == 3 * beam
    # 3 layers x (self in-proj, self out, cross query, key, value, cross out, FFN in, FFN out)
    # + the output layer; the source-target keys and values are the one product over the source.
    assert len(model._packed) == 3 * 8 + 1
    assert torch.equal(packed.tokens, plain.tokens)
    torch.testing.assert_close(packed.scores, plain.scores, rtol=1e-4, atol=1e-4)


def test_a_model_with_packed_weights_can_be_copied_and_pickled(model: Transformer) -> None:
    import copy
    import io

    src = torch.randint(4, 1000, (2, 7), generator=torch.Generator().manual_seed(2))
    first = greedy_search(model, src, max_len_a=0.0, max_len_b=6)
    assert model._packed is not None and len(model._packed) > 0
    twin = copy.deepcopy(model)
    assert twin._packed is not None and len(twin._packed) == 0  # packs its own weights when it decodes
    assert torch.equal(greedy_search(twin, src, max_len_a=0.0, max_len_b=6).tokens, first.tokens)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(greedy_search(loaded, src, max_len_a=0.0, max_len_b=6).tokens, first.tokens)


@needs_bf16
@pytest.mark.parametrize("beam", [1, 4])
def test_bf16_decoding_with_packed_weights_equals_autocast_without(model: Transformer, beam: int) -> None:
    model.prepack_weights = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = search_20_tokens(model, beam)
        model.prepack_weights = True
        packed = search_20_tokens(model, beam)
    assert model._packed is not None
    # bf16 copies serve any row count, so the source-target keys and values (a product over the
    # source tokens, once per search) are packed too: 3 layers x (the 6 above + key + value) + output.
    assert sum(key[-1] == "onednn_bf16" for key in model._packed._copies) == 3 * 8 + 1
    # Scores are bf16 logits: a near tie may break the other way, so compare where the first differs.
    same = (packed.tokens == plain.tokens).all(dim=-1)
    assert same.float().mean() >= 0.5
    torch.testing.assert_close(packed.scores[same], plain.scores[same], rtol=2e-2, atol=5e-2)


@needs_bf16
def test_a_model_cast_to_bf16_drops_its_fp32_copies(model: Transformer) -> None:
    import copy

    twin = copy.deepcopy(model)
    src = torch.randint(4, 1000, (2, 7), generator=torch.Generator().manual_seed(2))
    greedy_search(twin, src, max_len_a=0.0, max_len_b=6)
    fp32_cache = twin._packed
    twin.to(torch.bfloat16)
    result = greedy_search(twin, src, max_len_a=0.0, max_len_b=6)
    assert twin._packed is not fp32_cache
    assert all(key[3] == torch.bfloat16 for key in twin._packed._copies)
    assert result.tokens.shape[0] == 2


def test_searches_of_other_row_counts_reuse_the_copies(model: Transformer) -> None:
    model.prepack_weights = True
    search_20_tokens(model, 1)
    copies = model._packed
    beam = search_20_tokens(model, 4)
    assert model._packed is copies and len(copies) == 3 * 8 + 1  # no second set for 12 rows
    model.prepack_weights = False
    assert torch.equal(search_20_tokens(model, 4).tokens, beam.tokens)
    model.prepack_weights = True
