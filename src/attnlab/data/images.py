"""Image classification data: Fashion-MNIST, scikit-learn digits, class folders, batching.

Every set is held whole in memory as a uint8 tensor (N, C, H, W); conversion to float,
augmentation and normalisation happen per batch (:mod:`attnlab.data.image_transforms`).
:class:`TensorImageLoader` yields seeded, shuffled, resumable batches without worker processes,
which for 28x28 images is faster on CPU than a ``DataLoader``.

Notation: N examples, B batch, C channels (1 or 3), H height, W width.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import struct
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from attnlab.config import ConfigMixin
from attnlab.data.cache import atomic_write_bytes, default_cache_dir
from attnlab.data.debian import extract_debian_packages
from attnlab.data.image_transforms import ImageAugmentation, ImageNormalization, preprocess_batch

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DIGITS_CLASSES",
    "FASHION_MNIST_AUGMENTATION",
    "DIGITS_AUGMENTATION",
    "IdxFormatError",
    "ImageAugmentation",
    "ImageNormalization",
    "ImageSpec",
    "ImageDataset",
    "ImageFolderDataset",
    "ImageSplits",
    "SkippedFile",
    "TensorImageLoader",
    "read_idx",
    "parse_idx",
    "validate_labels",
    "fashion_mnist_arrays",
    "load_fashion_mnist",
    "load_digits",
    "split_dataset",
    "load_image",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGITS_CLASSES = tuple(str(d) for d in range(10))

# Clothes are left-right symmetric; digits are not, so they only get a one-pixel jitter.
FASHION_MNIST_AUGMENTATION = ImageAugmentation(crop_padding=2, horizontal_flip=True)
DIGITS_AUGMENTATION = ImageAugmentation(crop_padding=1, horizontal_flip=False)

_CHANNEL_MODES = {1: "L", 3: "RGB"}

# ---------------------------------------------------------------------------------------------
# IDX files (the MNIST family's format): 2 zero bytes, a dtype code, ndim, ndim big-endian
# uint32 dims, then the data in C order, big-endian.
# ---------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """An IDX file whose header or length is not what the format requires."""


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file.

    Args:
        data: the whole file.
        source: a name for error messages, usually the path.

    Returns:
        Array of the header's shape and dtype, native byte order, writable.

    Raises:
        IdxFormatError: bad magic, unknown dtype code, truncated header, or a data length
            that disagrees with the header's dims.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{source}: {len(data)} bytes is too short for an IDX header (>= 4)")
    if data[:2] != b"\x00\x00":
        raise IdxFormatError(f"{source}: bad IDX magic 0x{data[:4].hex()}: must start with 0x0000")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise IdxFormatError(f"{source}: unknown IDX dtype code 0x{code:02x}; expected one of {known}")
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_len:
        raise IdxFormatError(
            f"{source}: IDX header declares {ndim} dims ({header_len} header bytes), file has {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header_len != expected:
        raise IdxFormatError(
            f"{source}: IDX header says shape {dims} of {dtype.name} = {expected} data bytes, "
            f"but {len(data) - header_len} follow the header"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # copies: writable, native order


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (told apart by the gzip magic, not the suffix).

    Args:
        path: the file.

    Returns:
        The decoded array, e.g. uint8 (60000, 28, 28) for Fashion-MNIST training images.

    Raises:
        FileNotFoundError: no such file.
        IdxFormatError: a broken gzip stream or a malformed IDX payload, naming the file.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxFormatError(f"{path}: corrupt gzip stream ({err})") from err
    return parse_idx(data, source=str(path))


# ---------------------------------------------------------------------------------------------
# The common dataset shape
# ---------------------------------------------------------------------------------------------


def validate_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Check that every label is an integer in ``[0, num_classes)``.

    Args:
        labels: integer tensor (N,).
        num_classes: number of classes K.

    Raises:
        TypeError: labels are not integers.
        ValueError: a label out of range, naming the value, its index and K.
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise ValueError(
            f"label {int(labels[i])} at index {i} is out of range for {num_classes} classes "
            f"(expected 0..{num_classes - 1})"
        )


@dataclass(frozen=True)
class ImageSpec(ConfigMixin):
    """What a trained classifier expects of its input; saved in checkpoints for inference.

    Attributes:
        channels: C, 1 (grayscale) or 3 (RGB).
        image_size: (H, W).
        classes: class names, index = label.
        normalization: the training split's statistics, or None for pixels in [0, 1].
    """

    channels: int
    image_size: tuple[int, int]
    classes: tuple[str, ...]
    normalization: ImageNormalization | None = None


class ImageDataset(Dataset):
    """An in-memory labelled image set.

    ``dataset[i]`` is ``(image, label)``: a float32 tensor (C, H, W), normalised if
    ``normalization`` is set (else in [0, 1]), and an int. Batches for training come faster
    from :class:`TensorImageLoader`, which reads :attr:`images` directly.

    Args:
        images: uint8 tensor (N, C, H, W).
        labels: integer tensor or array (N,), values in ``[0, len(classes))``.
        classes: class names, index = label.
        normalization: per-channel statistics applied by ``__getitem__`` and the loader.

    Raises:
        ValueError: wrong dtype or rank, N mismatch, no classes, or a label out of range.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | np.ndarray,
        classes: Sequence[str],
        normalization: ImageNormalization | None = None,
    ) -> None:
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got dtype {images.dtype} shape {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        if not classes:
            raise ValueError("an image dataset needs at least one class name")
        validate_labels(labels, len(classes))
        if normalization is not None and normalization.channels != images.shape[1]:
            raise ValueError(
                f"normalisation has {normalization.channels} channels, images have {images.shape[1]}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = tuple(classes)
        self.normalization = normalization

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = preprocess_batch(self.images[index][None], self.normalization)[0]  # (C, H, W)
        return image, int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """C."""
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return (self.images.shape[2], self.images.shape[3])

    @property
    def spec(self) -> ImageSpec:
        """The input contract a model trained on this set inherits."""
        return ImageSpec(self.channels, self.image_size, self.classes, self.normalization)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """A new dataset of the given examples, same classes and normalisation."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageDataset(self.images[index], self.labels[index], self.classes, self.normalization)

    def with_normalization(self, normalization: ImageNormalization | None) -> ImageDataset:
        """The same tensors with other statistics."""
        return ImageDataset(self.images, self.labels, self.classes, normalization)


@dataclass(frozen=True)
class ImageSplits:
    """Train / validation / test sets sharing the training split's normalisation.

    Attributes:
        train: the training examples; its statistics normalise all three.
        val: held out from the training data for model selection.
        test: the set for final numbers.
        augmentation: the augmentation recommended for this data when training.
    """

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    augmentation: ImageAugmentation

    @property
    def normalization(self) -> ImageNormalization | None:
        """The training split's per-channel statistics."""
        return self.train.normalization

    @property
    def spec(self) -> ImageSpec:
        """Input contract for a model trained on :attr:`train`."""
        return self.train.spec


def _stratified_holdout(
    indices: np.ndarray, labels: np.ndarray, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (kept, held out) with ``size`` held out, class proportions kept."""
    if size == 0:
        return np.sort(indices), np.empty(0, dtype=np.int64)
    from sklearn.model_selection import train_test_split  # slow import, only when splitting

    kept, held = train_test_split(indices, test_size=size, stratify=labels[indices], random_state=seed)
    return np.sort(kept), np.sort(held)


def _normalized_splits(
    train: ImageDataset, val: ImageDataset, test: ImageDataset, augmentation: ImageAugmentation
) -> ImageSplits:
    """Give all three sets the statistics of ``train`` alone (no leak from val/test)."""
    norm = ImageNormalization.from_images(train.images)
    return ImageSplits(train.with_normalization(norm), val.with_normalization(norm),
                       test.with_normalization(norm), augmentation)


def split_dataset(
    dataset: ImageDataset,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    augmentation: ImageAugmentation | None = None,
) -> ImageSplits:
    """Deterministic stratified train / val / test split of one labelled set.

    Args:
        dataset: all examples (e.g. an :class:`ImageFolderDataset`).
        val_fraction: share of all examples held out for validation, in [0, 1).
        test_fraction: share held out for testing, in [0, 1); the two sum below 1.
        seed: fixes the split.
        augmentation: recommended training augmentation; default none.

    Returns:
        :class:`ImageSplits` with disjoint, sorted index sets and train-split normalisation.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 and sum below 1"
        )
    n = len(dataset)
    labels = dataset.labels.numpy()
    rest, test_idx = _stratified_holdout(np.arange(n), labels, round(n * test_fraction), seed)
    train_idx, val_idx = _stratified_holdout(rest, labels, round(n * val_fraction), seed)
    return _normalized_splits(dataset.subset(train_idx), dataset.subset(val_idx),
                              dataset.subset(test_idx), augmentation or ImageAugmentation())


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST, from the Debian package dataset-fashion-mnist
# ---------------------------------------------------------------------------------------------

FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
_FASHION_MNIST_PACKAGE_DIR = "usr/share/datasets/fashion-mnist"  # inside the .deb
FASHION_MNIST_SYSTEM_DIR = Path("/") / _FASHION_MNIST_PACKAGE_DIR  # where apt-get install puts it
_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# sha256 of each decoded uint8 array's C-order bytes (Debian recompressed the .gz files, so
# archive checksums differ from upstream's; the pixels do not). Measured from the package.
FASHION_MNIST_SHA256 = {
    "train_images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "train_labels": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "test_labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _verify_fashion_mnist(arrays: dict[str, np.ndarray], source: str | Path) -> None:
    """Raise if any array's checksum differs from :data:`FASHION_MNIST_SHA256`."""
    for name, expected in FASHION_MNIST_SHA256.items():
        actual = _array_sha256(arrays[name])
        if actual != expected:
            raise ValueError(
                f"Fashion-MNIST {name} from {source} (dtype {arrays[name].dtype}, shape "
                f"{arrays[name].shape}) has sha256 {actual}, expected {expected}"
            )


def _read_fashion_mnist_dir(directory: Path) -> dict[str, np.ndarray]:
    return {name: read_idx(directory / filename) for name, filename in _FASHION_MNIST_FILES.items()}


def _fetch_fashion_mnist(source_dir: Path | None) -> tuple[dict[str, np.ndarray], str]:
    """Read the IDX files from ``source_dir``, the system install, or a downloaded package."""
    if source_dir is None and FASHION_MNIST_SYSTEM_DIR.is_dir():
        source_dir = FASHION_MNIST_SYSTEM_DIR
    if source_dir is not None:
        return _read_fashion_mnist_dir(Path(source_dir)), str(source_dir)
    with tempfile.TemporaryDirectory(prefix="attnlab-fashion-mnist-") as tmp:
        hint = f"or extract {FASHION_MNIST_DEBIAN_PACKAGE} elsewhere and pass source_dir= its IDX folder"
        root = extract_debian_packages([FASHION_MNIST_DEBIAN_PACKAGE], Path(tmp), hint=hint)
        arrays = _read_fashion_mnist_dir(root / _FASHION_MNIST_PACKAGE_DIR)
    return arrays, f"Debian package {FASHION_MNIST_DEBIAN_PACKAGE}"


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def fashion_mnist_arrays(
    cache_dir: str | Path | None = None, source_dir: str | Path | None = None
) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays, checksum-verified, cached as one .npz.

    Looks in ``<cache>/fashion-mnist/fashion_mnist.npz`` first; otherwise reads the IDX files
    from ``source_dir``, else from an installed ``/usr/share/datasets/fashion-mnist``, else from
    the Debian package fetched with ``apt-get download`` into a temporary folder (about 31 MB).

    Args:
        cache_dir: cache root; default ``$ATTNLAB_CACHE`` or ``~/.cache/attnlab``.
        source_dir: a folder holding the four ``*-ubyte.gz`` IDX files.

    Returns:
        ``train_images`` uint8 (60000, 28, 28), ``train_labels`` uint8 (60000,),
        ``test_images`` uint8 (10000, 28, 28), ``test_labels`` uint8 (10000,).

    Raises:
        ValueError: a checksum mismatch, naming the array, its source and both digests.
        IdxFormatError: a corrupt IDX file.
        RuntimeError: the Debian package could not be fetched.
    """
    cache_file = Path(cache_dir or default_cache_dir()) / "fashion-mnist" / "fashion_mnist.npz"
    if cache_file.exists():
        with np.load(cache_file) as npz:
            arrays = {name: npz[name] for name in _FASHION_MNIST_FILES if name in npz}
        try:
            _verify_fashion_mnist(arrays, cache_file)
            return arrays
        except (KeyError, ValueError) as err:
            logger.warning("discarding a bad Fashion-MNIST cache %s: %s", cache_file, err)
    arrays, source = _fetch_fashion_mnist(Path(source_dir) if source_dir else None)
    _verify_fashion_mnist(arrays, source)
    _save_npz_atomic(cache_file, arrays)
    logger.info("cached Fashion-MNIST from %s at %s", source, cache_file)
    return arrays


def load_fashion_mnist(
    val_size: int = 5000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    source_dir: str | Path | None = None,
    augmentation: ImageAugmentation = FASHION_MNIST_AUGMENTATION,
) -> ImageSplits:
    """Fashion-MNIST (Xiao et al., 2017): 10 classes of 28x28 grayscale clothing images.

    Args:
        val_size: training examples held out (stratified) for validation.
        seed: fixes the validation split.
        cache_dir: see :func:`fashion_mnist_arrays`.
        source_dir: see :func:`fashion_mnist_arrays`.
        augmentation: recommended training augmentation (crop padding 2, flips).

    Returns:
        Splits of 60000 - val_size / val_size / 10000 images, each uint8 (N, 1, 28, 28).
    """
    arrays = fashion_mnist_arrays(cache_dir, source_dir)
    train_all = ImageDataset(torch.from_numpy(arrays["train_images"])[:, None],  # (N, 1, 28, 28)
                             arrays["train_labels"].astype(np.int64), FASHION_MNIST_CLASSES)
    test = ImageDataset(torch.from_numpy(arrays["test_images"])[:, None],  # (N, 1, 28, 28)
                        arrays["test_labels"].astype(np.int64), FASHION_MNIST_CLASSES)
    labels = train_all.labels.numpy()
    train_idx, val_idx = _stratified_holdout(np.arange(len(train_all)), labels, val_size, seed)
    return _normalized_splits(train_all.subset(train_idx), train_all.subset(val_idx), test, augmentation)


# ---------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------


def load_digits(
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    augmentation: ImageAugmentation = DIGITS_AUGMENTATION,
) -> ImageSplits:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), no download needed.

    Pixel values 0..16 are rescaled to 0..255 (``rint(v * 255 / 16)``) so that every set in
    this module shares one uint8 convention.

    Args:
        val_fraction: share of all images for validation.
        test_fraction: share of all images for testing.
        seed: fixes the stratified split.
        augmentation: recommended training augmentation (1-pixel jitter, no flips).

    Returns:
        Splits of uint8 (N, 1, 8, 8) images.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    dataset = ImageDataset(torch.from_numpy(pixels)[:, None], bunch.target.astype(np.int64), DIGITS_CLASSES)
    return split_dataset(dataset, val_fraction, test_fraction, seed, augmentation)


# ---------------------------------------------------------------------------------------------
# Image files: class folders and single images for inference
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def _seeded_generator(*entropy: int) -> torch.Generator:
    """A torch generator whose seed mixes all of ``entropy`` (numpy SeedSequence)."""
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


class TensorImageLoader:
    """Shuffled, augmented, normalised batches straight from an in-memory :class:`ImageDataset`.

    The order of epoch ``e`` depends only on ``(seed, e)`` and the augmentation of batch ``i``
    only on ``(seed, e, i)``, so skipping batches reproduces an interrupted epoch exactly.
    Call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``.

    Args:
        dataset: the examples; its ``normalization`` is applied to every batch.
        batch_size: B.
        shuffle: permute each epoch; False keeps dataset order (evaluation).
        drop_last: drop a final batch smaller than B.
        augmentation: applied to every batch in [0, 1] pixel space; None for evaluation.
        seed: base seed for shuffling and augmentation.

    Yields:
        ``(images, labels)``: float32 (B, C, H, W) and int64 (B,).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        augmentation: ImageAugmentation | None = None,
        seed: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self._start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate next, optionally resuming after ``start_batch`` batches.

        ``start_batch`` applies to the next iteration only.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch = epoch
        self._start_batch = start_batch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=_seeded_generator(self.seed, self.epoch, 0))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self._start_batch = self._start_batch, 0
        order = self._order()  # (N,)
        for i in range(start, len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]  # (B,)
            generator = None
            if self.augmentation is not None:
                generator = _seeded_generator(self.seed, self.epoch, 1, i)
            images = preprocess_batch(self.dataset.images[index], self.dataset.normalization,
                                      self.augmentation, generator)  # (B, C, H, W)
            yield images, self.dataset.labels[index]
