"""``FusedDecoder`` (a decoder step as a few compiled-kernel calls per layer) against the model's
own cached steps, and the engine's choice of it."""

from __future__ import annotations

import copy

import pytest
import torch

from attnlab.decoding import beam_search, greedy_search
from attnlab.functional.kernels import Thresholds, onednn, set_thresholds, thin
from attnlab.inference import fused_decoder, fused_products
from attnlab.inference.engine import DecodingEngine
from attnlab.inference.fused_decoder import INITIAL_CAPACITY, FusedDecoder, FusedState
from attnlab.layers import MultiHeadAttention
from attnlab.models.transformer import SearchState, Transformer, TransformerConfig

needs_kernels = pytest.mark.skipif(
    not (fused_decoder.thin.available() and fused_decoder.fused_step.available()),
    reason="the fused decoder runs on the compiled kernels (x86-64 with AVX2 and FMA)",
)


def make_model(**options) -> Transformer:
    config = dict(src_vocab_size=300, tgt_vocab_size=300, share_embeddings=True) | options
    torch.manual_seed(0)
    return Transformer(TransformerConfig.from_preset("small", **config)).eval()


def sources(batch: int = 3, length: int = 11) -> torch.Tensor:
    """Sources with padding at the end of every row but the first: 3 b positions of row b."""
    src = torch.randint(4, 300, (batch, length), generator=torch.Generator().manual_seed(1))
    for b in range(1, batch):
        src[b, max(1, length - 3 * b) :] = 0
    return src


def logits_side_by_side(model: Transformer, src: torch.Tensor, k: int, steps: int, reorder: bool):
    """Yield the model's and the fused decoder's logits for ``steps`` random tokens, rows
    reordered within each sentence after every step when ``reorder``."""
    g = torch.Generator().manual_seed(2)
    rows = src.shape[0] * k
    fused = FusedDecoder(model)
    with torch.inference_mode():
        theirs = model.start_state(src, repeat=k)
        ours = fused.start(theirs.memory, theirs.memory_key_padding_mask, repeat=k)
        for _ in range(steps):
            tokens = torch.randint(4, 300, (rows,), generator=g)
            expected, theirs = model.step(theirs, tokens)
            yield fused.step(ours, tokens), expected
            if reorder:  # each row continues a random row of its own sentence
                index = torch.randint(0, k, (rows,), generator=g) + torch.arange(rows) // k * k
                model.reorder_state(theirs, index)
                fused.reorder(ours, index)


@needs_kernels
@pytest.mark.parametrize(
    "options",
    [{}, dict(norm_first=True), dict(activation="gelu"), dict(tie_output=False)],
    ids=["post-norm", "pre-norm", "gelu", "untied-output"],
)
@pytest.mark.parametrize("k", [1, 3])
def test_fused_steps_equal_the_models_logits(options, k) -> None:
    """Past the first capacity (the cache grows), with source padding, rows reordered as beam
    search does: every step's logits within fp32 reordering of the model's."""
    model = make_model(**options)
    for ours, expected in logits_side_by_side(model, sources(), k, INITIAL_CAPACITY + 6, reorder=k > 1):
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_a_reorder_that_drops_rows_is_refused() -> None:
    model = make_model()
    fused = FusedDecoder(model)
    with torch.inference_mode():
        state = model.start_state(sources(), repeat=2)
        ours = fused.start(state.memory, state.memory_key_padding_mask, repeat=2)
        with pytest.raises(ValueError, match=r"index must keep the 6 rows of the search, got shape \(4,\)"):
            fused.reorder(ours, torch.tensor([0, 1, 2, 3]))


@needs_kernels
def test_fused_steps_are_not_the_model_run_twice() -> None:
    """The comparison above can fail: one changed weight moves the fused logits off the model's."""
    model = make_model()
    fused = FusedDecoder(model)
    with torch.no_grad():
        model.decoder_layers[0].ffn.fc1.weight.mul_(1.5)  # after packing: the fused copy keeps the old one
    src = sources()
    with torch.inference_mode():
        state = model.start_state(src)
        expected, _ = model.step(state, torch.full((3,), model.bos_id))
        ours = fused.step(fused.start(state.memory, state.memory_key_padding_mask), torch.full((3,), model.bos_id))
    assert (ours - expected).abs().max() > 1e-2


