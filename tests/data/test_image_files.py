"""Image files: class folders (bad files skipped and named, modes converted) and load_image for inference."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data.image_dataset import split_dataset
from attnlab.data.image_files import ImageConversion, ImageFolderDataset, ImageInputError, image_conversion, load_image
from attnlab.data.image_transforms import ImageNormalization


def save_image(path: Path, mode: str, size=(6, 4), seed=0) -> np.ndarray:
    """Write a random image of ``mode`` and WxH ``size``; returns its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return pixels


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """cat/ (2 RGB PNGs, one corrupt, one text file) and dog/ (1 grayscale PNG, 1 RGBA PNG)."""
    root = tmp_path / "pets"
    save_image(root / "cat" / "a.png", "RGB", seed=1)
    save_image(root / "cat" / "b.png", "RGB", seed=2)
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "cat" / "notes.txt").write_text("not an image")
    save_image(root / "dog" / "c.png", "L", seed=3)
    save_image(root / "dog" / "d.png", "RGBA", seed=4)
    return root


def test_folder_skips_and_reports_corrupt_files(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="attnlab.data.image_files"):
        ds = ImageFolderDataset(image_folder, channels=3)
    assert ds.classes == ("cat", "dog") and len(ds) == 4 and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images.shape == (4, 3, 4, 6) and ds.channels == 3 and ds.image_size == (4, 6)
    skipped = {s.path.name for s in ds.skipped}
    assert skipped == {"broken.png", "notes.txt"}
    for name in skipped:
        assert str(image_folder / "cat" / name) in caplog.text


def test_folder_converts_modes(image_folder):
    gray = ImageFolderDataset(image_folder, channels=1)
    rgb = ImageFolderDataset(image_folder, channels=3)
    with Image.open(image_folder / "cat" / "a.png") as im:
        expected_gray = np.asarray(im.convert("L"))
    np.testing.assert_array_equal(gray.images[0, 0].numpy(), expected_gray)
    dog_gray = rgb.images[2]  # an "L" image replicated to three channels
    assert torch.equal(dog_gray[0], dog_gray[1]) and torch.equal(dog_gray[1], dog_gray[2])
    resized = ImageFolderDataset(image_folder, channels=1, image_size=(5, 3))
    assert resized.images.shape == (4, 1, 5, 3) and resized.image_size == (5, 3)


def test_folder_errors_name_the_folder(tmp_path, image_folder):
    (image_folder / "empty").mkdir()
    with pytest.raises(ValueError, match=f"class folder {image_folder / 'empty'} is empty"):
        ImageFolderDataset(image_folder)
    flat = tmp_path / "flat"
    save_image(flat / "x.png", "RGB")
    with pytest.raises(ValueError, match=f"{flat} holds no class folders"):
        ImageFolderDataset(flat)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="got 2"):
        ImageFolderDataset(flat, channels=2)


def test_folder_mixed_sizes_need_image_size(tmp_path):
    save_image(tmp_path / "r" / "a" / "1.png", "RGB", size=(6, 4))
    save_image(tmp_path / "r" / "b" / "2.png", "RGB", size=(5, 5))
    with pytest.raises(ValueError, match=r"2.png is 5x5 \(WxH\) but .*1.png is 6x4; pass image_size"):
        ImageFolderDataset(tmp_path / "r")
    assert ImageFolderDataset(tmp_path / "r", image_size=8).images.shape == (2, 3, 8, 8)


def test_folder_split_is_stratified(tmp_path):
    for c in range(2):
        for i in range(10):
            save_image(tmp_path / "r" / f"c{c}" / f"{i}.png", "L", seed=10 * c + i)
    splits = split_dataset(ImageFolderDataset(tmp_path / "r", channels=1), 0.2, 0.2, seed=0)
    assert [np.bincount(s.labels.numpy()).tolist() for s in (splits.train, splits.val, splits.test)] == [
        [6, 6],
        [2, 2],
        [2, 2],
    ]


def test_load_image_converts_for_the_model(image_folder):
    norm = ImageNormalization((0.5,), (0.5,))
    x = load_image(image_folder / "cat" / "a.png", channels=1, image_size=28, normalization=norm)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    same = load_image(image_folder / "dog" / "c.png", channels=3, image_size=(4, 6), resize=False)
    assert same.shape == (3, 4, 6)


def test_load_image_errors_name_file_size_mode_and_shape(image_folder):
    path = image_folder / "cat" / "a.png"
    with pytest.raises(
        ImageInputError,
        match=r"a.png is 6x4 \(WxH\) RGB but the model expects "
        r"\(C, H, W\) = \(1, 28, 28\), and resizing is off",
    ):
        load_image(path, channels=1, image_size=28, resize=False)
    broken = image_folder / "cat" / "broken.png"
    with pytest.raises(ImageInputError, match=rf"cannot load {broken} as an image \(expected \(C, H, W\) = \(1, 28,"):
        load_image(broken, channels=1, image_size=28)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_image(image_folder, channels=1, image_size=28)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(image_folder / "missing.png", channels=1, image_size=28)
    with pytest.raises(ValueError, match="channels must be 1 .* got 4"):
        load_image(path, channels=4, image_size=28)


def test_image_conversion_says_what_load_image_changes(image_folder):
    rgb, gray, rgba = image_folder / "cat" / "a.png", image_folder / "dog" / "c.png", image_folder / "dog" / "d.png"
    assert image_conversion(gray, channels=1, image_size=(4, 6)) is None  # 6x4 grey already
    to_gray = image_conversion(rgb, channels=1, image_size=(4, 6))
    assert to_gray == ImageConversion(rgb, (4, 6), "RGB", 1, (4, 6)) and not to_gray.resized
    resized = image_conversion(rgba, channels=3, image_size=28)
    assert resized.resized and (resized.source, resized.target) == ("6x4 (WxH) RGBA", "(C, H, W) = (3, 28, 28)")
    assert image_conversion(rgb, channels=3, image_size=(4, 6), resize=False) is None
    with pytest.raises(ImageInputError, match=r"c.png is 6x4 \(WxH\) grayscale but the model expects"):
        image_conversion(gray, channels=1, image_size=28, resize=False)
    with pytest.raises(ImageInputError, match="cannot load .*notes.txt as an image"):
        image_conversion(image_folder / "cat" / "notes.txt", channels=1, image_size=28)
    assert issubclass(ImageInputError, ValueError)
