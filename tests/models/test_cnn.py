"""Attention CNNs: every variant trains (gradients, no NaN), returns its maps, rejects bad input."""

import pytest
import torch

from attnlab.layers import SEBlock, SpatialAttention
from attnlab.models import AttentionCNN, AttentionCNNConfig
from attnlab.viz.capture import capture


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
    ("attention", "kinds"),
    [("se", ["se_gate"]), ("spatial", ["spatial_mask"]), ("cbam", ["se_gate", "spatial_mask"])],
)
def test_capture_records_each_blocks_gate_and_mask_as_the_block_computes_them(attention, kinds):
    model = tiny(attention).eval()
    x = torch.randn(2, 1, 12, 12)
    inputs = {}  # each attention module's input, from hooks of the test's own
    handles = [
        m.register_forward_hook(lambda mod, args, out: inputs.__setitem__(mod, args[0]))
        for m in model.modules()
        if isinstance(m, (SEBlock, SpatialAttention))
    ]
    with capture(model) as maps:
        logits = model(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(logits, model(x))
    assert maps.kinds == kinds and len(maps) == 3 * len(kinds)
    sizes = [(8, 12), (16, 6), (16, 6)]
    for i, (block, (channels, side)) in enumerate(zip(model.blocks, sizes)):
        if "se_gate" in kinds:
            se = block.attention.channel
            assert maps["se_gate", i].shape == (2, channels)
            torch.testing.assert_close(maps["se_gate", i], se.excitation(inputs[se]))
        if "spatial_mask" in kinds:
            spatial = block.attention.spatial
            assert maps["spatial_mask", i].shape == (2, 1, side, side)
            torch.testing.assert_close(maps["spatial_mask", i], spatial.mask(inputs[spatial]))


def test_capture_of_chosen_blocks_and_of_a_cnn_without_attention():
    model = tiny("cbam").eval()
    with capture(model, layers=[-1], kinds="spatial_mask") as maps:
        model(torch.randn(2, 1, 12, 12))
    assert [m.name for m in maps] == ["spatial_mask.2"]
    with pytest.raises(ValueError, match="no attention"), capture(tiny("none")):
        pass
    with pytest.raises(ValueError, match=r"layer 3 does not exist: .* 3 se_gate layers"), capture(model, layers=3):
        pass


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
