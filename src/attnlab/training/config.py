"""Typed run configs: YAML at the edge, dataclasses inside, ``key=value`` overrides on top.

A run config is one :class:`RunConfig`::

    task: classification            # or translation
    seed: 0
    output_dir: runs/digits_vit
    model:                          # "type" picks the model's config dataclass
      type: vit                     # vit | cnn | transformer  (rnn reserved)
      preset: vit_digits_patch2_8   # optional named size; other keys are that dataclass's fields
      embed_dim: 64
    data: {...}                     # ImageDataConfig or TextDataConfig, by task
    training: {...}                 # TrainingConfig

Every key is checked: an unknown key fails naming its full dotted path and the known keys, a
wrong type names the key, the value and the expected type, a number out of its range names the
key, the value and the range (``training.grad_clip (-1.0) must be > 0``), and a model key of
another model type (``model.d_model`` for a ViT) names the key and the model type. Command-line overrides
``training.max_steps=200 model.embed_dim=128`` are parsed with YAML typing and applied to the
raw mapping before it is checked (:func:`apply_overrides`).

The model and training sections are in :mod:`attnlab.training.sections`, the data sections in
:mod:`attnlab.training.data_config`; they are re-exported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from attnlab.config import ConfigError, check_keys, coerce, load_yaml, load_yaml_mapping, read_dataclass, to_plain
from attnlab.models.registry import MODEL_REGISTRY, MODEL_TYPES, ModelType
from attnlab.training.data_config import ImageDataConfig, TextDataConfig
from attnlab.training.sections import ModelSection, TrainingConfig

__all__ = [
    "MODEL_REGISTRY",
    "MODEL_TYPES",
    "TASKS",
    "ConfigError",
    "ImageDataConfig",
    "ModelSection",
    "ModelType",
    "RunConfig",
    "TextDataConfig",
    "TrainingConfig",
    "apply_overrides",
    "load_config",
    "parse_override",
]

TASKS = ("translation", "classification")

_DATA_CLASSES = {"classification": ImageDataConfig, "translation": TextDataConfig}
_SPLITS = {"classification": ("train", "val", "test"), "translation": ("train", "dev", "test")}


def _check_final_split(training: TrainingConfig, task: str) -> TrainingConfig:
    """``training``, once its ``final_split`` is a split of ``task`` (or None)."""
    if training.final_split is not None and training.final_split not in _SPLITS[task]:
        raise ConfigError(
            f"training.final_split ({training.final_split!r}) is not a split of a {task} run: "
            f"use one of {list(_SPLITS[task])} or null"
        )
    return training


@dataclass
class RunConfig:
    """One training run.

    Attributes:
        task: ``translation`` or ``classification``.
        model: the model section (:class:`ModelSection`).
        data: :class:`ImageDataConfig` (classification) or :class:`TextDataConfig` (translation).
        training: :class:`TrainingConfig`.
        output_dir: the run directory (checkpoints, metrics, the resolved config).
        seed: seeds model initialisation, dropout and batch order.
    """

    task: str
    model: ModelSection
    data: ImageDataConfig | TextDataConfig
    training: TrainingConfig
    output_dir: str = "runs/run"
    seed: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Read and check a whole run config (see the module docstring)."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"a run config must be a mapping, got {type(values).__name__}")
        check_keys([f.name for f in dataclasses.fields(cls)], values, "")
        task = values.get("task")
        if task not in TASKS:
            raise ConfigError(f"task: expected one of {list(TASKS)}, got {task!r}")
        model = ModelSection.from_dict(values.get("model", {}))
        if task not in MODEL_REGISTRY[model.type].tasks:
            raise ConfigError(
                f"model.type: a {model.type} model does not do {task}; use one of "
                f"{[k for k, v in MODEL_REGISTRY.items() if task in v.tasks]}"
            )
        return cls(
            task=task,
            model=model,
            data=read_dataclass(_DATA_CLASSES[task], values.get("data", {}), "data"),
            training=_check_final_split(read_dataclass(TrainingConfig, values.get("training", {}), "training"), task),
            output_dir=coerce(values.get("output_dir", "runs/run"), str, "output_dir"),
            seed=coerce(values.get("seed", 0), int, "seed"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The YAML form; ``from_dict(to_dict())`` gives an equal config."""
        return {
            "task": self.task,
            "seed": self.seed,
            "output_dir": self.output_dir,
            "model": self.model.to_dict(),
            "data": to_plain(self.data),
            "training": to_plain(self.training),
        }

    def to_yaml(self) -> str:
        """The config as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------------
# YAML and overrides
# ---------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.max_steps=200"`` -> ``(["training", "max_steps"], 200)``, the value read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({' '.join(str(error).split())})") from error
    return key.split("."), value


def apply_overrides(values: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A deep copy of ``values`` with each ``dotted.key=value`` set (unknown keys fail later, when read)."""
    result = load_yaml(yaml.safe_dump(dict(values))) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: depth + 1])} is {child!r}, not a section")
            node = child
        node[path[-1]] = value
    return result


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config, apply ``key=value`` overrides, and check everything.

    Args:
        path: the YAML file.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML scalars.

    Returns:
        The typed :class:`RunConfig`.

    Raises:
        ConfigError: unreadable YAML, an unknown key, a wrong type or an invalid value; the
            message names the file and the dotted key.
    """
    path = Path(path)
    try:
        values = load_yaml_mapping(path.read_bytes(), path)
    except FileNotFoundError as error:
        raise ConfigError(f"config file {path} does not exist") from error
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from error
    try:
        return RunConfig.from_dict(apply_overrides(values, overrides))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
