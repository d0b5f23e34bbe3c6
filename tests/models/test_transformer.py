"""Transformer: equivalence with torch's layers, cache vs recompute, config errors, gradients, overfitting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab.decoding import greedy_search
from attnlab.layers import DecoderLayer, EncoderLayer, MultiHeadAttention
from attnlab.models.transformer import DecoderCache, Transformer, TransformerConfig
from attnlab.viz.capture import capture

D, H, FF = 32, 4, 64


def tiny_config(**overrides) -> TransformerConfig:
    values = dict(d_model=D, num_heads=H, dim_feedforward=FF, num_encoder_layers=2, num_decoder_layers=2, dropout=0.0)
    return TransformerConfig.from_dict({"src_vocab_size": 23, "tgt_vocab_size": 19, **values, **overrides})


def torch_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch's layer names -> ours (the parameter layout is the same)."""
    renames = {"linear1.": "ffn.fc1.", "linear2.": "ffn.fc2.", "multihead_attn.": "cross_attn."}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def padded(batch: int, length: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, length, D)
    mask = torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]  # (B, L), True = padding
    return x, mask


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = EncoderLayer(D, H, FF, dropout=0.0, norm_first=norm_first).eval()
    ours.load_state_dict(torch_to_ours(ref.state_dict()))
    x, mask = padded(3, 7, [7, 5, 2])
    expected = ref(x, src_key_padding_mask=mask)
    got = ours(x, key_padding_mask=mask)
    keep = ~mask  # torch's fast path may zero padded positions; compare real ones
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = DecoderLayer(D, H, FF, dropout=0.0, norm_first=norm_first).eval()
    ours.load_state_dict(torch_to_ours(ref.state_dict()))
    memory, memory_mask = padded(3, 6, [6, 4, 1])
    tgt, tgt_mask = padded(3, 5, [5, 5, 3])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # True = not allowed
    expected = ref(tgt, memory, tgt_mask=causal, tgt_key_padding_mask=tgt_mask, memory_key_padding_mask=memory_mask)
    got = ours(tgt, memory, tgt_key_padding_mask=tgt_mask, memory_key_padding_mask=memory_mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_decoder_layer_rows_per_source_sentence_match_a_repeated_memory():
    """k rows of x per sentence (beam hypotheses) against memory (B, S, D) give what those rows
    give against the memory repeated k times, the reference torch's layer accepts."""
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, batch_first=True).eval()
    ours = DecoderLayer(D, H, FF, dropout=0.0).eval()
    ours.load_state_dict(torch_to_ours(ref.state_dict()))
    memory, memory_mask = padded(2, 6, [6, 3])
    k = 3
    tgt = torch.randn(2 * k, 4, D)
    causal = torch.ones(4, 4, dtype=torch.bool).triu(1)
    repeated, repeated_mask = memory.repeat_interleave(k, dim=0), memory_mask.repeat_interleave(k, dim=0)
    expected = ref(tgt, repeated, tgt_mask=causal, memory_key_padding_mask=repeated_mask)
    got = ours(tgt, memory, memory_key_padding_mask=memory_mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="x has 5 rows, not a multiple of the 2 source sentences"):
        ours(tgt[:5], memory)


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_matches_full_prefix(norm_first):
    torch.manual_seed(0)
    model = Transformer(tiny_config(norm_first=norm_first)).eval()
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 12, 13, 14, 15], [2, 16, 17, 3, 0, 0]])
    with torch.no_grad():
        memory = model.encode(src)
        mask = model.padding_mask(src)
        full = model.decode(tgt, memory, mask)  # (B, T, V)
        cache = DecoderCache(len(model.decoder_layers))
        steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache) for t in range(tgt.shape[1])]
    assert len(cache) == tgt.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_captured_maps_are_the_attention_modules_own_weights_and_nothing_is_stashed():
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    src = torch.tensor([[5, 6, 7, 3], [8, 3, 0, 0]])
    tgt = torch.tensor([[2, 9, 10], [2, 11, 3]])
    inputs = {}  # each attention module's (query, key, value, kwargs), by a hook of the test's own
    handles = [
        m.register_forward_pre_hook(lambda mod, args, kw: inputs.__setitem__(mod, (args, kw)), with_kwargs=True)
        for m in model.modules()
        if isinstance(m, MultiHeadAttention)
    ]
    with capture(model) as maps:
        logits = model(src, tgt)
    for h in handles:
        h.remove()
    torch.testing.assert_close(logits, model(src, tgt))
    assert logits.shape == (2, 3, 19)
    assert maps.kinds == ["encoder_self", "decoder_self", "cross"] and len(maps) == 6
    for kind, layer, module in model.attention_sites():
        args, kwargs = inputs[module]
        _, expected = module(*args, **{**kwargs, "need_weights": True, "average_attn_weights": False})
        torch.testing.assert_close(maps[kind, layer], expected)
    assert [maps[k, 0].shape for k in maps.kinds] == [(2, H, 4, 4), (2, H, 3, 3), (2, H, 3, 4)]
    torch.testing.assert_close(maps["cross", -1].sum(-1), torch.ones(2, H, 3))
    assert torch.all(maps["cross", 1][1, :, :, 2:] == 0)  # source padding gets no weight
    assert torch.all(maps["decoder_self", 0].triu(1) == 0)  # no look-ahead
    stashed = [n for m in model.modules() for n, v in vars(m).items() if isinstance(v, torch.Tensor)]
    assert stashed == []
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_capture_keeps_the_heads_asked_and_layers_not_asked_on_the_fused_kernel(monkeypatch):
    import attnlab.layers.multihead as multihead

    asked = []  # need_weights of every attention() call

    def spy(*args, **kwargs):
        asked.append(kwargs["need_weights"])
        return attention(*args, **kwargs)

    attention = multihead.attention
    monkeypatch.setattr(multihead, "attention", spy)
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    src, tgt = torch.tensor([[5, 6, 7, 3]]), torch.tensor([[2, 9, 10]])
    with capture(model) as every:
        model(src, tgt)
    asked.clear()
    with capture(model, layers=-1, heads=[3, 1], kinds="cross") as maps:
        model(src, tgt)
    assert asked == [False] * 5 + [True]  # encoder 0, 1, then decoder 0 (self, cross), decoder 1 (self, cross)
    assert [(m.name, m.heads) for m in maps] == [("cross.1", (3, 1))]
    torch.testing.assert_close(maps["cross", 1], every["cross", 1][:, [3, 1]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": 2}, r"layer 2 does not exist: the model has 2 encoder_self layers \(0..1\)"),
        ({"heads": [0, 4]}, r"head 4 does not exist: the model has 4 heads \(0..3\)"),
        (
            {"kinds": "vit"},
            r"kind 'vit' is not in this Transformer: it has \['encoder_self', 'decoder_self', 'cross'\]",
        ),
    ],
)
def test_capture_names_what_does_not_exist(kwargs, message):
    model = Transformer(tiny_config())
    with pytest.raises(ValueError, match=message), capture(model, **kwargs):
        pass
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    "overrides",
    [{}, {"norm_first": True}, {"share_embeddings": True, "tgt_vocab_size": 23}, {"tie_output": False}],
)
def test_every_parameter_gets_a_gradient(overrides):
    torch.manual_seed(0)
    model = Transformer(tiny_config(**overrides))
    src = torch.randint(4, 19, (3, 6))
    tgt = torch.randint(4, 19, (3, 5))
    logits = model(src, tgt)
    logits.logsumexp(-1).mean().backward()
    assert torch.isfinite(logits).all()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert (model.output.weight is model.tgt_embed.weight) == model.config.tie_output
    assert (model.src_embed is model.tgt_embed) == model.config.share_embeddings


