"""Fashion-MNIST plumbing on small fake IDX files: read, verify, cache, fetch from Debian; and the real set (slow)."""

import gzip
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from attnlab.data import fashion_mnist
from attnlab.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SHA256,
    fashion_mnist_arrays,
    load_fashion_mnist,
)


@pytest.fixture
def fake_fashion_dir(tmp_path, monkeypatch, encode_idx) -> Path:
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
    for name, filename in fashion_mnist._FASHION_MNIST_FILES.items():
        (source / filename).write_bytes(gzip.compress(encode_idx(arrays[name])))
        monkeypatch.setitem(FASHION_MNIST_SHA256, name, hashlib.sha256(arrays[name].tobytes()).hexdigest())
    return source


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
    with caplog.at_level(logging.WARNING, logger="attnlab.data.fashion_mnist"):
        arrays = fashion_mnist_arrays(cache_dir=tmp_path / "cache", source_dir=fake_fashion_dir)
    assert arrays["train_images"].shape == (40, 28, 28)
    assert "discarding a bad Fashion-MNIST cache" in caplog.text


def test_fashion_mnist_without_a_source_unpacks_the_debian_package(tmp_path, fake_fashion_dir, fake_apt, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    fake_apt.add(
        "dataset-fashion-mnist",
        {f"usr/share/datasets/fashion-mnist/{f.name}": f.read_bytes() for f in fake_fashion_dir.iterdir()},
    )
    arrays = fashion_mnist_arrays(cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(arrays["test_labels"], np.arange(10))
    assert fake_apt.calls() == ["download dataset-fashion-mnist"]


def test_fashion_mnist_fetch_failure_suggests_source_dir(tmp_path, fake_apt, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
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
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    arrays = fashion_mnist_arrays(cache_dir=tmp_path)  # downloads the Debian package (~31 MB)
    assert arrays["train_images"].shape == (60000, 28, 28) and arrays["train_images"].dtype == np.uint8
    assert arrays["test_images"].shape == (10000, 28, 28)
    for name in ("train_labels", "test_labels"):
        assert arrays[name].min() == 0 and arrays[name].max() == 9
    for name, digest in FASHION_MNIST_SHA256.items():
        assert hashlib.sha256(arrays[name].tobytes()).hexdigest() == digest
    splits = load_fashion_mnist(cache_dir=tmp_path)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
