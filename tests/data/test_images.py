"""Image sets: IDX parsing, Fashion-MNIST fetch/cache/checksums, digits, class folders, loader."""

import gzip
import hashlib
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data import images as images_module
from attnlab.data.images import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SHA256,
    IdxFormatError,
    ImageDataset,
    ImageFolderDataset,
    ImageNormalization,
    ImageSpec,
    TensorImageLoader,
    fashion_mnist_arrays,
    load_digits,
    load_fashion_mnist,
    load_image,
    parse_idx,
    read_idx,
    split_dataset,
    validate_labels,
)

# --- fixtures --------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """Encode an array as an IDX file: zero magic, dtype code, ndim, big-endian dims, data."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def fake_fashion_dir(tmp_path, monkeypatch) -> Path:
    """Four small gzip IDX files named like Fashion-MNIST's, with the checksums patched to match."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(40, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(10, dtype=np.uint8),
    }
    source = tmp_path / "fashion-src"
    source.mkdir()
    for name, filename in images_module._FASHION_MNIST_FILES.items():
        (source / filename).write_bytes(gzip.compress(idx_bytes(arrays[name])))
        monkeypatch.setitem(FASHION_MNIST_SHA256, name, hashlib.sha256(arrays[name].tobytes()).hexdigest())
    return source


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


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


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_gzip_and_raw(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(array)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 7  # writable


def test_parse_idx_decodes_big_endian_int32():
    array = np.array([1, -2, 70000], dtype=np.int32)
    np.testing.assert_array_equal(parse_idx(idx_bytes(array, code=0x0C)), array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad IDX magic 0x01000801"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX dtype code 0x07"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "declares 3 dims"),
        (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + b"\x00" * 5, "6 data bytes, but 5"),
    ],
)
def test_corrupt_idx_raises_clear_error(tmp_path, data, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(IdxFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 4), np.uint8)))[:-12])
    with pytest.raises(IdxFormatError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


# --- dataset shape and labels ----------------------------------------------------------------


def test_validate_labels_names_value_and_class_count():
    with pytest.raises(ValueError, match=r"label 10 at index 2 is out of range for 10 classes \(expected 0..9\)"):
        validate_labels(torch.tensor([0, 9, 10]), 10)
    with pytest.raises(ValueError, match="label -1"):
        ImageDataset(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), [-1], ["a"])
    with pytest.raises(TypeError, match="float"):
        validate_labels(torch.tensor([0.0]), 2)


def test_image_dataset_items_and_spec():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5)
    norm = ImageNormalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ds = ImageDataset(images, np.array([1, 0]), ["x", "y"], norm)
    image, label = ds[0]
    assert image.shape == (3, 4, 5) and image.dtype == torch.float32 and label == 1 and type(label) is int
    assert torch.allclose(image, (images[0] / 255 - 0.5) / 0.25)
    assert (ds.num_classes, ds.channels, ds.image_size, ds.classes) == (2, 3, (4, 5), ("x", "y"))
    assert ImageSpec.from_dict(ds.spec.to_dict()) == ds.spec
    with pytest.raises(ValueError, match="labels shape"):
        ImageDataset(images, [0], ["x"])
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(images.float(), [0, 0], ["x"])


# --- digits ----------------------------------------------------------------------------------


def test_digits_split_is_disjoint_stratified_and_complete(digits):
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797 and sizes[1] == round(1797 * 0.1) and sizes[2] == round(1797 * 0.2)
    all_images = torch.cat([digits.train.images, digits.val.images, digits.test.images])
    assert all_images.shape[1:] == (1, 8, 8) and int(all_images.max()) == 255
    counts = np.bincount(np.concatenate([s.labels.numpy() for s in (digits.train, digits.val, digits.test)]))
    for split in (digits.train, digits.val, digits.test):
        share = np.bincount(split.labels.numpy(), minlength=10) / len(split)
        np.testing.assert_allclose(share, counts / counts.sum(), atol=0.02)
    assert digits.augmentation.horizontal_flip is False


def test_digits_split_is_deterministic(digits):
    again = load_digits(seed=0)
    assert torch.equal(again.val.images, digits.val.images)
    assert torch.equal(again.test.labels, digits.test.labels)
    assert not torch.equal(load_digits(seed=1).val.images, digits.val.images)


def test_split_dataset_is_disjoint_and_complete():
    n = 300  # two pixels encode each example's index, so splits can be traced back
    ids = torch.arange(n)
    images = torch.stack([ids // 256, ids % 256], dim=1).to(torch.uint8).reshape(n, 1, 1, 2)
    ds = ImageDataset(images, ids % 4, ["a", "b", "c", "d"])
    splits = split_dataset(ds, 0.1, 0.2, seed=3)
    parts = [set((s.images.reshape(len(s), 2).long() @ torch.tensor([256, 1])).tolist())
             for s in (splits.train, splits.val, splits.test)]
    assert [len(p) for p in parts] == [210, 30, 60]
    assert set.union(*parts) == set(range(n)) and sum(len(p) for p in parts) == n
    for s in (splits.train, splits.val, splits.test):
        counts = np.bincount(s.labels.numpy(), minlength=4)
        assert counts.max() - counts.min() <= 1


def test_digits_normalisation_comes_from_train_only(digits):
    pixels = digits.train.images.numpy() / 255.0
    assert digits.normalization == digits.val.normalization == digits.test.normalization
    np.testing.assert_allclose(digits.normalization.mean, [pixels.mean()], rtol=1e-10)
    np.testing.assert_allclose(digits.normalization.std, [pixels.std()], rtol=1e-10)


def test_split_dataset_rejects_bad_fractions(digits):
    with pytest.raises(ValueError, match=r"val_fraction \(0.6\) and test_fraction \(0.5\)"):
        split_dataset(digits.train, 0.6, 0.5)


# --- Fashion-MNIST plumbing on small fake files ----------------------------------------------


def test_fashion_mnist_reads_verifies_and_caches(tmp_path, fake_fashion_dir):
    cache = tmp_path / "cache"
    arrays = fashion_mnist_arrays(cache_dir=cache, source_dir=fake_fashion_dir)
    assert arrays["train_images"].shape == (40, 28, 28)
    assert (cache / "fashion-mnist" / "fashion_mnist.npz").is_file()
    assert not list((cache / "fashion-mnist").glob("*.tmp"))
    for f in fake_fashion_dir.iterdir():  # the second call must not need the source
        f.unlink()
    again = fashion_mnist_arrays(cache_dir=cache, source_dir=fake_fashion_dir)
    np.testing.assert_array_equal(again["test_labels"], arrays["test_labels"])


def test_fashion_mnist_checksum_mismatch_is_an_error(tmp_path, fake_fashion_dir, monkeypatch):
    monkeypatch.setitem(FASHION_MNIST_SHA256, "test_labels", "0" * 64)
    with pytest.raises(ValueError, match=r"test_labels .* has sha256 [0-9a-f]{64}, expected 0{64}"):
        fashion_mnist_arrays(cache_dir=tmp_path / "cache", source_dir=fake_fashion_dir)
    assert not (tmp_path / "cache" / "fashion-mnist" / "fashion_mnist.npz").exists()


def test_bad_cache_is_refetched(tmp_path, fake_fashion_dir, caplog):
    cache_file = tmp_path / "cache" / "fashion-mnist" / "fashion_mnist.npz"
    cache_file.parent.mkdir(parents=True)
    np.savez(cache_file, train_images=np.zeros((1, 28, 28), np.uint8))
    with caplog.at_level(logging.WARNING, logger="attnlab.data.images"):
        arrays = fashion_mnist_arrays(cache_dir=tmp_path / "cache", source_dir=fake_fashion_dir)
    assert arrays["train_images"].shape == (40, 28, 28)
    assert "discarding a bad Fashion-MNIST cache" in caplog.text


def test_fashion_mnist_without_a_source_unpacks_the_debian_package(tmp_path, fake_fashion_dir, fake_apt, monkeypatch):
    monkeypatch.setattr(images_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    fake_apt.add("dataset-fashion-mnist", {f"usr/share/datasets/fashion-mnist/{f.name}": f.read_bytes()
                                           for f in fake_fashion_dir.iterdir()})
    arrays = fashion_mnist_arrays(cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(arrays["test_labels"], np.arange(10))
    assert fake_apt.calls() == ["download dataset-fashion-mnist"]


def test_fashion_mnist_fetch_failure_suggests_source_dir(tmp_path, fake_apt, monkeypatch):
    monkeypatch.setattr(images_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    with pytest.raises(RuntimeError, match="dataset-fashion-mnist failed .* pass source_dir="):
        fashion_mnist_arrays(cache_dir=tmp_path / "cache")


def test_load_fashion_mnist_splits(tmp_path, fake_fashion_dir):
    splits = load_fashion_mnist(val_size=10, cache_dir=tmp_path, source_dir=fake_fashion_dir)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 10)
    assert np.bincount(splits.val.labels.numpy()).tolist() == [1] * 10
    assert splits.train.classes == FASHION_MNIST_CLASSES and splits.train.images.shape[1:] == (1, 28, 28)
    assert splits.test.normalization == splits.normalization
    assert splits.augmentation.horizontal_flip is True


@pytest.mark.slow
def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    arrays = fashion_mnist_arrays(cache_dir=tmp_path)  # downloads the Debian package (~31 MB)
    assert arrays["train_images"].shape == (60000, 28, 28) and arrays["train_images"].dtype == np.uint8
    assert arrays["test_images"].shape == (10000, 28, 28)
    for name in ("train_labels", "test_labels"):
        assert arrays[name].min() == 0 and arrays[name].max() == 9
    for name, digest in FASHION_MNIST_SHA256.items():
        assert hashlib.sha256(arrays[name].tobytes()).hexdigest() == digest
    splits = load_fashion_mnist(cache_dir=tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)


# --- class folders and single images ---------------------------------------------------------


def test_folder_skips_and_reports_corrupt_files(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="attnlab.data.images"):
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
        [6, 6], [2, 2], [2, 2]]


def test_load_image_converts_for_the_model(image_folder):
    norm = ImageNormalization((0.5,), (0.5,))
    x = load_image(image_folder / "cat" / "a.png", channels=1, image_size=28, normalization=norm)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    same = load_image(image_folder / "dog" / "c.png", channels=3, image_size=(4, 6), resize=False)
    assert same.shape == (3, 4, 6)


def test_load_image_errors_name_file_size_mode_and_shape(image_folder):
    path = image_folder / "cat" / "a.png"
    with pytest.raises(ValueError, match=r"a.png is 6x4 \(WxH\) mode RGB; expected \(C, H, W\) = \(1, 28, 28\)"):
        load_image(path, channels=1, image_size=28, resize=False)
    broken = image_folder / "cat" / "broken.png"
    with pytest.raises(ValueError, match=f"cannot load {broken} as an image"):
        load_image(broken, channels=1, image_size=28)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(image_folder / "missing.png", channels=1, image_size=28)
    with pytest.raises(ValueError, match="channels must be 1 .* got 4"):
        load_image(path, channels=4, image_size=28)


# --- loader ----------------------------------------------------------------------------------


@pytest.fixture
def indexed_dataset() -> ImageDataset:
    """103 one-pixel images whose value is their index, labels index % 3."""
    n = 103
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1)
    return ImageDataset(images, torch.arange(n) % 3, ["a", "b", "c"])


def batch_ids(batches) -> list[list[int]]:
    return [torch.round(x.flatten() * 255).long().tolist() for x, _ in batches]


def test_loader_covers_each_example_once_with_labels(indexed_dataset):
    loader = TensorImageLoader(indexed_dataset, batch_size=10, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 11 and batches[-1][0].shape == (3, 1, 1, 1)
    ids = [i for batch in batch_ids(batches) for i in batch]
    assert sorted(ids) == list(range(103)) and ids != list(range(103))
    for x, y in batches:
        assert y.dtype == torch.int64 and torch.equal(y, torch.round(x.flatten() * 255).long() % 3)
    dropped = TensorImageLoader(indexed_dataset, batch_size=10, drop_last=True)
    assert len(dropped) == 10 == len(list(dropped))
    ordered = TensorImageLoader(indexed_dataset, batch_size=50, shuffle=False)
    assert batch_ids(ordered)[0] == list(range(50))


def test_loader_is_deterministic_per_seed_and_epoch(indexed_dataset):
    def epoch_ids(seed, epoch):
        loader = TensorImageLoader(indexed_dataset, batch_size=16, seed=seed)
        loader.set_epoch(epoch)
        return batch_ids(loader)

    assert epoch_ids(0, 0) == epoch_ids(0, 0)
    assert epoch_ids(0, 0) != epoch_ids(0, 1)
    assert epoch_ids(0, 0) != epoch_ids(1, 0)


def test_loader_resume_skips_batches_exactly():
    images = torch.randint(0, 256, (50, 1, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ds = ImageDataset(images, torch.zeros(50, dtype=torch.long), ["x"], ImageNormalization((0.5,), (0.3,)))
    loader = TensorImageLoader(ds, batch_size=8, seed=5,
                               augmentation=images_module.FASHION_MNIST_AUGMENTATION)
    loader.set_epoch(3)
    full = list(loader)
    loader.set_epoch(3, start_batch=4)
    resumed = list(loader)
    assert len(resumed) == len(full) - 4
    for (a, _), (b, _) in zip(full[4:], resumed):
        assert torch.equal(a, b)
    assert len(list(loader)) == len(full)  # start_batch applies once
    with pytest.raises(ValueError, match=r"start_batch must be in \[0, 7\], got 9"):
        loader.set_epoch(0, start_batch=9)
