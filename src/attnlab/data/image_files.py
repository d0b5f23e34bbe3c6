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

__all__ = ["ImageConversion", "ImageFolderDataset", "ImageInputError", "SkippedFile", "image_conversion", "load_image"]

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
    if len(folders) == 1:
        logger.warning(
            "image folder %s holds one class folder (%s): every prediction is that class and accuracy is "
            "trivially 100%%; add one sub-folder per class",
            root,
            folders[0].name,
        )
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

    A folder with a single class folder is read, with a warning naming it: any classifier is
    trivially right on it.
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


class ImageInputError(ValueError):
    """An image file a model cannot take: not a readable image, not convertible to its channels,
    or (resizing off) of another size. The message names the file and the expected (C, H, W)."""


@dataclass(frozen=True)
class ImageConversion:
    """How :func:`load_image` changes a file that is not what the model takes.

    Attributes:
        path: the file.
        size: its (H, W).
        mode: its Pillow mode (``L``, ``RGB``, ``RGBA``, ``P``, ...).
        channels: the C the model expects.
        image_size: the (H, W) the model expects.
    """

    path: Path
    size: tuple[int, int]
    mode: str
    channels: int
    image_size: tuple[int, int]

    @property
    def resized(self) -> bool:
        """Whether the file's size differs from the model's."""
        return self.size != self.image_size

    @property
    def source(self) -> str:
        """The file's size and mode, e.g. ``64x48 (WxH) RGB``."""
        return f"{self.size[1]}x{self.size[0]} (WxH) {_MODE_NAMES.get(self.mode, f'mode {self.mode}')}"

    @property
    def target(self) -> str:
        """The model's input, e.g. ``(C, H, W) = (1, 28, 28)``."""
        return _shape_text(self.channels, self.image_size)


_MODE_NAMES = {
    "1": "black-and-white",
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "P": "palette",
    "RGB": "RGB",
    "RGBA": "RGBA",
}


def _shape_text(channels: int, size: tuple[int, int]) -> str:
    return f"(C, H, W) = ({channels}, {size[0]}, {size[1]})"


def _unreadable(path: Path, channels: int, size: tuple[int, int], error: Exception) -> ImageInputError:
    return ImageInputError(f"cannot load {path} as an image (expected {_shape_text(channels, size)}): {error}")


def _image_file(path: str | Path) -> Path:
    """``path`` if it is a file; a folder or a missing path raises, naming it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"image {path} is a folder; give image files")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    return path


def image_conversion(
    path: str | Path, channels: int, image_size: int | Sequence[int], *, resize: bool = True
) -> ImageConversion | None:
    """What :func:`load_image` will change in ``path``, from the file's header; None if nothing.

    Args:
        path: any format Pillow reads.
        channels: C the model expects, 1 or 3.
        image_size: (H, W) or one int, the model's input size.
        resize: False makes a size other than ``image_size`` an error.

    Returns:
        The file's size and mode beside the model's input if either differs, else None.

    Raises:
        FileNotFoundError: no such file (``IsADirectoryError`` for a folder).
        ImageInputError: not a readable image, or (``resize=False``) the wrong size; the message
            names the file, its size and mode, and the expected (C, H, W).
    """
    path, mode, size = _image_file(path), _channel_mode(channels), _as_size(image_size)
    try:
        with Image.open(path) as img:
            width, height = img.size
            conversion = ImageConversion(path, (height, width), img.mode, channels, size)
    except _UNREADABLE as err:
        raise _unreadable(path, channels, size, err) from err
    if conversion.resized and not resize:
        raise ImageInputError(
            f"{path} is {conversion.source} but the model expects {conversion.target}, and resizing is off"
        )
    return conversion if conversion.resized or conversion.mode != mode else None


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
        FileNotFoundError: no such file (``IsADirectoryError`` for a folder).
        ImageInputError: not a readable image, not convertible, or (``resize=False``) the wrong
            size; the message names the file, its size and mode, and the expected (C, H, W).
        ValueError: ``channels`` is not 1 or 3.
    """
    path, size = _image_file(path), _as_size(image_size)
    if not resize:
        image_conversion(path, channels, size, resize=False)
    _channel_mode(channels)
    try:
        pixels = _read_pixels(path, channels, size)
    except _UNREADABLE as err:
        raise _unreadable(path, channels, size, err) from err
    return preprocess_batch(torch.from_numpy(pixels)[None], normalization)[0]  # (C, H, W)
