"""The models a server holds, loaded once at start-up, each with a lock so that one request at a
time runs it (attention capture hooks the model: two captures at once would mix their maps)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnlab.inference import Classifier, Translator, load
from attnlab.viz.capture import attention_sites
from attnlab.web.encoder import Encoder, load_pretrained

__all__ = ["ServedModel", "load_models"]

TASKS = {Translator: "translation", Classifier: "classification", Encoder: "encoding"}
HEADED = ("encoder_self", "decoder_self", "cross", "rnn_source", "vit", "bert")  # kinds with heads


@dataclass
class ServedModel:
    """One model of the server.

    Attributes:
        name: its name in URLs (the run directory's name, or the pretrained name).
        runner: the ``Translator``, ``Classifier`` or ``Encoder``.
        task: ``translation``, ``classification`` or ``encoding``.
        layers: per attention kind, the number of layers (``{"cross": 6, ...}``).
        heads: heads per attention layer (1 for RNN attention, 0 for CNN masks and gates).
        lock: held while the model runs.
    """

    name: str
    runner: Translator | Classifier | Encoder
    task: str = ""
    layers: dict[str, int] = field(default_factory=dict)
    heads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.task = self.task or TASKS[type(self.runner)]
        if isinstance(self.runner, Encoder):
            self.layers, self.heads = {"bert": self.runner.num_layers}, self.runner.num_heads
            return
        sites = attention_sites(self.runner.model)
        for kind, _, _ in sites:
            self.layers[kind] = self.layers.get(kind, 0) + 1
        self.heads = max((getattr(module, "num_heads", 1) for kind, _, module in sites if kind in HEADED), default=0)

    def describe(self) -> dict:
        """What ``GET /api/models`` says of it."""
        info = {"name": self.name, "task": self.task, "layers": self.layers, "heads": self.heads}
        if isinstance(self.runner, Classifier):
            spec = self.runner.spec
            info["classes"] = list(spec.classes)
            info["image_size"] = list(spec.image_size)
        return info


def load_models(run_dirs: Sequence[str | Path], pretrained: Sequence[str] = ()) -> dict[str, ServedModel]:
    """Load every run (``attnlab.load``) and pretrained encoder once, keyed by a unique name.

    Raises:
        CheckpointError, ConfigError: a run that cannot be loaded (from ``attnlab.load``).
    """
    models: dict[str, ServedModel] = {}
    for run_dir in run_dirs:
        name = _unique(Path(run_dir).resolve().name or "run", models)
        models[name] = ServedModel(name, load(run_dir))
    for name in pretrained:
        models[_unique(name, models)] = ServedModel(name, load_pretrained(name))
    return models


def _unique(name: str, taken: dict) -> str:
    """``name``, or ``name-2``, ``name-3``... when taken."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate
