"""Batched image preprocessing in torch alone: uint8 -> float, augmentation, normalisation.

Whole image sets live in memory as uint8 tensors; every step here works on a batch at once.

Notation: B batch, C channels, H height, W width, p crop padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnlab.config import ConfigMixin

__all__ = [
    "ImageAugmentation",
    "ImageNormalization",
    "preprocess_batch",
    "random_crop",
    "random_horizontal_flip",
    "to_unit_float",
]

logger = logging.getLogger(__name__)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Scale uint8 pixels to float32 in [0, 1].

    Args:
        images: uint8 tensor of any shape, e.g. (B, C, H, W).

    Returns:
        float32 tensor of the same shape.

    Raises:
        TypeError: if ``images`` is not uint8.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got dtype {images.dtype}")
    return images.to(torch.float32).div_(255.0)


def _channel_moments(pixels: torch.Tensor) -> tuple[float, float]:
    """Exact mean and population std of uint8 pixels scaled to [0, 1], via a 256-bin histogram."""
    counts = torch.bincount(pixels.flatten(), minlength=256).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum()
    mean = (counts * values).sum() / total
    var = (counts * (values - mean) ** 2).sum() / total
    return float(mean), float(var.sqrt())


@dataclass(frozen=True)
class ImageNormalization(ConfigMixin):
    """Per-channel mean and std of pixels in [0, 1]: ``x_hat = (x - mean[c]) / std[c]``.

    Computed once from a training split and saved with checkpoints (``to_dict``), so that
    inference normalises exactly as training did.

    Attributes:
        mean: one value per channel, length C.
        std: one value per channel, length C, all > 0.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive in every channel, got {self.std}")

    @classmethod
    def from_images(cls, images: torch.Tensor) -> ImageNormalization:
        """Measure mean and population std per channel.

        Args:
            images: uint8 tensor (N, C, H, W), usually the training split.

        Returns:
            The statistics of ``images / 255``. A constant channel (std 0) gets std 1.0 and
            a warning, so normalising it only shifts it.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(
                f"expected a non-empty uint8 tensor (N, C, H, W), got dtype {images.dtype} shape {tuple(images.shape)}"
            )
        moments = [_channel_moments(images[:, c]) for c in range(images.shape[1])]
        std = []
        for channel, (_, s) in enumerate(moments):
            if s == 0.0:
                logger.warning("channel %d is constant; using std 1.0 for it", channel)
            std.append(s if s > 0.0 else 1.0)
        return cls(mean=tuple(m for m, _ in moments), std=tuple(std))

    @property
    def channels(self) -> int:
        """Number of channels C."""
        return len(self.mean)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise float images in [0, 1].

        Args:
            images: float tensor (B, C, H, W) or (C, H, W).

        Returns:
            ``(images - mean) / std`` per channel, same shape.
        """
        if images.shape[-3] != self.channels:
            raise ValueError(
                f"images have {images.shape[-3]} channels (shape {tuple(images.shape)}) but the "
                f"normalisation has {self.channels}"
            )
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device)[:, None, None]
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device)[:, None, None]
        return (images - mean) / std  # (..., C, H, W)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each side by ``padding`` and crop back to (H, W) at a random offset per image.

    The offsets are drawn as ``top`` then ``left``, each uniform in ``[0, 2p]``.

    Args:
        images: tensor (B, C, H, W), any dtype; padding value is 0.
        padding: p >= 0 pixels per side; 0 returns ``images`` unchanged.
        generator: source of the offsets, for reproducibility.

    Returns:
        Tensor (B, C, H, W) of the same dtype.
    """
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    if padding == 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b)[:, None, None, None]  # (B, 1, 1, 1)
    chans = torch.arange(c)[None, :, None, None]  # (1, C, 1, 1)
    return padded[batch, chans, rows.to(images.device), cols.to(images.device)]  # (B, C, H, W)


def random_horizontal_flip(
    images: torch.Tensor, probability: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image left-right with the given probability.

    Args:
        images: tensor (B, C, H, W).
        probability: chance in [0, 1] that an image is flipped.
        generator: source of the per-image coin flips.

    Returns:
        Tensor (B, C, H, W).
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"flip probability must be in [0, 1], got {probability}")
    flip = torch.rand(images.shape[0], generator=generator) < probability  # (B,)
    return torch.where(flip[:, None, None, None].to(images.device), images.flip(-1), images)


@dataclass(frozen=True)
class ImageAugmentation:
    """Light training augmentation: random crop with zero padding, then optional flip.

    Attributes:
        crop_padding: pixels of zero padding per side before the random crop; 0 disables it.
        horizontal_flip: mirror images left-right at random (off for digits and text-like
            images, where a mirrored sample is a different thing).
        flip_probability: chance of a flip when ``horizontal_flip`` is on.
    """

    crop_padding: int = 0
    horizontal_flip: bool = False
    flip_probability: float = 0.5

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {self.flip_probability}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch (B, C, H, W); returns (B, C, H, W)."""
        images = random_crop(images, self.crop_padding, generator)
        if self.horizontal_flip:
            images = random_horizontal_flip(images, self.flip_probability, generator)
        return images


def preprocess_batch(
    images: torch.Tensor,
    normalization: ImageNormalization | None = None,
    augmentation: ImageAugmentation | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The one path from stored pixels to model input: scale, augment, normalise.

    Augmentation runs in [0, 1] pixel space, so crop padding is black, as in the usual
    pad-then-crop recipe on raw images.

    Args:
        images: uint8 tensor (B, C, H, W).
        normalization: per-channel statistics; None leaves pixels in [0, 1].
        augmentation: training augmentation; None for evaluation.
        generator: randomness for the augmentation.

    Returns:
        float32 tensor (B, C, H, W).
    """
    x = to_unit_float(images)  # (B, C, H, W) in [0, 1]
    if augmentation is not None:
        x = augmentation(x, generator)
    if normalization is not None:
        x = normalization.apply(x)
    return x
