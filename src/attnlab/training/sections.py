"""The model and training sections of a run config: ``model:`` and ``training:``.

:class:`ModelSection` picks a model type and checks its keys against that model's own config
dataclass; :class:`TrainingConfig` holds the loop's settings, each checked against its choices and
ranges. The data sections are in :mod:`attnlab.training.data_config`; the whole run config and its
YAML reading are in :mod:`attnlab.training.config`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attnlab.config import ConfigError, check_keys, coerce, read_dataclass, to_plain
from attnlab.models.registry import MODEL_REGISTRY, MODEL_TYPES
from attnlab.training.memory import ALLOCATORS as PRELOADABLE
from attnlab.training.ranges import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, UNIT, check_ranges

__all__ = ["ModelSection", "TrainingConfig"]

PRECISIONS = ("fp32", "bf16", "auto")
SCHEDULES = ("noam", "cosine", "constant")
OPTIMIZERS = ("adamw", "adam")
CLOCKS = ("wall", "cpu")
ALLOCATORS = ("auto", *PRELOADABLE, "system")  # the libraries attnlab.training.memory can preload


@dataclass
class ModelSection:
    """Which model, and the fields of its config dataclass that the YAML sets.

    Fields the data decides (vocabulary sizes, classes, channels, image size) are filled in by
    the task; :meth:`resolve` merges ``preset``, ``params`` and those fields into the model's
    own config dataclass (``ViTConfig``, ``AttentionCNNConfig``, ``TransformerConfig``).

    Attributes:
        type: one of :data:`MODEL_TYPES`.
        preset: a named size of that model (its config class's ``presets``).
        params: field values of the model's config dataclass, type-checked.
    """

    type: str
    preset: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def config_class(self) -> type:
        """The model's config dataclass."""
        return MODEL_REGISTRY[self.type].config_class

    def build(self, config: Any) -> Any:
        """The model module for a resolved ``config`` (see :meth:`resolve`)."""
        return MODEL_REGISTRY[self.type].model_class(config)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: str = "model") -> ModelSection:
        """Read ``{type, preset, **fields}``; a field of another model type fails naming the key."""
        if not isinstance(values, Mapping) or "type" not in values:
            raise ConfigError(f"{path}.type is required: one of {list(MODEL_TYPES)}")
        kind = values["type"]
        if kind not in MODEL_REGISTRY:
            raise ConfigError(f"{path}.type: unknown model type {kind!r}; expected one of {list(MODEL_TYPES)}")
        section = cls(type=kind, preset=values.get("preset"))
        config_class = section.config_class
        presets = MODEL_REGISTRY[kind].presets
        if section.preset is not None and section.preset not in presets:
            raise ConfigError(
                f"{path}.preset: unknown {kind} preset {section.preset!r}; expected one of {sorted(presets)}"
            )
        params = {k: v for k, v in values.items() if k not in ("type", "preset")}
        hints = typing.get_type_hints(config_class)
        check_keys(
            [*hints, "type", "preset"], params, f"{path}.", f"not a field of {kind} model {config_class.__name__}"
        )
        section.params = {key: coerce(value, hints[key], f"{path}.{key}") for key, value in params.items()}
        return section

    def resolve(self, **derived: Any) -> Any:
        """The model config: preset, then ``params``, then ``derived`` (which must agree with ``params``)."""
        for key, value in derived.items():
            if key in self.params and self.params[key] != value:
                raise ConfigError(f"model.{key} ({self.params[key]!r}) disagrees with the data, which needs {value!r}")
        preset = MODEL_REGISTRY[self.type].presets.get(self.preset, {}) if self.preset else {}
        values = {**preset, **self.params, **derived}
        return read_dataclass(self.config_class, values, "model")

    def to_dict(self) -> dict[str, Any]:
        """The YAML form: ``type``, ``preset`` and the fields, flat."""
        head = {"type": self.type, **({"preset": self.preset} if self.preset else {})}
        return {**head, **to_plain(self.params)}