def test_config_from_dict_and_presets():
    base = TransformerConfig.from_preset("base", src_vocab_size=100, tgt_vocab_size=100)
    assert (base.d_model, base.num_heads, base.num_encoder_layers, base.num_decoder_layers, base.dim_feedforward) == (
        512,
        8,
        6,
        6,
        2048,
    )
    assert (base.pad_id, base.bos_id, base.eos_id) == (0, 2, 3)
    assert TransformerConfig.from_dict(base.to_dict()) == base
    assert TransformerConfig.from_dict({"src_vocab_size": 9, "tgt_vocab_size": 9, "dropout": 0}).dropout == 0.0


@pytest.mark.parametrize(
    ("values", "error", "named"),
    [
        ({"d_modle": 8}, KeyError, "d_modle"),
        ({"dropout": "0.1"}, TypeError, "dropout"),
        ({"num_heads": 2.0}, TypeError, "num_heads"),
        ({"norm_first": 1}, TypeError, "norm_first"),
        ({"num_encoder_layers": True}, TypeError, "num_encoder_layers"),
        ({"d_model": 30, "num_heads": 4}, ValueError, "d_model (30)"),
        ({"share_embeddings": True, "tgt_vocab_size": 7}, ValueError, "tgt_vocab_size (7)"),
        ({"eos_id": 40}, ValueError, "eos_id (40)"),
    ],
)
def test_config_errors_name_the_key(values, error, named):
    with pytest.raises(error, match=named.replace("(", r"\(").replace(")", r"\)")):
        TransformerConfig.from_dict({"src_vocab_size": 9, "tgt_vocab_size": 9, **values})
    with pytest.raises(KeyError, match="huge"):
        TransformerConfig.from_preset("huge", src_vocab_size=9, tgt_vocab_size=9)


