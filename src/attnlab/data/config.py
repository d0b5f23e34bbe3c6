"""Reading the data layer's config dataclasses from plain mappings (YAML sections)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["dataclass_from_dict"]

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls(**values)``, but an unknown key fails with its name and the keys ``cls`` accepts."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; expected a subset of {sorted(known)}")
    return cls(**values)
