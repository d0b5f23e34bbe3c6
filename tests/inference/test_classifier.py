"""attnlab.load on a tiny trained ViT run: the Classifier against the model's own softmax, for files,
Pillow images and tensors; attention maps; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import attnlab
from attnlab.data import load_digits
from attnlab.data.image_transforms import preprocess_batch
from attnlab.inference import Classification, Classifier
from attnlab.models import AttentionCNN, AttentionCNNConfig
from attnlab.training import ConfigError
from attnlab.viz.capture import CaptureSpec


@pytest.fixture
def digits():
    """The first 6 test digits: uint8 (6, 1, 8, 8) and the split's normalisation."""
    test = load_digits().test
    return test.images[:6], test.normalization


def expected_top(classifier: Classifier, pixels: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
    """Top-k of softmax(model(x)), x the pixels scaled and normalised by hand."""
    x = (pixels.float() / 255 - classifier.spec.normalization.mean[0]) / classifier.spec.normalization.std[0]
    with torch.no_grad():
        probs = torch.softmax(classifier.model(x), dim=-1)  # (B, K)
    values, indices = probs.topk(k, dim=-1)
    classes = classifier.spec.classes
    return [[(classes[i], v) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]


def assert_same_tops(actual, expected) -> None:
    assert [[label for label, _ in top] for top in actual] == [[label for label, _ in top] for top in expected]
    for got, want in zip(actual, expected):
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], rtol=1e-5, atol=1e-6)


def test_load_gives_a_classifier_with_the_models_top_k(vit_run, digits):
    classifier = attnlab.load(vit_run)
    assert isinstance(classifier, Classifier)
    pixels, normalization = digits
    assert classifier.spec.normalization == normalization  # the training split's, from the checkpoint
    expected = expected_top(classifier, pixels, 3)
    assert_same_tops(classifier.classify(pixels, top_k=3), expected)
    normalised = preprocess_batch(pixels, normalization)
    assert_same_tops(classifier.classify(normalised, top_k=3), expected)  # float tensors are model input
    assert_same_tops([classifier.classify(pixels[0], top_k=3)], expected[:1])  # one (C, H, W) image


def test_files_and_pillow_images_read_as_their_pixels(vit_run, digits, tmp_path):
    classifier = attnlab.load(vit_run)
    pixels, _ = digits
    images = [Image.fromarray(p[0].numpy(), "L") for p in pixels]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    expected = expected_top(classifier, pixels, 2)
    assert_same_tops(classifier.classify(paths, top_k=2), expected)
    assert_same_tops(classifier.classify([str(p) for p in paths], top_k=2), expected)
    assert_same_tops(classifier.classify(images, top_k=2), expected)
    assert_same_tops([classifier.classify(images[0].convert("RGB"), top_k=2)], expected[:1])  # grey RGB -> L


def test_resizing_follows_the_file_rules(vit_run, tmp_path):
    classifier = attnlab.load(vit_run)
    big = Image.fromarray(np.full((16, 16), 200, dtype=np.uint8), "L")
    big.save(tmp_path / "big.png")
    small = big.resize((8, 8), Image.Resampling.BILINEAR)
    assert classifier.classify(big, top_k=10) == classifier.classify(small, top_k=10)
    assert classifier.classify(tmp_path / "big.png", top_k=10) == classifier.classify(small, top_k=10)
    with pytest.raises(ValueError, match=r"16x16 \(WxH\).*\(C, H, W\) = \(1, 8, 8\), and resizing is off"):
        classifier.classify(big, resize=False)
    with pytest.raises(ValueError, match="resizing is off"):
        classifier.classify(tmp_path / "big.png", resize=False)


def test_top_k_beyond_the_classes_gives_every_class_summing_to_one(vit_run, digits):
    top = attnlab.load(vit_run).classify(digits[0][0], top_k=50)
    assert len(top) == 10 and sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)


