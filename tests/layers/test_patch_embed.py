"""PatchEmbed and position-embedding resampling."""

import pytest
import torch

from attnlab.layers import PatchEmbed, resample_position_embeddings


def test_patch_embed_is_a_linear_map_of_each_flattened_patch():
    torch.manual_seed(0)
    embed = PatchEmbed(image_size=8, patch_size=4, in_channels=2, embed_dim=5)
    x = torch.randn(3, 2, 8, 12)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (B, C, Gh, Gw, P, P)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(3, 2 * 3, 2 * 4 * 4)  # (B, N, C * P * P)
    expected = patches @ embed.proj.weight.reshape(5, -1).T + embed.proj.bias
    torch.testing.assert_close(embed(x), expected)


@pytest.mark.parametrize("channels", [1, 3, 7])
def test_any_channel_count_and_size_divisible_by_the_patch(channels):
    embed = PatchEmbed(image_size=28, patch_size=7, in_channels=channels, embed_dim=16)
    assert embed.num_patches == 16
    assert embed(torch.randn(2, channels, 14, 35)).shape == (2, 2 * 5, 16)


def test_size_not_divisible_names_the_sizes():
    embed = PatchEmbed(image_size=28, patch_size=4, in_channels=1, embed_dim=8)
    with pytest.raises(ValueError, match=r"30x28 is not divisible by the patch size 4x4"):
        embed(torch.randn(1, 1, 30, 28))


def test_wrong_channels_names_the_expected_shape():
    embed = PatchEmbed(image_size=28, patch_size=4, in_channels=1, embed_dim=8)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\), got shape \(2, 3, 28, 28\)"):
        embed(torch.randn(2, 3, 28, 28))


def test_resample_is_identity_on_the_same_grid_and_keeps_the_class_token():
    pos = torch.randn(1, 1 + 4 * 4, 6)
    assert resample_position_embeddings(pos, (4, 4), (4, 4)) is pos
    new = resample_position_embeddings(pos, (4, 4), (6, 3))
    assert new.shape == (1, 1 + 6 * 3, 6)
    torch.testing.assert_close(new[:, :1], pos[:, :1])


def test_resample_of_a_constant_grid_stays_constant():
    pos = torch.ones(1, 1 + 9, 4)
    torch.testing.assert_close(resample_position_embeddings(pos, (3, 3), (5, 7)), torch.ones(1, 1 + 35, 4))


def test_resample_rejects_a_table_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"must be \(1, 17, E\) for grid \(4, 4\)"):
        resample_position_embeddings(torch.randn(1, 10, 4), (4, 4), (2, 2))
