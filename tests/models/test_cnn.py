"""Attention CNNs: every variant trains (gradients, no NaN), returns its maps, rejects bad input."""

import pytest
import torch

from attnlab.models import AttentionCNN, AttentionCNNConfig


def tiny(attention: str, **overrides) -> AttentionCNN:
    torch.manual_seed(0)
    config = AttentionCNNConfig(
        in_channels=1, num_classes=4, channels=(8, 16), blocks=(1, 2), attention=attention, reduction=4, **overrides
    )
    return AttentionCNN(config)


@pytest.mark.parametrize("attention", ["none", "se", "spatial", "cbam"])
def test_every_parameter_gets_a_finite_gradient(attention):
    model = tiny(attention, dropout=0.1).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(3, 1, 12, 12)), torch.tensor([0, 1, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(
    ("attention", "keys"),
    [("none", set()), ("se", {"channel"}), ("spatial", {"spatial"}), ("cbam", {"channel", "spatial"})],
)
def test_attention_maps_per_block(attention, keys):
    model = tiny(attention).eval()
    logits, maps = model(torch.randn(2, 1, 12, 12), return_attention=True)
    assert logits.shape == (2, 4)
    assert len(maps) == 3 and all(set(m) == keys for m in maps)
    sizes = [(8, 12), (16, 6), (16, 6)]
    for m, (channels, side) in zip(maps, sizes):
        if "channel" in m:
            assert m["channel"].shape == (2, channels)
        if "spatial" in m:
            assert m["spatial"].shape == (2, 1, side, side)
            assert ((m["spatial"] >= 0) & (m["spatial"] <= 1)).all()
    torch.testing.assert_close(
        model(torch.zeros(2, 1, 12, 12)), model(torch.zeros(2, 1, 12, 12), return_attention=True)[0]
    )


def test_wrong_channels_names_the_shape():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\), got shape \(2, 3, 12, 12\)"):
        tiny("se")(torch.randn(2, 3, 12, 12))


def test_config_from_dict():
    config = AttentionCNNConfig.from_dict({"channels": [8, 16], "blocks": [1, 1], "attention": "cbam"})
    assert config.channels == (8, 16)
    assert AttentionCNNConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="attension"):
        AttentionCNNConfig.from_dict({"attension": "se"})
    with pytest.raises(ValueError, match="'sk'"):
        AttentionCNNConfig(attention="sk")
    with pytest.raises(ValueError, match=r"channels \(8,\) and blocks \(1, 1\)"):
        AttentionCNNConfig(channels=(8,), blocks=(1, 1))
