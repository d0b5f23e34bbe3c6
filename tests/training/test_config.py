"""Run configs: errors name the dotted key, overrides apply with YAML typing, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attnlab.config import load_yaml
from attnlab.training.config import ConfigError, RunConfig, apply_overrides, load_config, parse_override

BASE = {
    "task": "classification",
    "model": {"type": "vit", "preset": "vit_digits_patch2_8"},
    "data": {"dataset": "digits"},
    "training": {"max_steps": 10},
}


def read(*overrides: str) -> RunConfig:
    return RunConfig.from_dict(apply_overrides(BASE, overrides))


def test_overrides_apply_with_yaml_typing():
    config = read(
        "training.max_steps=200",
        "model.embed_dim=128",
        "training.lr=3e-4",
        "training.grad_clip=null",
        "data.augment=false",
        "training.betas=[0.9, 0.99]",
    )
    assert config.training.max_steps == 200
    assert config.model.params["embed_dim"] == 128
    assert config.training.lr == pytest.approx(3e-4)
    assert config.training.grad_clip is None
    assert config.data.augment is False
    assert config.training.betas == (0.9, 0.99)


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=x=y") == (["a"], "x=y")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("novalue")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("training.max_stepz=3", "training.max_stepz"),
        ("data.corpus.name=generated", "data.corpus"),
        ("bogus=1", "bogus"),
    ],
)
def test_unknown_key_names_the_full_dotted_key_and_known_keys(override, named):
    with pytest.raises(ConfigError) as info:
        read(override)
    assert f"unknown config key {named}" in str(info.value)
    assert "known keys:" in str(info.value)


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError, match=r"training\.max_steps: expected int \| None, got str 'many'"):
        read("training.max_steps=many")
    with pytest.raises(ConfigError, match=r"model\.depth: expected int, got float 2\.5"):
        read("model.depth=2.5")


def test_key_of_another_model_type_is_named():
    with pytest.raises(ConfigError, match=r"model\.d_model \(not a field of vit model ViTConfig\)"):
        read("model.d_model=128")


def test_model_type_must_fit_the_task():
    with pytest.raises(ConfigError, match="model.type: a transformer model does not do classification"):
        read("model.type=transformer", "model.preset=tiny")


def test_invalid_values_name_the_field():
    with pytest.raises(ConfigError, match="precision 'fp16'"):
        read("training.precision=fp16")
    with pytest.raises(ConfigError, match=r"accumulate_batches \(0\) must be >= 1"):
        read("training.accumulate_batches=0")
    with pytest.raises(ConfigError, match="model.num_classes \\(3\\) disagrees with the data"):
        read("model.num_classes=3").model.resolve(num_classes=10)


def test_round_trip_through_yaml(tmp_path):
    config = read("model.embed_dim=48")
    path = tmp_path / "run.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config
    translation = RunConfig.from_dict(
        {
            "task": "translation",
            "model": {"type": "transformer", "preset": "tiny"},
            "data": {"corpus": {"name": "generated", "size": 100}, "tokenizer": {"vocab_size": 200}},
            "training": {"max_steps": 5, "schedule": "noam"},
        }
    )
    assert RunConfig.from_dict(yaml.safe_load(translation.to_yaml())) == translation


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "training": {"max_steps": 1, "optimiser": "sgd"}}))
    with pytest.raises(ConfigError, match=f"{path}: unknown config key training.optimiser"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


CONFIGS = Path(__file__).parents[2] / "configs"
SHIPPED = sorted(path for path in CONFIGS.rglob("*") if path.is_file())


def test_configs_are_shipped():
    assert SHIPPED, f"no files in {CONFIGS}"  # an empty listing would leave the next test nothing to check


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: str(path.relative_to(CONFIGS)))
def test_shipped_configs_are_valid(path):
    """Every file in configs/ is a run config that reads without error, whatever its name."""
    load_config(path)


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("training.grad_clip=-1", "training.grad_clip", "> 0"),
        ("training.grad_clip=0", "training.grad_clip", "> 0"),
        ("training.max_steps=-5", "training.max_steps", ">= 1"),
        ("training.warmup_steps=-1", "training.warmup_steps", ">= 0"),
        ("training.num_threads=0", "training.num_threads", ">= 1"),
        ("training.lr=-1", "training.lr", ">= 0"),
        ("training.lr=.nan", "training.lr", ">= 0"),
        ("training.lr=.inf", "training.lr", ">= 0"),
        ("training.eps=0", "training.eps", "> 0"),
        ("training.betas=[0.9, 1.0]", "training.betas", "in [0, 1)"),
        ("training.betas=[-0.1, 0.9]", "training.betas", "in [0, 1)"),
        ("training.weight_decay=-0.01", "training.weight_decay", ">= 0"),
        ("training.label_smoothing=1.0", "training.label_smoothing", "in [0, 1)"),
        ("training.label_smoothing=-0.1", "training.label_smoothing", "in [0, 1)"),
        ("training.min_lr_ratio=1.5", "training.min_lr_ratio", "in [0, 1]"),
        ("training.max_minutes=0", "training.max_minutes", "> 0"),
        ("training.max_epochs=0", "training.max_epochs", ">= 1"),
        ("training.eval_every=0", "training.eval_every", ">= 1"),
        ("training.checkpoint_every=-2", "training.checkpoint_every", ">= 1"),
        ("training.log_every=0", "training.log_every", ">= 1"),
        ("training.early_stopping_patience=0", "training.early_stopping_patience", ">= 1"),
        ("training.max_bad_batches=-1", "training.max_bad_batches", ">= 0"),
        ("training.schedule_d_model=0", "training.schedule_d_model", ">= 1"),
        ("data.batch_size=0", "data.batch_size", ">= 1"),
        ("data.eval_batch_size=-1", "data.eval_batch_size", ">= 1"),
        ("data.val_fraction=1.5", "data.val_fraction", "in [0, 1)"),
        ("data.test_fraction=-0.2", "data.test_fraction", "in [0, 1)"),
        ("data.crop_padding=-1", "data.crop_padding", ">= 0"),
        ("data.val_size=-1", "data.val_size", ">= 0"),
        ("data.image_size=0", "data.image_size", ">= 1"),
        ("model.dropout=2.0", "model.dropout", "in [0, 1)"),
        ("model.attn_dropout=-0.5", "model.attn_dropout", "in [0, 1)"),
        ("model.mlp_ratio=0", "model.mlp_ratio", "> 0"),
        ("model.layer_norm_eps=0", "model.layer_norm_eps", "> 0"),
        ("model.embed_dim=0", "model.embed_dim", "> 0"),
    ],
)
def test_a_number_out_of_range_names_the_dotted_key_the_value_and_the_range(override, key, allowed):
    value = load_yaml(override.split("=", 1)[1])
    with pytest.raises(ConfigError) as info:
        read(override).model.resolve(num_classes=10, in_channels=3, image_size=8)
    message = str(info.value)
    assert f"{key} ({value!r}" in message and allowed in message, message


def test_fractions_of_the_image_splits_leave_training_data():
    with pytest.raises(ConfigError, match=r"data\.val_fraction \(0\.6\) and test_fraction \(0\.5\) must sum below 1"):
        read("data.val_fraction=0.6", "data.test_fraction=0.5")


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"type": "transformer", "preset": "tiny", "dropout": 1.5}, "model.dropout"),
        ({"type": "transformer", "preset": "tiny", "attn_dropout": -0.1}, "model.attn_dropout"),
        ({"type": "transformer", "preset": "tiny", "layer_norm_eps": -1.0}, "model.layer_norm_eps"),
        ({"type": "transformer", "preset": "tiny", "num_encoder_layers": -1}, "model.num_encoder_layers"),
        ({"type": "rnn", "preset": "tiny", "dropout": 1.5}, "model.dropout"),
        ({"type": "rnn", "preset": "tiny", "attention_dim": 0}, "model.attention_dim"),
    ],
)
def test_translation_model_numbers_out_of_range_name_the_key(values, key):
    from attnlab.training.config import ModelSection

    with pytest.raises(ConfigError, match=rf"{key} \("):
        ModelSection.from_dict(values).resolve(src_vocab_size=50, tgt_vocab_size=50)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"dropout": 2.0}, "model.dropout"),
        ({"reduction": 0}, "model.reduction"),
        ({"spatial_kernel": 0}, "model.spatial_kernel"),
    ],
)
def test_cnn_numbers_out_of_range_name_the_key(values, key):
    from attnlab.training.config import ModelSection

    with pytest.raises(ConfigError, match=rf"{key} \("):
        ModelSection.from_dict({"type": "cnn", **values}).resolve(num_classes=10, in_channels=3)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.max_length=0", "data.max_length"),
        ("data.max_tokens=0", "data.max_tokens"),
        ("data.eval_max_tokens=-1", "data.eval_max_tokens"),
        ("data.eval_max_sentences=0", "data.eval_max_sentences"),
        ("data.max_decode_len_a=-1", "data.max_decode_len_a"),
        ("data.max_decode_len_b=-1", "data.max_decode_len_b"),
    ],
)
def test_text_data_numbers_out_of_range_name_the_key(override, key):
    values = {
        "task": "translation",
        "model": {"type": "transformer", "preset": "tiny"},
        "data": {"corpus": {"name": "generated", "size": 100}},
        "training": {"max_steps": 5, "schedule": "noam"},
    }
    with pytest.raises(ConfigError, match=rf"{key} \("):
        RunConfig.from_dict(apply_overrides(values, [override]))


@pytest.mark.parametrize("betas", ["[0.9]", "[0.9, 0.98, 0.99]", "[]"])
def test_betas_of_the_wrong_length_name_the_key_and_the_length(betas):
    with pytest.raises(ConfigError, match=r"training\.betas \(\[.*\]\) must be 2 numbers \(beta1, beta2\)"):
        read(f"training.betas={betas}")


def test_the_defaults_and_the_edges_of_each_range_are_accepted():
    config = read(
        "training.warmup_steps=0",
        "training.max_bad_batches=0",
        "training.min_lr_ratio=1.0",
        "training.betas=[0.0, 0.999]",
        "training.grad_clip=null",
        "data.val_fraction=0",
        "data.crop_padding=0",
        "model.dropout=0.0",
    )
    assert config.training.warmup_steps == 0 and config.training.grad_clip is None
