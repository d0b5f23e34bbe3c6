"""int8 decoding (``attnlab.inference.quantized``, ``DecodingEngine(int8=True)``, ``precision="int8"``).

Tolerances come from the arithmetic of symmetric per-channel int8 weights (step ``s_o``) and
per-tensor dynamic uint8 activations (step ``s_x``): each product term is off by at most
``|x_i| s_o / 2 + |W_oi| s_x / 2 + s_o s_x / 4``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.ao.quantization import MinMaxObserver

from attnlab.decoding import greedy_search
from attnlab.inference import load, quantized
from attnlab.inference.engine import DecodingEngine
from attnlab.inference.loading import run_precision
from attnlab.inference.quantized import QuantizedWeights, dequantized, reduce_range

torch.set_num_threads(1)


def product_error_bound(x: torch.Tensor, weight: torch.Tensor, seven_bits: bool | None = None) -> torch.Tensor:
    """``(rows, out)``: the worst-case error of the int8 product of ``x (rows, in)`` and ``weight``
    (activations on 7 bits where ``seven_bits``, by default where this CPU's ``reduce_range`` says)."""
    s_w = weight.abs().amax(dim=1) / 127  # (out,)
    levels = 127 if (reduce_range() if seven_bits is None else seven_bits) else 255
    s_x = (x.max().clamp_min(0) - x.min().clamp_max(0)) / levels
    return x.abs() @ (s_w[:, None] / 2).expand_as(weight).T + (
        weight.abs().sum(1) * s_x / 2 + x.shape[1] * s_w * s_x / 4
    )


def fake_quantized(x: torch.Tensor, seven_bits: bool) -> torch.Tensor:
    """``x`` quantised per tensor to uint8 (0..127 if ``seven_bits``) and back, by PyTorch's observer."""
    observer = MinMaxObserver(dtype=torch.quint8, quant_min=0, quant_max=127 if seven_bits else 255)
    observer(x)
    scale, zero_point = observer.calculate_qparams()
    low, high = observer.quant_min, observer.quant_max
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), low, high)


@pytest.mark.parametrize("rows", [1, 8, 40])
@pytest.mark.parametrize("force_seven_bits", [False, True], ids=["this-cpu", "7-bit"])
def test_int8_product_is_within_the_quantisation_bound(rows: int, force_seven_bits: bool, monkeypatch) -> None:
    # 7-bit activations (reduce_range) are what CPUs without AVX-512 VNNI take; forcing them
    # tests that path on every CPU (fbgemm's 7-bit products are exact on any ISA)
    if force_seven_bits:
        monkeypatch.setattr(quantized, "reduce_range", lambda: True)
    seven_bits = quantized.reduce_range()
    torch.manual_seed(0)
    weight, bias, x = torch.randn(256, 128) * 0.05, torch.randn(256), torch.randn(rows, 128)
    with torch.no_grad():
        ours = QuantizedWeights(rows=rows).linear(x, weight, bias)
    exact = F.linear(x.double(), weight.double(), bias.double())
    error = (ours.double() - exact).abs()
    assert (error <= product_error_bound(x.double(), weight.double(), seven_bits) * 1.01 + 1e-5).all()
    # and it is the int8 product: the fp32 product of the dequantised weight and the activations
    # quantised as PyTorch's MinMaxObserver does (uint8, 7 bits under reduce_range)
    assert error.max() > 1e-4
    torch.testing.assert_close(
        ours, F.linear(fake_quantized(x, seven_bits), dequantized(weight), bias), rtol=1e-5, atol=1e-5
    )


def test_products_that_do_not_qualify_stay_exact() -> None:
    """Small weights and autograd products are not quantised."""
    weight, x = torch.randn(16, 16), torch.randn(4, 16)
    torch.testing.assert_close(QuantizedWeights(rows=4).linear(x, weight), F.linear(x, weight))
    big = torch.randn(256, 128, requires_grad=True)
    out = QuantizedWeights(rows=4).linear(torch.randn(4, 128), big)
    assert out.requires_grad


@pytest.fixture(scope="module")
def src() -> torch.Tensor:
    src = torch.randint(4, 1000, (6, 12), generator=torch.Generator().manual_seed(1))
    src[1, 8:] = 0
    return src


def test_int8_logits_follow_fp32_step_by_step(model, src) -> None:
    """Teacher-forced on fp32's greedy tokens, each int8 step's logits stay within a few hundredths
    of fp32's (random weights: logits of size ~1-3) and the argmax mostly agrees."""
    tokens = greedy_search(DecodingEngine(model), src, max_len_a=0.0, max_len_b=16, min_len=16).tokens  # (B, T)
    engines = {"fp32": DecodingEngine(model), "int8": DecodingEngine(model, int8=True)}
    logits = {}
    with torch.inference_mode():
        for name, engine in engines.items():
            state = engine.start_state(src)
            steps, previous = [], torch.full((src.shape[0],), model.bos_id)
            for t in range(tokens.shape[1]):
                out, state = engine.step(state, previous)
                steps.append(out)
                previous = tokens[:, t]
            logits[name] = torch.stack(steps, dim=1)  # (B, T, V)
    difference = (logits["int8"] - logits["fp32"]).abs()
    scale = logits["fp32"].abs().max()
    assert difference.max() < 0.05 * scale
    assert difference.max() > 0  # it did multiply in int8
    agree = logits["int8"].argmax(-1).eq(logits["fp32"].argmax(-1)).float().mean()
    assert agree >= 0.9


def test_int8_translator_agrees_with_fp32_on_most_sentences(translation_run) -> None:
    fp32, int8 = load(translation_run, precision="fp32"), load(translation_run, precision="int8")
    sources = ["the cat sat on the mat", "a dog", "hello world", "one two three", "good morning", "thank you"]
    same = sum(a == b for a, b in zip(fp32.translate(sources), int8.translate(sources)))
    assert same >= len(sources) - 1
    assert int8._engine.int8 and not fp32._engine.int8


def test_int8_refuses_a_model_in_training_mode(model, src) -> None:
    engine = DecodingEngine(model, int8=True)
    model.train()
    try:
        with pytest.raises(RuntimeError, match=r"model.training=True"):
            greedy_search(engine, src, max_len_a=0.0, max_len_b=2)
    finally:
        model.eval()


def test_int8_refuses_models_it_cannot_serve(model) -> None:
    from attnlab.models.rnn_seq2seq import RNNSeq2Seq, Seq2SeqConfig

    rnn = RNNSeq2Seq(Seq2SeqConfig(src_vocab_size=20, tgt_vocab_size=20, embed_dim=8, hidden_size=8)).eval()
    with pytest.raises(ValueError, match="Transformer models; got a RNNSeq2Seq"):
        DecodingEngine(rnn, int8=True)
    with pytest.raises(ValueError, match="plain_steps=False"):
        DecodingEngine(model, int8=True, plain_steps=False)


def test_bad_precision_names_are_named(translation_run) -> None:
    with pytest.raises(ValueError, match=r"'int4' is not one of .*'int8'"):
        load(translation_run, precision="int4")
    assert run_precision("int8", None, torch.device("cpu")) is None


def test_int8_is_refused_for_classification_runs(vit_run) -> None:
    with pytest.raises(ValueError, match="int8 is for translation runs"):
        load(vit_run, precision="int8")
