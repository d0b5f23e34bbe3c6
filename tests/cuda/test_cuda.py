"""The CUDA path: attention, layers, decoding and training on a GPU, against references on the
same GPU (torch's own modules and SDPA) and against the CPU.

These run only where ``torch.cuda.is_available()``; CI has no GPU. Run them on one with
``.venv/bin/python -m pytest tests/cuda``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnlab
from attnlab import MultiHeadAttention
from attnlab.decoding import beam_search, greedy_search
from attnlab.functional import attention
from attnlab.inference.engine import DecodingEngine
from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.training import RunConfig, Trainer
from attnlab.viz.capture import capture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def _qkv(b=2, h=4, lq=33, lk=47, d=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(CUDA, dtype) for n in (lq, lk, lk)]


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_attention_on_cuda_matches_the_formula_in_float64(is_causal, padding):
    q, k, v = _qkv()
    mask = None
    if padding:
        mask = torch.ones(2, 1, 1, k.shape[-2], dtype=torch.bool, device=CUDA)
        mask[1, ..., -9:] = False
    scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:  # the last query sees the last key
        lq, lk = q.shape[-2], k.shape[-2]
        allowed = torch.ones(lq, lk, dtype=torch.bool, device=CUDA).tril(lk - lq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    expected = weights @ v.double()
    for fused in (True, False):
        out, w = attention(q, k, v, mask=mask, is_causal=is_causal, need_weights=True, fused=fused)
        assert out.device.type == "cuda" and w.device.type == "cuda"
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(w.double(), weights, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("is_causal", [False, True])
def test_bf16_attention_runs_on_the_flash_kernel_and_equals_sdpa(is_causal):
    """Only flash attention allowed: the fused path must be a call it accepts."""
    q, k, v = _qkv(lq=64, lk=64, dtype=torch.bfloat16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out, _ = attention(q, k, v, is_causal=is_causal, fused=True)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)


def test_attention_weights_beside_the_flash_kernel_match_the_explicit_path():
    """Weights asked for on the fused path: the context still from SDPA, the weights from the
    scores, both equal to the explicit path's."""
    q, k, v = _qkv(lq=64, lk=64, dtype=torch.bfloat16)
    out, w = attention(q, k, v, is_causal=True, need_weights=True, fused=True)
    ref_out, ref_w = attention(q.float(), k.float(), v.float(), is_causal=True, need_weights=True, fused=False)
    torch.testing.assert_close(out.float(), ref_out, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(w.float(), ref_w, atol=1e-2, rtol=2e-2)


def test_gradcheck_on_cuda_in_float64():
    q, k, v = (t.double().requires_grad_() for t in _qkv(b=1, h=2, lq=3, lk=4, d=5))
    assert torch.autograd.gradcheck(lambda *t: attention(*t, is_causal=True)[0], (q, k, v))


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_matches_torch_on_cuda(need_weights):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(64, 8, batch_first=True).to(CUDA)
    ours = MultiHeadAttention.from_torch(ref).to(CUDA)
    x = torch.randn(3, 17, 64, device=CUDA)
    padding = torch.zeros(3, 17, dtype=torch.bool, device=CUDA)
    padding[1, -5:] = True
    r_out, r_w = ref(x, x, x, key_padding_mask=padding, need_weights=need_weights)
    o_out, o_w = ours(x, x, x, key_padding_mask=padding, need_weights=need_weights)
    torch.testing.assert_close(o_out, r_out, atol=1e-5, rtol=1e-4)
    if need_weights:
        torch.testing.assert_close(o_w, r_w, atol=1e-6, rtol=1e-4)
    r_out.square().sum().backward()
    o_out.square().sum().backward()
    torch.testing.assert_close(ours.in_proj_weight.grad, ref.in_proj_weight.grad, atol=1e-4, rtol=1e-4)


def _model(**overrides) -> Transformer:
    values = dict(
        src_vocab_size=41,
        tgt_vocab_size=37,
        d_model=64,
        num_heads=4,
        dim_feedforward=128,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
    )
    torch.manual_seed(0)
    return Transformer(TransformerConfig.from_dict({**values, **overrides})).eval()


SRC = torch.tensor([[5, 6, 7, 8, 9, 10, 3], [11, 12, 13, 3, 0, 0, 0], [14, 15, 16, 17, 3, 0, 0]])


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_on_cuda_gives_the_cpu_logits_and_packs_nothing(norm_first):
    model = _model(norm_first=norm_first)
    tgt = torch.tensor([[2, 20, 21, 22], [2, 23, 3, 0], [2, 24, 25, 3]])
    with torch.no_grad():
        cpu = model(SRC, tgt)
        gpu_model = model.to(CUDA)
        gpu = gpu_model(SRC.to(CUDA), tgt.to(CUDA))
        result = greedy_search(gpu_model, SRC.to(CUDA), max_len_a=0.0, max_len_b=6)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
    assert result.tokens.device.type == "cuda"
    engine = DecodingEngine(gpu_model)
    with torch.no_grad():
        fast = greedy_search(engine, SRC.to(CUDA), max_len_a=0.0, max_len_b=6)
    assert torch.equal(fast.tokens, result.tokens)
    assert engine._packed is None  # the CPU's packed copies are never made for a GPU


def test_cuda_decoding_cached_equals_uncached_and_beam_one_equals_greedy():
    model = _model().to(CUDA)
    src = SRC.to(CUDA)
    with torch.no_grad():
        cached = greedy_search(model, src, max_len_a=0.0, max_len_b=8, min_len=8)
        uncached = greedy_search(model, src, max_len_a=0.0, max_len_b=8, min_len=8, use_cache=False)
        beam = beam_search(model, src, beam_size=1, alpha=0.0, max_len_a=0.0, max_len_b=8, min_len=8)
        beam4 = beam_search(model, src, beam_size=4, n_best=2, max_len_a=0.0, max_len_b=8)
        # 40 steps: the beam cache's key pools are compacted on the GPU too.
        long_beam = [
            beam_search(model, src, beam_size=4, max_len_a=0.0, max_len_b=40, min_len=40, use_cache=c)
            for c in (True, False)
        ]
    assert torch.equal(long_beam[0].tokens, long_beam[1].tokens)
    torch.testing.assert_close(long_beam[0].scores, long_beam[1].scores, atol=1e-4, rtol=1e-4)
    assert torch.equal(cached.tokens, uncached.tokens)
    torch.testing.assert_close(cached.scores, uncached.scores, atol=1e-4, rtol=1e-4)
    assert torch.equal(beam.tokens[:, 0], cached.tokens)
    torch.testing.assert_close(beam.scores[:, 0], cached.scores, atol=1e-4, rtol=1e-4)
    assert beam4.tokens.shape[:2] == (3, 2) and beam4.tokens.device.type == "cuda"
    assert (beam4.scores[:, 0] >= beam4.scores[:, 1]).all()


def test_bf16_steps_on_cuda_multiply_by_bf16_copies_made_once_with_autocasts_result():
    """Searches run under inference mode, where autocast casts every weight on every call: the
    engine's copies in autocast's dtype must give the same tokens and scores as those casts."""
    model = _model(d_model=128, dim_feedforward=256).to(CUDA)  # weights past MIN_PACKED_ELEMENTS
    src = SRC.to(CUDA)
    with_copies, without = DecodingEngine(model), DecodingEngine(model, pack_weights=False)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast = greedy_search(with_copies, src, max_len_a=0.0, max_len_b=8, min_len=8)
        copies = len(with_copies._packed)
        again = greedy_search(with_copies, src, max_len_a=0.0, max_len_b=8, min_len=8)
        cast = greedy_search(without, src, max_len_a=0.0, max_len_b=8, min_len=8)
    # per decoder layer: self-attention's in- and out-projections, source-target attention's query,
    # key and value blocks and out-projection, the FFN's two (the 37-word output layer is too small)
    assert copies == 8 * len(model.decoder_layers)
    assert len(with_copies._packed) == copies  # made by the first search, reused by the second
    assert without._packed is None
    assert torch.equal(fast.tokens, cast.tokens) and torch.equal(again.tokens, fast.tokens)
    torch.testing.assert_close(fast.scores, cast.scores, atol=1e-5, rtol=1e-5)


def test_capture_on_cuda_gives_the_cpu_maps_in_fp32_and_close_in_bf16():
    """Per-head maps of every site captured on the GPU: the CPU's in fp32; under bf16 autocast (the
    fused kernel, weights computed beside it) rows still sum to 1 and stay close to fp32's."""
    model = _model()
    tgt = torch.tensor([[2, 20, 21, 22], [2, 23, 3, 0], [2, 24, 25, 3]])
    with torch.no_grad(), capture(model) as cpu:
        model(SRC, tgt)
    gpu_model = model.to(CUDA)
    with torch.no_grad(), capture(gpu_model) as gpu:
        gpu_model(SRC.to(CUDA), tgt.to(CUDA))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), capture(gpu_model) as bf16:
        gpu_model(SRC.to(CUDA), tgt.to(CUDA))
    assert [(m.kind, m.layer, m.heads) for m in gpu] == [(m.kind, m.layer, m.heads) for m in cpu]
    assert [(m.kind, m.layer, m.heads) for m in bf16] == [(m.kind, m.layer, m.heads) for m in cpu]
    for ours, low, reference in zip(gpu, bf16, cpu):
        assert ours.weights.device.type == "cuda" and low.weights.device.type == "cuda"
        torch.testing.assert_close(ours.weights.cpu(), reference.weights, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(low.weights.float().sum(-1), ours.weights.sum(-1), atol=2e-2, rtol=0)
        torch.testing.assert_close(low.weights.float(), ours.weights, atol=2e-2, rtol=2e-2)


def test_bf16_autocast_training_step_on_cuda_is_close_to_fp32():
    model = _model().train().to(CUDA)
    tgt = torch.tensor([[2, 20, 21, 22, 3], [2, 23, 3, 0, 0], [2, 24, 25, 3, 0]], device=CUDA)
    src = SRC.to(CUDA)

    def loss_and_grads(dtype):
        model.zero_grad()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.float().transpose(1, 2), tgt[:, 1:], ignore_index=0)
        loss.backward()
        return loss.detach(), logits.dtype, [p.grad.clone() for p in model.parameters()]

    loss32, dtype32, grads32 = loss_and_grads(None)
    loss16, dtype16, grads16 = loss_and_grads(torch.bfloat16)
    assert (dtype32, dtype16) == (torch.float32, torch.bfloat16)
    torch.testing.assert_close(loss16, loss32, atol=3e-2, rtol=1e-2)
    flat32, flat16 = torch.cat([g.flatten() for g in grads32]), torch.cat([g.flatten() for g in grads16])
    assert F.cosine_similarity(flat32, flat16, dim=0) > 0.99


def test_trainer_on_cuda_in_bf16_resumes_and_its_run_loads_on_the_cpu(
    tmp_path, tiny_translation_config, killed_then_resumed
):
    settings = dict(max_steps=12, checkpoint_every=4, eval_every=6, device="cuda", precision="bf16")
    straight = Trainer(RunConfig.from_dict(tiny_translation_config(tmp_path / "a", **settings)))
    straight.run()
    assert next(straight.model.parameters()).device.type == "cuda"
    assert all(p.is_cuda for group in straight.optimizer.param_groups for p in group["params"])

    config = RunConfig.from_dict(tiny_translation_config(tmp_path / "b", **settings))
    resumed, saved_step = killed_then_resumed(config, kill_after=10)
    assert saved_step == 8 and resumed.state.step == 12
    # Same data order, RNG and optimiser state; GPU kernels with atomics (the embedding's
    # backward) may add in another order, so equal up to float rounding.
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)

    translator = attnlab.load(tmp_path / "a", "last", device="cpu")
    assert next(translator.model.parameters()).device.type == "cpu"
    assert isinstance(translator.translate(["March 3, 2021"])[0], str)
