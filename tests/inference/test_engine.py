"""The decoding engine against the model's own decoding path, and its parts: packed products
against F.linear on either kernel (and their fallback where neither runs), the plain step's
refusals, and fresh weights after training steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.decoding import beam_search, greedy_search
from attnlab.functional.kernels import Thresholds, fused_step, onednn, set_thresholds, thin
from attnlab.inference import fused_decoder
from attnlab.inference.engine import DecodingEngine
from attnlab.inference.packed import MIN_PACKED_ELEMENTS, PackedWeights
from attnlab.layers import MultiHeadAttention
from attnlab.layers.kv_cache import KVCache

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this PyTorch build has no oneDNN packed linear")
needs_bf16 = pytest.mark.skipif(not onednn.bf16_available(), reason="this CPU has no bf16 instructions")
ALL_OFF = dict(plain_steps=False, pack_weights=False, beam_pools=False, fused_steps=False)
# The compiled kernels (thin products, fused step attention) for every shape, or PyTorch's for every one.
COMPILED = Thresholds(cpu_thin_max_rows=1 << 20, cpu_step_fused_max_keys=1 << 20)
TORCH = Thresholds(cpu_thin_max_rows=0, cpu_step_fused_max_keys=0)


def _fp32_product_tolerance(inner: int) -> dict[str, float]:
    """Another summation order of ``inner`` fp32 products of unit-scale values: errors grow as sqrt(inner) eps."""
    eps = torch.finfo(torch.float32).eps
    return dict(rtol=8 * eps * inner**0.5, atol=8 * eps * inner**0.5)


# --- packed products ------------------------------------------------------------------------
@needs_onednn
@pytest.mark.parametrize("thresholds", [COMPILED, TORCH], ids=["thin", "oneDNN"])
@pytest.mark.parametrize(("rows", "shape"), [(8, (512, 256)), (40, (1024, 256)), (3, (300, 130))])
def test_packed_product_matches_f_linear_for_any_row_count(rows, shape, thresholds) -> None:
    set_thresholds(thresholds)
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)
    packed = PackedWeights(rows)
    for n in (rows, 1, 5, 3 * rows):  # one copy serves any row count
        x = torch.randn(n, 1, shape[1], generator=g)
        torch.testing.assert_close(
            packed.linear(x, weight, bias), F.linear(x, weight, bias), **_fp32_product_tolerance(shape[1])
        )


@needs_bf16
def test_packed_bf16_product_is_autocasts_product() -> None:
    g = torch.Generator().manual_seed(0)
    x, weight, bias = (
        torch.randn(8, 256, generator=g),
        torch.randn(512, 256, generator=g),
        torch.randn(512, generator=g),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = PackedWeights(8).linear(x, weight, bias), F.linear(x, weight, bias)
    assert got.dtype == expected.dtype == torch.bfloat16
    # The same bf16 operands with fp32 accumulation: differences are the bf16 rounding of the result.
    torch.testing.assert_close(got.float(), expected.float(), rtol=2**-7, atol=2**-7 * expected.abs().max().item())


def test_products_that_do_not_qualify_are_f_linears() -> None:
    g = torch.Generator().manual_seed(0)
    packed = PackedWeights(8)
    small = torch.randn(8, 8, generator=g)
    assert small.numel() < MIN_PACKED_ELEMENTS
    x = torch.randn(8, 8, generator=g)
    assert torch.equal(packed.linear(x, small), F.linear(x, small))
    trainable = torch.randn(256, 256, generator=g, requires_grad=True)
    assert packed.linear(torch.randn(8, 256, generator=g), trainable).requires_grad  # gradients flow
    x64, w64 = torch.randn(8, 256, dtype=torch.float64), torch.randn(256, 256, dtype=torch.float64)
    assert torch.equal(packed.linear(x64, w64), F.linear(x64, w64))
    with pytest.raises(ValueError, match="rows must be positive, got 0"):
        PackedWeights(0)


def test_without_either_kernel_packed_products_fall_back_to_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    """Private ops missing from a build (or renamed in a release), and no thin kernel: F.linear, bit for bit."""
    monkeypatch.setattr(thin, "available", lambda: False)
    monkeypatch.setattr(onednn, "available", lambda: False)
    monkeypatch.setattr(onednn, "bf16_available", lambda: False)
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(8, 256, generator=g), torch.randn(512, 256, generator=g)
    assert torch.equal(PackedWeights(8).linear(x, weight), F.linear(x, weight))


@needs_onednn
def test_a_weight_loaded_anew_is_packed_anew() -> None:
    g = torch.Generator().manual_seed(0)
    weight, x = torch.randn(256, 256, generator=g), torch.randn(4, 256, generator=g)
    packed = PackedWeights(4)
    packed.linear(x, weight)
    weight.copy_(torch.randn(256, 256, generator=g))  # moves the version counter, as load_state_dict does
    torch.testing.assert_close(packed.linear(x, weight), F.linear(x, weight), **_fp32_product_tolerance(256))


# --- the engine against the model -------------------------------------------------------------
@pytest.fixture(scope="module")
def src() -> torch.Tensor:
    """3 sources of 12 tokens, one with 4 padding positions."""
    src = torch.randint(4, 1000, (3, 12), generator=torch.Generator().manual_seed(1))
    src[1, 8:] = 0
    return src


def search(decoder, src: torch.Tensor, beam: int, tokens: int = 20):
    """Greedy (beam 1) or beam search of exactly ``tokens`` tokens."""
    if beam == 1:
        return greedy_search(decoder, src, max_len_a=0.0, max_len_b=tokens, min_len=tokens)
    return beam_search(decoder, src, beam_size=beam, max_len_a=0.0, max_len_b=tokens, min_len=tokens)


@pytest.mark.parametrize("beam", [1, 4])
def test_engine_with_every_path_off_decodes_as_the_model_bit_for_bit(model, src, beam) -> None:
    ours, reference = search(DecodingEngine(model, **ALL_OFF), src, beam), search(model, src, beam)
    for name in ("tokens", "scores", "lengths"):
        assert torch.equal(getattr(ours, name), getattr(reference, name)), name


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("paths", ["plain_steps", "pack_weights", "beam_pools", "fused_steps", "all"])
def test_engine_paths_give_the_models_translations(model, src, beam, paths) -> None:
    """Each speed path alone and all together: the same tokens, scores within fp32 reordering."""
    if paths == "fused_steps" and fused_decoder.obstacles(model):
        pytest.skip("the fused steps need the compiled kernels (AVX2 and FMA)")
    options = dict(ALL_OFF) if paths != "all" else {}
    if paths != "all":
        options[paths] = True
        # packing and fused steps serve plain steps
        options["plain_steps"] = options["plain_steps"] or paths in ("pack_weights", "fused_steps")
    with torch.no_grad():
        reference = search(model, src, beam)
        ours = search(DecodingEngine(model, **options), src, beam)
    assert torch.equal(ours.tokens, reference.tokens)
    torch.testing.assert_close(ours.scores, reference.scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("thresholds", [COMPILED, TORCH], ids=["compiled", "torch"])
def test_compiled_or_torch_kernels_give_the_models_translations(model, src, beam, thresholds) -> None:
    if thresholds is COMPILED and not (thin.available() and fused_step.available()):
        pytest.skip("the compiled kernels need AVX2 and FMA")
    set_thresholds(thresholds)
    with torch.no_grad():
        reference = search(model, src, beam)
        ours = search(DecodingEngine(model), src, beam)
    assert torch.equal(ours.tokens, reference.tokens)
    torch.testing.assert_close(ours.scores, reference.scores, rtol=1e-4, atol=1e-4)


def test_engine_steps_equal_the_models_logits_step_by_step(model, src) -> None:
    """Logits of every step of a teacher-forced sequence through the engine's plain steps (beam
    pools of 3 rows per sentence, source padding) against the model's general cached path."""
    k, steps = 3, 6
    tokens = torch.randint(4, 1000, (src.shape[0] * k, steps), generator=torch.Generator().manual_seed(2))
    engine = DecodingEngine(model, fused_steps=False)
    with torch.inference_mode():
        ours, theirs = engine.start_state(src, repeat=k), model.start_state(src, repeat=k)
        for t in range(steps):
            a, ours = engine.step(ours, tokens[:, t])
            b, theirs = model.step(theirs, tokens[:, t])
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_engine_takes_the_models_path_where_steps_would_be_wrong(model, src) -> None:
    """A non-plain attention layer or training mode makes the engine decode as the model does."""
    import copy

    odd = copy.deepcopy(model)
    layer = odd.decoder_layers[1]
    layer.cross_attn = MultiHeadAttention(layer.cross_attn.embed_dim, layer.cross_attn.num_heads, score="general")
    odd.eval()
    reference = search(odd, src, 4)
    ours = search(DecodingEngine(odd), src, 4)
    assert torch.equal(ours.tokens, reference.tokens)
    torch.testing.assert_close(ours.scores, reference.scores, rtol=1e-4, atol=1e-4)