def test_two_layer_model_overfits_a_handful_of_pairs():
    torch.manual_seed(0)
    model = Transformer(tiny_config(d_model=64, dim_feedforward=128, share_embeddings=True, tgt_vocab_size=23))
    pairs = [
        ([5, 6, 7, 8], [8, 7, 6, 5]),
        ([9, 10, 11], [11, 10, 9]),
        ([12, 13], [13, 12]),
        ([14, 15, 16, 17, 18], [18, 17, 16, 15, 14]),
        ([19, 20, 21, 22], [22, 21, 20, 19]),
    ]
    src = nn.utils.rnn.pad_sequence([torch.tensor([*s, 3]) for s, _ in pairs], batch_first=True)
    tgt = nn.utils.rnn.pad_sequence([torch.tensor([2, *t, 3]) for _, t in pairs], batch_first=True)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(src, tgt_in).transpose(1, 2), tgt_out, ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.02
    with torch.no_grad():
        result = greedy_search(model.eval(), src)
    assert result.tokens.tolist() == [t + [3] + [0] * (result.tokens.shape[1] - len(t) - 1) for _, t in pairs]


@pytest.mark.parametrize(
    ("score", "normalize", "positions"),
    [
        ("scaled_dot", "softmax", "learned"),
        ("scaled_dot", "softmax", "rotary"),
        ("additive", "weighted_softmax", "sinusoidal"),
        ("general", "sparsemax", "rotary"),
        ("cosine", "temperature_softmax", "learned"),
    ],
)
def test_config_chooses_score_normaliser_and_positions(score, normalize, positions):
    """The core's choices reach the model: every layer gets them, it trains (every parameter
    gets a gradient), and cached decoding equals recomputing the prefix (rotary offsets included)."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(score=score, normalize=normalize, positions=positions))
    attention_layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    assert len(attention_layers) == 2 + 2 * 2
    rotary = [m.rope is not None for m in attention_layers]
    assert sum(rotary) == (4 if positions == "rotary" else 0)  # self-attention only, never cross
    assert (model.positional is None) == (positions == "rotary")
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 12, 13, 14], [2, 16, 17, 3, 0]])
    model(src, tgt).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        memory, mask = model.encode(src), model.padding_mask(src)
        full = model.decode(tgt, memory, mask)
        cache = DecoderCache(len(model.decoder_layers))
        steps = torch.cat([model.decode(tgt[:, t : t + 1], memory, mask, cache) for t in range(tgt.shape[1])], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_config_names_a_bad_score_normaliser_or_positions():
    with pytest.raises(ValueError, match="positions must be one of .*'rotary'.*got 'relative'"):
        tiny_config(positions="relative")
    with pytest.raises(ValueError, match="unknown score 'bilinear'"):
        tiny_config(score="bilinear")
    with pytest.raises(ValueError, match="weighted_softmax.*score='additive'"):
        tiny_config(normalize="weighted_softmax")


def test_a_yaml_config_reaches_the_core_choices():
    """``model.score`` / ``normalize`` / ``positions`` in a run config build those layers."""
    from pathlib import Path

    from attnlab.training.config import load_config

    shipped = Path(__file__).parents[2] / "configs" / "generated_transformer.yaml"
    overrides = ["model.score=additive", "model.normalize=weighted_softmax", "model.positions=rotary"]
    section = load_config(shipped, overrides).model
    model = section.build(section.resolve(src_vocab_size=30, tgt_vocab_size=30))
    attention = model.decoder_layers[0].self_attn
    assert type(attention.score).__name__ == "AdditiveScore"
    assert type(attention.normalize).__name__ == "WeightedSoftmax"
    assert attention.rope is not None and model.positional is None


def test_torch_compile_trains_like_eager_in_one_graph(tmp_path, monkeypatch):
    """``torch.compile`` of a training step gives eager's loss and gradients, from one graph.
    Sequences of 64 reach the compiled causal blocks and fp32 products the oneDNN linear where
    they run eagerly; traced calls take PyTorch's kernels, which Inductor lowers itself."""
    # A fresh Inductor cache: kernels cached by a run on the CPU's own kernels failed when loaded
    # under ``make test-isa``'s emulated ISA ("tuple args required").
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_preset("tiny", src_vocab_size=100, tgt_vocab_size=100)).eval()
    src, tgt = torch.randint(4, 100, (2, 64)), torch.randint(4, 100, (2, 64))

    def gradients(module: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = module(src, tgt).logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    eager_loss, eager_grads = gradients(model)
    assert torch._dynamo.explain(model)(src, tgt).graph_break_count == 0
    compiled_loss, compiled_grads = gradients(torch.compile(model))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
