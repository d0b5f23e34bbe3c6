"""Run configs: errors name the dotted key, overrides apply with YAML typing, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