def test_a_new_engine_decodes_with_the_weights_after_training_steps(model, src) -> None:
    """Fused optimisers update weights without moving their version counter: an engine made after
    the steps (as a Translator made per evaluation) decodes with the new weights."""
    import copy

    trained = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-2, fused=True)
    first = DecodingEngine(trained.eval())
    search(first, src, 1)  # packs the weights of now
    for _ in range(2):
        trained.train()
        logits = trained(src, src)
        F.cross_entropy(logits.flatten(0, 1), src.flatten()).backward()
        optimizer.step()
        optimizer.zero_grad()
    trained.eval()
    with torch.no_grad():
        reference = search(trained, src, 1)
        ours = search(DecodingEngine(trained), src, 1)
    assert torch.equal(ours.tokens, reference.tokens)
    torch.testing.assert_close(ours.scores, reference.scores, rtol=1e-4, atol=1e-4)


@needs_bf16
@pytest.mark.parametrize("beam", [1, 4])
def test_bf16_engine_matches_autocast_decoding(model, src, beam) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = search(model, src, beam)
        ours = search(DecodingEngine(model), src, beam)
    # bf16 logits: a near tie may break the other way, so compare the sentences that agree.
    same = (ours.tokens == reference.tokens).flatten(1).all(dim=-1)
    assert same.float().mean() >= 0.5
    torch.testing.assert_close(ours.scores[same], reference.scores[same], rtol=2e-2, atol=5e-2)


