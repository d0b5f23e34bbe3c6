"""Images as sequences of patch tokens, and resampling of learned 2-D position embeddings.

Notation: B batch, C channels, H x W image, P patch size, Gh x Gw = H/P x W/P patch grid,
N = Gh * Gw patches, E embedding size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class PatchEmbed(nn.Module):
    """Split an image into P x P patches and project each linearly (Dosovitskiy et al., 2021, Eq. 1).

    z_0 = [x_p^1 E; ...; x_p^N E], computed as a convolution with kernel = stride = P, which is the
    same linear map applied to every flattened patch. Any input whose height and width are
    multiples of P is accepted; ``image_size`` only names the grid the model was configured for.

    Args:
        image_size: the configured input size, an int (square) or ``(H, W)``.
        patch_size: P, an int (square) or ``(Ph, Pw)``.
        in_channels: C, any count.
        embed_dim: E.
        bias: learn the projection's bias.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.image_size = _pair(image_size)
        self.in_channels, self.embed_dim = in_channels, embed_dim
        self.grid_size = self.patch_grid(*self.image_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """``(Gh, Gw)`` for an ``H x W`` image; a ValueError naming the sizes if P does not divide them."""
        ph, pw = self.patch_size
        if height <= 0 or width <= 0 or height % ph or width % pw:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the patch size {ph}x{pw}; "
                f"use a size that is a multiple of it (e.g. {max(ph, height // ph * ph)}x{max(pw, width // pw * pw)})"
            )
        return height // ph, width // pw

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, N, E)``, patches in row-major order."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PatchEmbed expects images (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        self.patch_grid(x.shape[2], x.shape[3])
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, E, Gh, Gw) -> (B, N, E)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, patch_size={self.patch_size}, grid={self.grid_size}"


def resample_position_embeddings(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> Tensor:
    """Bicubically resample learned position embeddings to a new patch grid (ViT, Section 3.2).

    The paper fine-tunes at higher resolution by "2D interpolation of the pre-trained position
    embeddings, according to their location in the original image". The prefix tokens (the class
    token) keep their embeddings. Interpolation is ``bicubic`` with ``align_corners=False``, as in
    timm and Hugging Face; the same grid returns the input unchanged.

    Args:
        pos_embed: ``(1, prefix + Gh * Gw, E)``.
        old_grid: ``(Gh, Gw)`` the embeddings were learned for.
        new_grid: the target ``(Gh', Gw')``.
        num_prefix_tokens: leading tokens that are not patches.

    Returns:
        ``(1, prefix + Gh' * Gw', E)``.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    expected = num_prefix_tokens + old_grid[0] * old_grid[1]
    if pos_embed.ndim != 3 or pos_embed.shape[1] != expected:
        raise ValueError(
            f"pos_embed must be (1, {expected}, E) for grid {tuple(old_grid)} with {num_prefix_tokens} prefix "
            f"tokens, got shape {tuple(pos_embed.shape)}"
        )
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = patches.reshape(1, *old_grid, dim).permute(0, 3, 1, 2)  # (1, E, Gh, Gw)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)  # (1, Gh' * Gw', E)
    return torch.cat([prefix, patches.to(pos_embed.dtype)], dim=1)
