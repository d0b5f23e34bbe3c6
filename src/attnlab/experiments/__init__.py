"""Experiments: every claim of the documentation site as one seeded command.

Each module of this package is one experiment and exposes::

    NAME: str                 # the command's name, ``attnlab experiment NAME``
    FIGURES: list[str]        # file names it writes under its output folder
    def run(out: Path, quick: bool = False) -> dict: ...   # writes FIGURES, returns numbers

The registry discovers the modules of the package, so an experiment is added by dropping in a
file. ``run_experiment`` writes the returned numbers to ``out/results.json``; the site's pages
reference ``figures/<NAME>/<file>`` (see ``declared_figures``).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from types import ModuleType

__all__ = ["UnknownExperimentError", "declared_figures", "experiments", "get", "names", "run_experiment"]

FIGURES_DIR = "figures"  # relative to docs/site, where ``make figures`` writes
_REQUIRED = ("NAME", "FIGURES", "run")


class UnknownExperimentError(KeyError):
    """An experiment name that is not registered; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


def experiments() -> dict[str, ModuleType]:
    """Every experiment module of this package, by ``NAME``, in name order."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, attr) for attr in _REQUIRED):
            found[module.NAME] = module
    return dict(sorted(found.items()))


def names() -> list[str]:
    """The registered experiment names, sorted."""
    return list(experiments())


def get(name: str) -> ModuleType:
    """The experiment module called ``name``.

    Raises:
        UnknownExperimentError: ``name`` is not registered (the message lists the names).
    """
    registry = experiments()
    if name not in registry:
        raise UnknownExperimentError(f"unknown experiment {name!r}; expected one of: {', '.join(registry)}")
    return registry[name]


def declared_figures() -> list[str]:
    """Every figure the experiments write, as paths relative to ``docs/site``
    (``figures/<NAME>/<file>``)."""
    return [f"{FIGURES_DIR}/{name}/{figure}" for name, module in experiments().items() for figure in module.FIGURES]


def run_experiment(name: str, out: Path, quick: bool = False) -> dict:
    """Run experiment ``name`` into ``out`` (created), write ``out/results.json`` and return the numbers."""
    module = get(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = module.run(out, quick=quick)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    return results
