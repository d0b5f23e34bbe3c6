"""Batched image preprocessing: normalisation statistics, crop, flip, the one preprocessing path."""

import numpy as np
import pytest
import torch

from attnlab.data.image_transforms import (
    ImageAugmentation,
    ImageNormalization,
    preprocess_batch,
    random_crop,
    random_horizontal_flip,
    to_unit_float,
)


@pytest.fixture
def rgb_batch() -> torch.Tensor:
    """uint8 (6, 3, 7, 5): non-square so that H/W mix-ups show."""
    return torch.randint(0, 256, (6, 3, 7, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_to_unit_float_scales_and_rejects_float():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_unit_float(x), torch.tensor([0.0, 0.2, 1.0]))
    with pytest.raises(TypeError, match="float32"):
        to_unit_float(x.float())


def test_normalization_matches_numpy(rgb_batch):
    norm = ImageNormalization.from_images(rgb_batch)
    pixels = rgb_batch.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(norm.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(norm.std, pixels.std(axis=(0, 2, 3)), rtol=1e-12)
    out = norm.apply(to_unit_float(rgb_batch)).double().numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, atol=1e-6)


def test_normalization_constant_channel_gets_unit_std():
    images = torch.zeros(2, 2, 3, 3, dtype=torch.uint8)
    images[:, 1] = torch.arange(9, dtype=torch.uint8).reshape(3, 3)
    norm = ImageNormalization.from_images(images)
    assert norm.mean[0] == 0.0 and norm.std[0] == 1.0 and norm.std[1] > 0


def test_normalization_round_trips_and_names_errors():
    norm = ImageNormalization(mean=(0.5, 0.25, 0.1), std=(0.2, 0.3, 0.4))
    assert ImageNormalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(KeyError, match="varinace"):
        ImageNormalization.from_dict({**norm.to_dict(), "varinace": [1.0]})
    with pytest.raises(ValueError, match="4 channels"):
        norm.apply(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        ImageNormalization(mean=(0.0,), std=(0.0,))


def _reference_crop(images: np.ndarray, padding: int, tops, lefts) -> np.ndarray:
    """Pad with zeros and slice, one image at a time."""
    _, _, h, w = images.shape
    out = []
    for image, top, left in zip(images, tops, lefts):
        padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
        out.append(padded[:, top : top + h, left : left + w])
    return np.stack(out)


def test_random_crop_matches_manual_reference(rgb_batch):
    padding, b = 2, rgb_batch.shape[0]
    draws = torch.Generator().manual_seed(7)
    tops = torch.randint(0, 2 * padding + 1, (b,), generator=draws)
    lefts = torch.randint(0, 2 * padding + 1, (b,), generator=draws)
    cropped = random_crop(rgb_batch, padding, torch.Generator().manual_seed(7))
    assert cropped.shape == rgb_batch.shape and cropped.dtype == torch.uint8
    expected = _reference_crop(rgb_batch.numpy(), padding, tops.tolist(), lefts.tolist())
    np.testing.assert_array_equal(cropped.numpy(), expected)


def test_random_crop_zero_padding_is_identity_and_negative_fails(rgb_batch):
    assert random_crop(rgb_batch, 0) is rgb_batch
    with pytest.raises(ValueError, match="-1"):
        random_crop(rgb_batch, -1)


def test_flip_flips_exactly_the_chosen_images(rgb_batch):
    x = to_unit_float(rgb_batch)
    assert torch.equal(random_horizontal_flip(x, 1.0), x.flip(-1))
    assert torch.equal(random_horizontal_flip(x, 0.0), x)
    chosen = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(3)) < 0.5
    out = random_horizontal_flip(x, 0.5, torch.Generator().manual_seed(3))
    for image, result, flipped in zip(x, out, chosen):
        assert torch.equal(result, image.flip(-1) if flipped else image)
    with pytest.raises(ValueError, match="1.5"):
        random_horizontal_flip(x, 1.5)


def test_augmentation_keeps_shape_and_is_seeded(rgb_batch):
    aug = ImageAugmentation(crop_padding=3, horizontal_flip=True)
    x = to_unit_float(rgb_batch)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="crop_padding"):
        ImageAugmentation(crop_padding=-2)


def test_preprocess_batch_is_scale_then_normalise(rgb_batch):
    norm = ImageNormalization.from_images(rgb_batch)
    out = preprocess_batch(rgb_batch, norm)
    expected = (rgb_batch.double() / 255 - torch.tensor(norm.mean)[:, None, None]) / torch.tensor(norm.std)[
        :, None, None
    ]
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), expected, atol=1e-6)
    assert torch.equal(preprocess_batch(rgb_batch), to_unit_float(rgb_batch))
