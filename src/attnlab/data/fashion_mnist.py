"""Fashion-MNIST (Xiao et al., 2017) from the Debian package ``dataset-fashion-mnist``.

The four IDX files are read from a folder, an installed package or the package fetched with
``apt-get download`` (:mod:`attnlab.data.debian`), verified against checksums of their pixels,
and cached as one ``.npz``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from attnlab.data.cache import atomic_write_bytes, default_cache_dir
from attnlab.data.debian import extract_debian_packages
from attnlab.data.idx import read_idx
from attnlab.data.image_dataset import ImageDataset, ImageSplits, normalized_splits, stratified_holdout
from attnlab.data.image_transforms import ImageAugmentation

__all__ = [
    "FASHION_MNIST_AUGMENTATION",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_PACKAGE",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_SYSTEM_DIR",
    "fashion_mnist_arrays",
    "load_fashion_mnist",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Clothes are left-right symmetric, so flips are fair augmentation.
FASHION_MNIST_AUGMENTATION = ImageAugmentation(crop_padding=2, horizontal_flip=True)

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
    train_all = ImageDataset(
        torch.from_numpy(arrays["train_images"])[:, None],  # (N, 1, 28, 28)
        arrays["train_labels"].astype(np.int64),
        FASHION_MNIST_CLASSES,
    )
    test = ImageDataset(
        torch.from_numpy(arrays["test_images"])[:, None],  # (N, 1, 28, 28)
        arrays["test_labels"].astype(np.int64),
        FASHION_MNIST_CLASSES,
    )
    labels = train_all.labels.numpy()
    train_idx, val_idx = stratified_holdout(np.arange(len(train_all)), labels, val_size, seed)
    return normalized_splits(train_all.subset(train_idx), train_all.subset(val_idx), test, augmentation)
