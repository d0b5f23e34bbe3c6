"""Image files read with Pillow: class folders for training and single images for inference."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnlab.data.image_dataset import ImageDataset
from attnlab.data.image_transforms import ImageNormalization, preprocess_batch

__all__ = ["ImageFolderDataset", "SkippedFile", "load_image"]

logger = logging.getLogger(__name__)

_CHANNEL_MODES = {1: "L", 3: "RGB"}
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class SkippedFile:
    """A file in an image folder that could not be read, and why."""

    path: Path
    reason: str


def _as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``28`` or ``(28, 28)`` -> ``(H, W)``; None stays None."""
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive (H, W), got {size}")
    return int(h), int(w)


def _channel_mode(channels: int) -> str:
    if channels not in _CHANNEL_MODES:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    return _CHANNEL_MODES[channels]


def _read_pixels(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Decode, convert to the channel mode and resize; uint8 (C, H, W). Raises on bad files."""
    with Image.open(path) as img:
        img.load()
        original = f"{img.size[0]}x{img.size[1]} (WxH) mode {img.mode}"
        try:
            converted = img.convert(_channel_mode(channels))
            if size is not None and converted.size != (size[1], size[0]):
                converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        except ValueError as err:
            raise ValueError(f"cannot convert {original} to {channels} channel(s): {err}") from err
    pixels = np.array(converted, dtype=np.uint8)  # (H, W) or (H, W, C), writable copy
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels).transpose(2, 0, 1)


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} holds no class folders; expected one sub-folder per class")
    return folders


def _read_class_folder(
    folder: Path, channels: int, size: tuple[int, int] | None, skipped: list[SkippedFile]
) -> list[tuple[Path, np.ndarray]]:
    """Every readable image under ``folder``; unreadable files are logged and recorded."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"class folder {folder} is empty")
    images = []
    for path in files:
        try:
            images.append((path, _read_pixels(path, channels, size)))
        except _UNREADABLE as err:
            logger.warning("skipping unreadable image %s: %s", path, err)
            skipped.append(SkippedFile(path, str(err)))
    if not images:
        raise ValueError(f"class folder {folder} has no readable image among {len(files)} files")
    return images


def _stack_same_size(records: list[tuple[Path, np.ndarray]]) -> np.ndarray:
    """Stack (C, H, W) arrays; a size mismatch names the file and asks for ``image_size``."""
    first_path, first = records[0][0], records[0][1].shape
    for path, image in records:
        if image.shape != first:
            raise ValueError(
                f"{path} is {image.shape[2]}x{image.shape[1]} (WxH) but {first_path} is "
                f"{first[2]}x{first[1]}; pass image_size to resize them to one size"
            )
    return np.stack([image for _, image in records])  # (N, C, H, W)


class ImageFolderDataset(ImageDataset):
    """Images laid out one sub-folder per class (``root/<class>/<any name>``), read with Pillow.

    Class names are the sub-folder names, sorted. Files that are not readable images are
    logged as warnings, listed in :attr:`skipped`, and left out.

    Args:
        root: the folder of class folders.
        channels: 1 converts to grayscale ("L"), 3 to RGB.
        image_size: ``(H, W)`` or one int; resize every image to it (bilinear). None keeps
            the sizes, which must then all agree.
        normalization: statistics for ``__getitem__``; see :func:`split_dataset` for splits.

    Raises:
        FileNotFoundError: ``root`` is missing.
        ValueError: no class folders, an empty class folder (named), or mismatched sizes.
    """

    def __init__(
        self,
        root: str | Path,
        channels: int = 3,
        image_size: int | Sequence[int] | None = None,
        normalization: ImageNormalization | None = None,
    ) -> None:
        _channel_mode(channels)
        size = _as_size(image_size)
        self.root = Path(root)
        self.skipped: list[SkippedFile] = []
        folders = _class_folders(self.root)
        per_class = [_read_class_folder(f, channels, size, self.skipped) for f in folders]
        images = _stack_same_size([record for group in per_class for record in group])
        labels = np.repeat(np.arange(len(folders)), [len(group) for group in per_class])
        super().__init__(torch.from_numpy(images), labels, [f.name for f in folders], normalization)


def load_image(
    path: str | Path,
    channels: int,
    image_size: int | Sequence[int],
    normalization: ImageNormalization | None = None,
    *,
    resize: bool = True,
) -> torch.Tensor:
    """Load one image file as a model expects it, for inference.

    Args:
        path: any format Pillow reads.
        channels: C the model expects, 1 or 3; the image is converted to that mode.
        image_size: (H, W) or one int, the model's input size.
        normalization: the training statistics (``ImageSpec.normalization``); None keeps [0, 1].
        resize: resize to ``image_size``; if False a different size is an error.

    Returns:
        float32 tensor (C, H, W).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable image, not convertible, or (``resize=False``) the wrong
            size; the message names the file, its size and mode, and the expected shape.
    """
    path = Path(path)
    _channel_mode(channels)
    size = _as_size(image_size)
    expected = f"expected (C, H, W) = ({channels}, {size[0]}, {size[1]})"
    if path.is_dir():
        raise IsADirectoryError(f"image {path} is a folder; give image files")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    if not resize:
        _check_size(path, size, expected)
    try:
        pixels = _read_pixels(path, channels, size)
    except _UNREADABLE as err:
        raise ValueError(f"cannot load {path} as an image ({expected}): {err}") from err
    return preprocess_batch(torch.from_numpy(pixels)[None], normalization)[0]  # (C, H, W)


def _check_size(path: Path, size: tuple[int, int], expected: str) -> None:
    try:
        with Image.open(path) as img:
            actual, mode = img.size, img.mode
    except _UNREADABLE as err:
        raise ValueError(f"cannot load {path} as an image ({expected}): {err}") from err
    if actual != (size[1], size[0]):
        raise ValueError(f"{path} is {actual[0]}x{actual[1]} (WxH) mode {mode}; {expected} and resize=False")
