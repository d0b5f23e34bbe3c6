"""attnlab train / evaluate / classify on a folder of class folders, with the bad input a user brings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from attnlab.cli.main import main

CLASSES = ("bar", "dot", "ring")


def _shape(name: str, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 grey image: a vertical bar, a centre dot or a ring on faint noise."""
    img = rng.integers(0, 40, (8, 8)).astype(np.uint8)
    if name == "bar":
        img[:, 3:5] = 255
    elif name == "dot":
        img[3:5, 3:5] = 255
    else:
        img[1, 1:7] = img[6, 1:7] = img[1:7, 1] = img[1:7, 6] = 255
    return img


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> Path:
    """A tiny SE-CNN trained through the CLI on shapes/ (12 PNGs per class, one corrupt file, one text file)."""
    tmp = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp / "shapes" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(_shape(name, rng), "L").save(tmp / "shapes" / name / f"{i}.png")
    (tmp / "shapes" / "bar" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp / "shapes" / "dot" / "notes.txt").write_text("not an image")
    config = {
        "task": "classification",
        "seed": 0,
        "output_dir": str(tmp / "run"),
        "model": {"type": "cnn", "channels": [8], "blocks": [1], "attention": "se", "reduction": 4},
        "data": {"dataset": f"folder:{tmp / 'shapes'}", "channels": 1, "batch_size": 16, "augment": False},
        "training": {
            "max_steps": 10,
            "eval_every": 5,
            "schedule": "constant",
            "lr": 3e-3,
            "num_threads": 1,
            "tensorboard": False,
            "eval_at_epoch_end": False,
        },
    }
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(config))
    return tmp / "run"


def test_train_on_a_folder_skips_bad_files_and_reports_per_class(shapes_run, capsys, caplog):
    config = shapes_run.parent / "tiny.yaml"
    with caplog.at_level(logging.WARNING, logger="attnlab.data.image_files"):
        assert main(["train", str(config), "--fresh", "--no-progress"]) == 0
    shapes = shapes_run.parent / "shapes"
    for bad in (shapes / "bar" / "broken.png", shapes / "dot" / "notes.txt"):
        assert f"skipping unreadable image {bad}" in caplog.text
    out = capsys.readouterr().out
    assert "per-class accuracy: bar " in out and ", ring " in out
    metrics = json.loads((shapes_run / "test_metrics.json").read_text())
    assert set(metrics["per_class_accuracy"]) == set(CLASSES)
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["examples"]
    with Image.open(shapes_run / "confusion_test.png") as png:
        assert png.format == "PNG" and min(png.size) > 100

    assert main(["evaluate", str(shapes_run), "--split", "val"]) == 0
    assert "per-class accuracy: bar " in capsys.readouterr().out