@needs_kernels
@pytest.mark.parametrize("beam", [1, 4])
def test_engine_searches_on_the_fused_decoder_give_the_models_translations(beam) -> None:
    model, src = make_model(), sources()
    engine = DecodingEngine(model, fused_steps=True)
    with torch.inference_mode():
        assert isinstance(engine.start_state(src, repeat=beam), FusedState)
    kwargs = dict(max_len_a=0.0, max_len_b=INITIAL_CAPACITY + 4, min_len=INITIAL_CAPACITY + 4)
    search = greedy_search if beam == 1 else beam_search
    if beam > 1:
        kwargs["beam_size"] = beam
    ours, reference = search(engine, src, **kwargs), search(model, src, **kwargs)
    assert torch.equal(ours.tokens, reference.tokens)
    torch.testing.assert_close(ours.scores, reference.scores, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_engine_takes_the_fused_decoder_only_within_the_row_threshold() -> None:
    model, src = make_model(), sources()  # 3 sentences
    engine = DecodingEngine(model)
    with torch.inference_mode():
        set_thresholds(Thresholds(cpu_thin_max_rows=12))
        assert isinstance(engine.start_state(src, repeat=4), FusedState)  # 12 rows
        assert not isinstance(engine.start_state(src, repeat=5), FusedState)  # 15 rows
        set_thresholds(Thresholds(cpu_thin_max_rows=0))
        assert not isinstance(engine.start_state(src), FusedState)
        assert isinstance(DecodingEngine(model, fused_steps=True).start_state(src), FusedState)  # insisting
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        set_thresholds(Thresholds(cpu_thin_max_rows=0))
        bf16 = engine.start_state(src, repeat=5)  # bf16 products: any row count, where they run
        assert isinstance(bf16, FusedState) == onednn.bf16_available() == (not isinstance(bf16, SearchState))
        assert not isinstance(DecodingEngine(model, int8=True).start_state(src), FusedState)
    with torch.autocast("cpu", dtype=torch.float16), torch.inference_mode():
        assert not isinstance(engine.start_state(src), FusedState)
    with torch.enable_grad():
        assert not isinstance(engine.start_state(src), FusedState)


@needs_kernels
def test_obstacles_name_what_the_fused_decoder_cannot_run() -> None:
    model = make_model()
    assert fused_decoder.obstacles(model) == []
    odd = copy.deepcopy(model)
    layer = odd.decoder_layers[1]
    layer.cross_attn = MultiHeadAttention(layer.cross_attn.embed_dim, layer.cross_attn.num_heads, score="general")
    assert fused_decoder.obstacles(odd) == ["decoder layer 1 cross_attn is not plain (score=GeneralScore)"]
    with pytest.raises(ValueError, match=r"cannot run this model here: decoder layer 1 cross_attn is not plain"):
        FusedDecoder(odd)
    with pytest.raises(ValueError, match=r"fused_steps=True, but: decoder layer 1 cross_attn"):
        DecodingEngine(odd, fused_steps=True)
    assert not DecodingEngine(odd).fused_steps  # by default: the other paths
    assert fused_decoder.obstacles(copy.deepcopy(model).double()) == [
        "weights are torch.float64 on cpu, not fp32 on CPU"
    ]
    twelve = make_model(d_model=36, num_heads=3)  # heads of 12
    assert "head size 12, not a multiple of 8" in "; ".join(fused_decoder.obstacles(twelve))
    with pytest.raises(ValueError, match="fused_steps=True, but: plain_steps=False"):
        DecodingEngine(model, plain_steps=False, fused_steps=True)


def test_without_the_kernels_the_engine_decodes_on_its_other_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_decoder.thin, "available", lambda: False)
    model, src = make_model(), sources()
    assert fused_decoder.obstacles(model) == [
        "the compiled kernels are not available here (not built, or no AVX2 and FMA)"
    ]
    engine = DecodingEngine(model)
    assert not engine.fused_steps
    with pytest.raises(ValueError, match="fused_steps=True, but: the compiled kernels are not available"):
        DecodingEngine(model, fused_steps=True)
    kwargs = dict(max_len_a=0.0, max_len_b=8, min_len=8)
    with torch.inference_mode():
        assert not isinstance(engine.start_state(src), FusedState)
    ours, reference = greedy_search(engine, src, **kwargs), greedy_search(model, src, **kwargs)
    assert torch.equal(ours.tokens, reference.tokens)


