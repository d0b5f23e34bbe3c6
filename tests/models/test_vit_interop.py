"""Our ViT against Hugging Face's (transformers 5.x, eager attention) on the same random weights."""

import pytest
import torch
import transformers

from attnlab.models import ViT, ViTConfig
from attnlab.models.vit_interop import (
    attnlab_to_hf,
    attnlab_to_timm,
    hf_config_from_vit,
    hf_to_attnlab,
    timm_to_attnlab,
    vit_config_from_hf,
    vit_from_hf,
    vit_to_hf,
)
from attnlab.viz.capture import capture

CONFIG = ViTConfig(
    image_size=16, patch_size=4, in_channels=3, num_classes=5, embed_dim=32, depth=2, num_heads=4, layer_norm_eps=1e-12
)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(hf_config_from_vit(CONFIG, attn_implementation="eager")).eval()
    with torch.no_grad():  # HF initialises biases and LayerNorms to 0 / 1: randomise everything
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def test_logits_and_attentions_equal_hugging_face(hf_model):
    ours = vit_from_hf(hf_model).eval()
    x = torch.randn(3, 3, 16, 16)
    ref = hf_model(x, output_attentions=True)
    with capture(ours) as maps:
        logits = ours(x)
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert len(maps) == len(ref.attentions) == 2
    for a, b in zip((m.weights for m in maps), ref.attentions):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_interpolated_positions_equal_hugging_face(hf_model):
    ours = vit_from_hf(hf_model).eval()
    x = torch.randn(2, 3, 24, 20)
    ref = hf_model(x, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(ours(x), ref, rtol=1e-5, atol=1e-5)


def test_export_round_trip_is_exact(hf_model):
    ref = hf_model.state_dict()
    exported = attnlab_to_hf(hf_to_attnlab(ref))
    assert set(exported) == set(ref)
    for key, value in ref.items():
        assert torch.equal(exported[key], value), key
    back = vit_to_hf(vit_from_hf(hf_model)).eval()
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(back(x).logits, hf_model(x).logits)


def test_config_round_trip():
    assert vit_config_from_hf(hf_config_from_vit(CONFIG)) == CONFIG
    with pytest.raises(ValueError, match="gelu_new"):
        vit_config_from_hf(transformers.ViTConfig(hidden_act="gelu_new"))
    with pytest.raises(ValueError, match="'mean'"):
        hf_config_from_vit(ViTConfig(pool="mean"))


def test_bare_vit_model_drops_the_pooler(hf_model):
    torch.manual_seed(0)
    base = transformers.ViTModel(hf_config_from_vit(CONFIG, attn_implementation="eager")).eval()
    ours = vit_from_hf(base).eval()
    assert ours.config.num_classes == 0
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours.forward_features(x), base(x).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_timm_layout_through_a_converted_state_dict(hf_model):
    """timm cannot be installed here: check its key layout on a state dict converted from HF's."""
    timm_sd = attnlab_to_timm(hf_to_attnlab(hf_model.state_dict()))
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }
    for i in range(CONFIG.depth):
        for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{module}.weight", f"blocks.{i}.{module}.bias"}
    assert set(timm_sd) == expected
    assert timm_sd["blocks.0.attn.qkv.weight"].shape == (3 * 32, 32)
    q = hf_model.state_dict()["vit.layers.0.attention.q_proj.weight"]
    assert torch.equal(timm_sd["blocks.0.attn.qkv.weight"][:32], q)
    ours = ViT(CONFIG).eval()
    ours.load_state_dict(timm_to_attnlab(timm_sd))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours(x), hf_model(x).logits, rtol=1e-5, atol=1e-5)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="vit.encoder.layer.0.attention.attention.query.weight"):
        hf_to_attnlab({"vit.encoder.layer.0.attention.attention.query.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="'fc_norm.weight'"):
        attnlab_to_hf({"fc_norm.weight": torch.zeros(1)})