def explicit_maps(model, x: torch.Tensor) -> dict[tuple[str, int], torch.Tensor]:
    """Every attention site's map for ``model(x)``, from calling each module again on its recorded input:
    a multi-head attention as torch's ``need_weights=True, average_attn_weights=False`` (per-head weights),
    an SE block's ``excitation`` and a spatial attention's ``mask``."""
    calls, handles = {}, []

    def recorder(key):
        def record(module, args, kwargs, output) -> None:
            calls[key] = (module, args, kwargs)

        return record

    for kind, layer, module in model.attention_sites():
        handles.append(module.register_forward_hook(recorder((kind, layer)), with_kwargs=True))
    try:
        with torch.no_grad():
            model(x)
            maps = {}
            for (kind, layer), (module, args, kwargs) in calls.items():
                if kind == "vit":
                    maps[kind, layer] = module(
                        *args, **{**kwargs, "need_weights": True, "average_attn_weights": False}
                    )[1]
                else:
                    maps[kind, layer] = module.excitation(*args) if kind == "se_gate" else module.mask(*args)
            return maps
    finally:
        for handle in handles:
            handle.remove()


def test_attention_gives_each_blocks_per_head_weights(vit_run, digits):
    classifier = attnlab.load(vit_run)
    pixels, normalization = digits
    results = classifier.classify(pixels, top_k=3, attention=True)
    assert_same_tops([r.top for r in results], expected_top(classifier, pixels, 3))
    expected = explicit_maps(classifier.model, preprocess_batch(pixels, normalization))
    config = classifier.model.config
    grid = config.image_size // config.patch_size
    tokens = 1 + grid**2
    assert list(expected) == [("vit", i) for i in range(config.depth)]
    for b, result in enumerate(results):
        maps = result.attention
        assert isinstance(result, Classification) and [(m.kind, m.layer) for m in maps] == list(expected)
        assert maps.grid == (grid, grid) and maps.prefix_tokens == 1 and len(maps.labels["patches"][0]) == tokens
        for (kind, layer), reference in expected.items():
            weights = maps[kind, layer]
            assert weights.shape == (1, config.num_heads, tokens, tokens)
            torch.testing.assert_close(weights.sum(-1), torch.ones(1, config.num_heads, tokens))
            torch.testing.assert_close(weights, reference[b : b + 1])


def test_a_capture_spec_keeps_the_heads_asked_and_names_what_exists(vit_run, digits):
    classifier = attnlab.load(vit_run)
    pixels, _ = digits
    full = classifier.classify(pixels[:2], attention=True)
    chosen = classifier.classify(pixels[:2], attention=CaptureSpec(layers=-1, heads=[1]))
    last = classifier.model.config.depth - 1
    for a, b in zip(full, chosen):
        assert [(m.kind, m.layer, m.heads) for m in b.attention] == [("vit", last, (1,))]
        torch.testing.assert_close(b.attention["vit", last], a.attention["vit", last][:, 1:2])
    heads = classifier.model.config.num_heads
    with pytest.raises(ValueError, match=rf"head {heads} does not exist: the model has {heads} heads"):
        classifier.classify(pixels[:1], attention=CaptureSpec(heads=heads))
    with pytest.raises(ValueError, match=r"kind 'cross' is not in this ViT: it has \['vit'\]"):
        classifier.classify(pixels[:1], attention=CaptureSpec(kinds="cross"))


def test_an_attention_cnn_gives_its_gates_and_masks(vit_run, digits):
    pixels, normalization = digits
    spec = attnlab.load(vit_run).spec
    cnn = AttentionCNN(AttentionCNNConfig(in_channels=1, num_classes=10, channels=(8,), blocks=(1,))).eval()
    classifier = Classifier(cnn, spec)
    results = classifier.classify(pixels, top_k=2, attention=True)
    assert [r.top for r in results] == classifier.classify(pixels, top_k=2)
    expected = explicit_maps(cnn, preprocess_batch(pixels, normalization))
    assert {kind for kind, _ in expected} <= {"se_gate", "spatial_mask"} and expected
    for b, result in enumerate(results):
        assert [(m.kind, m.layer) for m in result.attention] == list(expected)
        for (kind, layer), reference in expected.items():
            torch.testing.assert_close(result.attention[kind, layer], reference[b : b + 1])


def test_wrong_inputs_and_tasks_are_clear_errors(vit_run):
    classifier = attnlab.load(vit_run)
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(1, 8, 8\), got shape \(3, 8, 8\)"):
        classifier.classify(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"top_k \(0\) must be >= 1"):
        classifier.classify(torch.zeros(1, 8, 8), top_k=0)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        classifier.classify("missing.png")
    with pytest.raises(ConfigError, match="is a classification run .*; expected a translation run"):
        attnlab.load(vit_run, task="translation")