@needs_kernels
@pytest.mark.skipif(not onednn.bf16_available(), reason="bf16 fused steps need oneDNN's bf16 products")
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("thin_rows", [0, 64])  # oneDNN's bf16 products, or the thin kernel's pair panels
def test_bf16_fused_steps_are_as_close_to_fp32_as_the_bf16_plain_steps(k, thin_rows) -> None:
    """Under bf16 autocast the fused steps multiply bf16 rows by bf16 weights (on oneDNN, or on
    the thin kernel's pair panels where the CPU has AVX-512 BF16) and keep the rest in fp32:
    their logits are no further
    from fp32's than those of the engine's plain bf16 steps, which autocast wholly, and are not
    fp32's own."""
    set_thresholds(Thresholds(cpu_thin_max_rows_bfloat16=thin_rows))
    model, src = make_model(d_model=256), sources()
    fused = DecodingEngine(model)
    plain = DecodingEngine(model, fused_steps=False, beam_pools=False)
    fp32 = DecodingEngine(model, fused_steps=False)
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            states = [engine.start_state(src, repeat=k) for engine in (fused, plain)]
        states.append(fp32.start_state(src, repeat=k))
        assert isinstance(states[0], FusedState) and states[0].bf16 and not isinstance(states[1], FusedState)
        for _ in range(6):
            tokens = torch.randint(4, 300, (src.shape[0] * k,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                (ours, states[0]), (theirs, states[1]) = (
                    engine.step(state, tokens) for engine, state in zip((fused, plain), states)
                )
            exact, states[2] = fp32.step(states[2], tokens)
            error, plain_error = (ours - exact).abs().max(), (theirs.float() - exact).abs().max()
            assert 1e-3 < error <= 2 * plain_error, (error, plain_error)
    # oneDNN's bf16 copies are packed only for the products that took them
    decoder = fused._fused[True]
    products = [decoder.output, *(getattr(layer, name) for layer in decoder.layers for name in ("qkv", "fc1", "fc2"))]
    products = [product for product in products if isinstance(product, fused_products.Bf16Product)]
    on_panels = thin_rows > 0 and thin.pairs_available()
    assert products and all((product.packed is None) == on_panels for product in products)


@needs_kernels
@pytest.mark.parametrize("k", [1, 3])
def test_int8_fused_steps_equal_the_int8_plain_steps(k) -> None:
    """The same int8 products (one copy per weight, the memory's keys and values in one) as the
    engine's plain int8 steps: logits within fp32 reordering of theirs, far from fp32's own.
    Against plain steps without beam pools: the pools' fp32 attention sums differ in the last
    bit, and dynamic quantisation can round an activation the other way on such a difference."""
    model, src = make_model(d_model=256), sources()
    fused = DecodingEngine(model, int8=True, fused_steps=True)  # past the row threshold too
    plain = DecodingEngine(model, int8=True, fused_steps=False, beam_pools=False)
    fp32 = DecodingEngine(model, fused_steps=False)
    g = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        states = [engine.start_state(src, repeat=k) for engine in (fused, plain, fp32)]
        assert isinstance(states[0], FusedState) and not isinstance(states[1], FusedState)
        for _ in range(6):
            tokens = torch.randint(4, 300, (src.shape[0] * k,), generator=g)
            (ours, states[0]), (theirs, states[1]), (exact, states[2]) = (
                engine.step(state, tokens) for engine, state in zip((fused, plain, fp32), states)
            )
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
            assert (ours - exact).abs().max() > 1e-3  # int8 products indeed
    # the steps' rows take the int8 quad panels where they run, and PyTorch's copy is then never made
    decoder = fused._fused[False]
    products = [decoder.output, *(getattr(layer, name) for layer in decoder.layers for name in ("qkv", "fc1", "fc2"))]
    products = [product for product in products if isinstance(product, fused_products.Int8Product)]
    on_quads = thin.int8_available() and src.shape[0] * k <= thin.max_rows()
    assert products and all((product.quads is not None) == thin.int8_available() for product in products)
    assert all((product.packed is None) == on_quads for product in products)