@dataclass
class TrainingConfig:
    """The loop: optimiser, schedule, budget, evaluation, checkpoints, precision.

    Attributes:
        optimizer: ``adamw`` or ``adam``.
        lr: peak learning rate for ``cosine`` / ``constant``; for ``noam`` the scale factor of
            the paper's formula ``lr * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``.
        betas: Adam's (beta1, beta2), each in [0, 1); the paper uses (0.9, 0.98).
        eps: Adam's epsilon.
        weight_decay: decoupled weight decay (AdamW).
        schedule: ``noam`` (Vaswani et al., 2017, Eq. 3), ``cosine`` (linear warmup, cosine
            decay to ``min_lr_ratio * lr`` at ``max_steps``) or ``constant`` (after warmup).
        warmup_steps: warmup length in optimiser steps.
        min_lr_ratio: cosine: final LR as a fraction of ``lr``.
        schedule_d_model: noam: d_model of the formula; None takes the model's width.
        label_smoothing: epsilon_ls of the cross-entropy (0.1 in the paper).
        grad_clip: clip the global gradient norm to this; None disables.
        accumulate_batches: batches whose gradients make one optimiser step (in each process
            under ``torchrun``); the step's gradient is the mean over all their tokens (images).
        max_steps: stop after this many optimiser steps.
        max_epochs: stop after this many epochs.
        max_minutes: stop after this much training time (a resumed run counts earlier time).
        clock: what ``max_minutes`` counts: ``wall`` (elapsed time) or ``cpu`` (this process's CPU
            time, all threads: the same budget buys the same work on a busy machine).
        eval_every: evaluate every N steps (None: only at epoch ends, if ``eval_at_epoch_end``).
        eval_at_epoch_end: evaluate after each epoch.
        early_stopping_patience: stop after this many evaluations without improvement.
        checkpoint_every: also save ``last`` every N steps (evaluations always save).
        keep_checkpoints: also keep the last N periodic saves as ``checkpoints/step_<step>`` (for
            checkpoint averaging); 0 keeps none.
        average_last: when training ends, average the weights of the last N kept saves in float64
            into ``checkpoints/averaged`` (Vaswani et al., 2017, Sec. 6.1) and score that on
            ``final_split`` instead of ``best``; None does not average.
        log_every: write training loss and throughput every N steps.
        precision: ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 where the hardware has it).
        num_threads: ``torch.set_num_threads``; None leaves torch's default.
        allocator: the malloc of ``attnlab train``: ``auto`` (tcmalloc where installed: the
            command starts again with it preloaded, and resident memory stays flat over long
            runs), ``tcmalloc``, ``jemalloc`` (an error when missing) or ``system`` (glibc's).
        malloc_mmap_threshold: fix glibc's mmap threshold at this many bytes: every larger block
            gets its own mapping, returned when freed, so the heap cannot fragment and resident
            memory cannot creep, at the price of page faults for each large tensor (131072 is
            glibc's own starting value); None keeps glibc's dynamic threshold.
        device: ``auto``, ``cpu``, ``cuda``.
        max_bad_batches: stop with an error once this many batches were skipped (NaN / errors).
        tensorboard: also write TensorBoard events when ``torch.utils.tensorboard`` imports.
        final_split: split evaluated with the best checkpoint when training ends (None: skip).
    """

    optimizer: str = "adamw"
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    schedule_d_model: int | None = None
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    accumulate_batches: int = 1
    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    clock: str = "wall"
    eval_every: int | None = None
    eval_at_epoch_end: bool = True
    early_stopping_patience: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 0
    average_last: int | None = None
    log_every: int = 10
    precision: str = "fp32"
    num_threads: int | None = None
    allocator: str = "auto"
    malloc_mmap_threshold: int | None = None
    device: str = "auto"
    max_bad_batches: int = 20
    tensorboard: bool = True
    final_split: str | None = "test"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
            ("device", ("auto", "cpu", "cuda")),
            ("clock", CLOCKS),
            ("allocator", ALLOCATORS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {list(allowed)}")
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise ValueError("set at least one of max_steps, max_epochs, max_minutes")
        if self.schedule == "cosine" and self.max_steps is None:
            raise ValueError("schedule 'cosine' decays to max_steps: set max_steps (or use 'noam' / 'constant')")
        if len(self.betas) != 2:
            raise ValueError(f"betas ({list(self.betas)}) must be 2 numbers (beta1, beta2), each in [0, 1)")
        check_ranges(self, _TRAINING_RANGES)
        self._check_averaging()

    def _check_averaging(self) -> None:
        if self.keep_checkpoints and not (self.checkpoint_every or self.eval_every):
            raise ValueError(
                f"keep_checkpoints ({self.keep_checkpoints}) keeps periodic saves, but there are none: "
                "set checkpoint_every (or eval_every)"
            )
        if self.average_last is not None and self.average_last > self.keep_checkpoints:
            raise ValueError(
                f"average_last ({self.average_last}) averages kept saves, but keep_checkpoints is "
                f"{self.keep_checkpoints}: set keep_checkpoints >= {self.average_last}"
            )


_TRAINING_RANGES = {
    "lr": NON_NEGATIVE,
    "betas": FRACTION,
    "eps": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE,
    "min_lr_ratio": UNIT,
    "schedule_d_model": COUNT,
    "label_smoothing": FRACTION,
    "grad_clip": POSITIVE,
    "accumulate_batches": COUNT,
    "max_steps": COUNT,
    "max_epochs": COUNT,
    "max_minutes": POSITIVE,
    "eval_every": COUNT,
    "early_stopping_patience": COUNT,
    "checkpoint_every": COUNT,
    "keep_checkpoints": NON_NEGATIVE,
    "average_last": COUNT,
    "log_every": COUNT,
    "num_threads": COUNT,
    "malloc_mmap_threshold": COUNT,
    "max_bad_batches": NON_NEGATIVE,
}