def test_classify_prints_top_k_probabilities(shapes_run, tmp_path, capsys):
    path = tmp_path / "bar.png"
    Image.fromarray(_shape("bar", np.random.default_rng(1)), "L").save(path)
    assert main(["classify", str(shapes_run), str(path), "--top-k", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: ")
    top = [item.rsplit(" (", 1) for item in line.split(": ", 1)[1].split(", ")]
    assert sorted(label for label, _ in top) == sorted(CLASSES)
    probs = [float(p.rstrip(")")) for _, p in top]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=2e-3)


def test_classify_in_bf16_gives_the_fp32_probabilities_within_bf16_rounding(shapes_run, tmp_path, capsys, autocast_spy):
    from attnlab.models import AttentionCNN

    seen = autocast_spy(AttentionCNN, "forward")
    path = tmp_path / "ring.png"
    Image.fromarray(_shape("ring", np.random.default_rng(2)), "L").save(path)
    tops = {}
    for precision in ("fp32", "bf16"):
        assert main(["classify", str(shapes_run), str(path), "--top-k", "3", "--precision", precision]) == 0
        items = capsys.readouterr().out.strip().split(": ", 1)[1].split(", ")
        tops[precision] = {label: float(p.rstrip(")")) for label, p in (item.rsplit(" (", 1) for item in items)}
    assert seen == [False, True]
    assert tops["bf16"].keys() == tops["fp32"].keys()
    for label, p in tops["fp32"].items():
        assert tops["bf16"][label] == pytest.approx(p, abs=0.03)


def test_classify_converts_and_resizes_with_one_note_per_converted_file(shapes_run, tmp_path, capsys):
    rgb, small_rgb, fits = tmp_path / "rgb.png", tmp_path / "small.png", tmp_path / "fits.png"
    Image.fromarray(np.zeros((30, 20, 3), dtype=np.uint8), "RGB").save(rgb)  # 20 wide, 30 high
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8), "RGB").save(small_rgb)
    Image.fromarray(_shape("dot", np.random.default_rng(2)), "L").save(fits)
    assert main(["classify", str(shapes_run), str(rgb), str(fits), str(small_rgb), "--top-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert [line.split(": ")[0] for line in out.splitlines()] == [str(rgb), str(fits), str(small_rgb)]
    assert err.splitlines() == [
        f"note: {rgb} is 20x30 (WxH) RGB, converted to (C, H, W) = (1, 8, 8) as the model expects",
        f"note: {small_rgb} is 8x8 (WxH) RGB, converted to (C, H, W) = (1, 8, 8) as the model expects",
    ]


def test_classify_no_resize_makes_another_size_an_error(shapes_run, tmp_path, capsys):
    big, small_rgb = tmp_path / "big.png", tmp_path / "small.png"
    Image.fromarray(np.zeros((16, 12), dtype=np.uint8), "L").save(big)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8), "RGB").save(small_rgb)
    assert main(["classify", str(shapes_run), str(big), "--no-resize"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        f"attnlab classify: error: {big} is 12x16 (WxH) grayscale but the model expects (C, H, W) = (1, 8, 8), "
        "and resizing is off"
    ]
    assert main(["classify", str(shapes_run), str(small_rgb), "--no-resize"]) == 0  # channels still converted
    out, err = capsys.readouterr()
    assert out.startswith(f"{small_rgb}: ") and err.startswith(f"note: {small_rgb} is 8x8 (WxH) RGB, converted")


def _truncated_png(tmp_path: Path) -> bytes:
    """An 8x8 grey PNG whose header reads but whose pixels stop short."""
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(tmp_path / "t.png")
    return (tmp_path / "t.png").read_bytes()[:50]


@pytest.mark.parametrize("content", [b"garbage", b"\x89PNG\r\n\x1a\n not really", b"", _truncated_png])
def test_classify_a_file_that_is_no_image_is_a_user_error(shapes_run, tmp_path, capsys, content):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(content(tmp_path) if callable(content) else content)
    assert main(["classify", str(shapes_run), str(corrupt)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(
        f"attnlab classify: error: cannot load {corrupt} as an image (expected (C, H, W) = (1, 8, 8)): "
    )
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_classify_missing_files_and_folders_are_user_errors(shapes_run, tmp_path, capsys):

    assert main(["classify", str(shapes_run), str(tmp_path)]) == 2
    assert f"image {tmp_path} is a folder" in capsys.readouterr().err
    assert main(["classify", str(shapes_run), str(tmp_path / "missing.png")]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("top_k", "shown"), [("0", "0"), ("-1", "-1"), ("three", "'three'")])
def test_classify_rejects_top_k_below_one(shapes_run, tmp_path, capsys, top_k, shown):
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(shapes_run), "x.png", "--top-k", top_k])
    assert exit_info.value.code == 2  # a usage error
    assert f"argument --top-k: expected an integer >= 1, got {shown}" in capsys.readouterr().err


def test_train_on_a_folder_with_an_empty_class_names_it(tmp_path, capsys):
    root = tmp_path / "pets"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L").save(root / "cat" / "a.png")
    config = {
        "task": "classification",
        "output_dir": str(tmp_path / "run"),
        "model": {"type": "cnn"},
        "data": {"dataset": f"folder:{root}", "channels": 1},
        "training": {"max_steps": 1, "schedule": "constant", "num_threads": 1},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert f"class folder {root / 'dog'} is empty" in err and "Traceback" not in err