def test_an_engine_passes_other_models_through() -> None:
    from attnlab.models.rnn_seq2seq import RNNSeq2Seq, Seq2SeqConfig

    torch.manual_seed(0)
    rnn = RNNSeq2Seq(Seq2SeqConfig(src_vocab_size=20, tgt_vocab_size=20, embed_dim=8, hidden_size=8)).eval()
    src = torch.randint(4, 20, (2, 5), generator=torch.Generator().manual_seed(0))
    for beam in (1, 3):
        ours, reference = search(DecodingEngine(rnn), src, beam, tokens=6), search(rnn, src, beam, tokens=6)
        assert torch.equal(ours.tokens, reference.tokens) and torch.equal(ours.scores, reference.scores)


# --- MultiHeadAttention.step ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "named"),
    [
        (dict(score="dot"), "score='dot'"),
        (dict(normalize="sparsemax"), "normalize='sparsemax'"),
        (dict(rope=True), "rotary positions"),
        (dict(fused=False), "fused=False"),
        (dict(kdim=8), "kdim=8"),
    ],
)
def test_step_refuses_a_module_whose_choices_it_would_ignore(options, named) -> None:
    mha = MultiHeadAttention(16, 2, **options).eval()
    assert not mha.is_plain
    with pytest.raises(ValueError, match=f"would ignore .*{named}"):
        mha.step(torch.randn(2, 1, 16), KVCache())


def test_step_of_a_plain_module_equals_forward_with_a_cache() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2).eval()
    x = torch.randn(2, 5, 16)
    ours, theirs = KVCache(), KVCache()
    with torch.no_grad():
        for t in range(5):
            h = x[:, t : t + 1]
            expected, _ = mha(h, h, h, cache=theirs)
            torch.testing.assert_close(mha.step(h, ours), expected, rtol=1e-5, atol=1e-6)
