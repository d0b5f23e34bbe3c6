"""SEBlock (channel attention) and SpatialAttention (conv and CBAM masks)."""

import pytest
import torch

from attnlab.layers import SEBlock, SpatialAttention


def test_se_excitation_is_b_by_c_in_open_unit_interval_and_scales_channels():
    torch.manual_seed(0)
    se = SEBlock(32, reduction=8)
    x = torch.randn(4, 32, 5, 6) * 10
    out, gate = se(x), se.excitation(x)
    assert gate.shape == (4, 32)
    assert ((gate > 0) & (gate < 1)).all()
    torch.testing.assert_close(out, x * gate[:, :, None, None])
    assert se.fc1.out_features == 4


def test_se_excitation_follows_the_paper():
    torch.manual_seed(0)
    se = SEBlock(6, reduction=2)
    x = torch.randn(2, 6, 3, 3)
    z = x.mean(dim=(2, 3))
    s = torch.sigmoid(se.fc2.weight @ torch.relu(se.fc1.weight @ z.T + se.fc1.bias[:, None]) + se.fc2.bias[:, None]).T
    torch.testing.assert_close(se.excitation(x), s)


def test_cbam_channel_gate_adds_the_max_pooled_branch():
    torch.manual_seed(0)
    se = SEBlock(6, reduction=2, pool="avg_max")
    x = torch.randn(2, 6, 3, 3)
    mlp = lambda v: se.fc2(torch.relu(se.fc1(v)))
    expected = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    torch.testing.assert_close(se.excitation(x), expected)


@pytest.mark.parametrize("mode", ["conv", "cbam"])
def test_spatial_mask_in_unit_interval_and_output_is_f_times_m_plus_f(mode):
    torch.manual_seed(0)
    attn = SpatialAttention(8, mode=mode, kernel_size=3)
    x = torch.randn(2, 8, 7, 5) * 5
    out, mask = attn(x), attn.mask(x)
    assert mask.shape == (2, 1, 7, 5)
    assert ((mask >= 0) & (mask <= 1)).all()
    torch.testing.assert_close(out, x * mask + x)


def test_cbam_mask_is_a_conv_over_channel_mean_and_max():
    torch.manual_seed(0)
    attn = SpatialAttention(4, mode="cbam", residual=False)
    x = torch.randn(2, 4, 9, 9)
    pooled = torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)
    mask = torch.sigmoid(torch.nn.functional.conv2d(pooled, attn.conv.weight, attn.conv.bias, padding=3))
    out, got = attn(x), attn.mask(x)
    torch.testing.assert_close(got, mask)
    torch.testing.assert_close(out, x * mask)


def test_wrong_channel_count_names_the_shape():
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\), got shape \(1, 3, 4, 4\)"):
        SpatialAttention(8)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\), got shape \(1, 3, 4, 4\)"):
        SEBlock(8)(torch.randn(1, 3, 4, 4))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="'bogus'"):
        SpatialAttention(4, mode="bogus")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        SpatialAttention(4, kernel_size=4)
    with pytest.raises(ValueError, match="'max'"):
        SEBlock(4, pool="max")
