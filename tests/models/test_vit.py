"""The Vision Transformer: shapes, attentions, position-embedding resampling, gradients, errors."""

import dataclasses

import pytest
import torch

from attnlab.models import VIT_CONFIGS, ViT, ViTConfig, vit_config
from attnlab.viz.capture import capture

TINY = ViTConfig(image_size=8, patch_size=2, in_channels=2, num_classes=3, embed_dim=16, depth=2, num_heads=2)


def tiny(**overrides) -> ViT:
    torch.manual_seed(0)
    return ViT(dataclasses.replace(TINY, **overrides)).eval()


def test_logits_and_per_layer_attention_maps():
    model = tiny()
    with capture(model) as maps:
        logits = model(torch.randn(4, 2, 8, 8))
    assert logits.shape == (4, 3)
    assert [m.name for m in maps] == ["vit.0", "vit.1"]
    for m in maps:
        assert m.weights.shape == (4, 2, 17, 17) and m.heads == (0, 1)
        torch.testing.assert_close(m.weights.sum(-1), torch.ones(4, 2, 17))
    for module in model.modules():  # nothing stays on the model
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not any(isinstance(v, torch.Tensor) and v.ndim == 4 for v in vars(module).values())


def test_forward_is_forward_features_then_forward_head():
    model = tiny(pool="mean")
    x = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 16)


def test_attention_maps_do_not_change_the_logits():
    model = tiny()
    x = torch.randn(2, 2, 8, 8)
    with capture(model, heads=[1]) as maps:
        captured = model(x)
    torch.testing.assert_close(captured, model(x))
    assert maps["vit", 0].shape == (2, 1, 17, 17)


def test_fused_and_explicit_attention_agree():
    x = torch.randn(2, 2, 8, 8)
    fused, explicit = tiny(fused_attn=True), tiny(fused_attn=False)
    explicit.load_state_dict(fused.state_dict())
    with capture(fused) as maps_a:
        a = fused(x)
    with capture(explicit) as maps_b:
        b = explicit(x)
    torch.testing.assert_close(a, b)
    for m, n in zip(maps_a, maps_b):
        torch.testing.assert_close(m.weights, n.weights)


def test_position_interpolation_is_identity_at_the_configured_size():
    model = tiny()
    assert model.position_embeddings((4, 4)) is model.pos_embed


def test_model_works_at_a_new_size():
    model = tiny()
    x = torch.randn(2, 2, 12, 6)
    with capture(model, layers=0) as maps:
        logits = model(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert maps["vit", 0].shape == (2, 2, 1 + 6 * 3, 1 + 6 * 3)
    # the bicubic resampling of a constant table is constant, so the class token's view is unchanged
    with torch.no_grad():
        model.pos_embed[:, 1:] = model.pos_embed[:, 1:2]
    torch.testing.assert_close(model.position_embeddings((6, 3))[:, 1:], model.pos_embed[:, 1:2].expand(1, 18, 16))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_every_parameter_gets_a_finite_gradient(pool):
    model = tiny(pool=pool, dropout=0.1, attn_dropout=0.1).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(3, 2, 8, 8)), torch.tensor([0, 1, 2]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_wrong_channels_and_size_name_the_shapes():
    model = tiny()
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\) with H, W multiples of 2 .*got shape \(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"9x8 is not divisible by the patch size 2x2"):
        model(torch.randn(1, 2, 9, 8))


def test_config_from_dict_rejects_unknown_keys_and_bad_values():
    assert ViTConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="patch_sise"):
        ViTConfig.from_dict({"patch_sise": 4})
    with pytest.raises(ValueError, match=r"image_size \(30\) must be divisible by patch_size \(4\)"):
        ViTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match=r"embed_dim \(10\) must be divisible by num_heads \(3\)"):
        ViTConfig(embed_dim=10, num_heads=3)
    with pytest.raises(ValueError, match="'max'"):
        ViTConfig(pool="max")


def test_named_sizes():
    assert {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"} <= set(VIT_CONFIGS)
    assert vit_config("vit_tiny_patch16_224").embed_dim == 192
    assert vit_config("vit_mnist_patch7_28", num_classes=5).num_classes == 5
    model = ViT.from_name("vit_digits_patch2_8")
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert ViT.from_name("vit_mnist_patch4_28")(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="'vit_huge'"):
        vit_config("vit_huge")
    assert ViTConfig.from_preset("vit_digits_patch2_8", num_classes=3) == ViTConfig(
        image_size=8, patch_size=2, in_channels=1, num_classes=3, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0
    )


def test_golden_logits_under_a_fixed_seed():
    model = tiny()
    torch.manual_seed(1)
    logits = model(torch.randn(1, 2, 8, 8))
    torch.testing.assert_close(logits, GOLDEN, rtol=1e-4, atol=1e-5)


GOLDEN = torch.tensor([[0.05626033, 0.02631725, -0.03746352]])
