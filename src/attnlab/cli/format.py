"""Turning metrics dicts into printable lines."""

from __future__ import annotations

from typing import Any

_SKIP = ("confusion_matrix", "per_class_accuracy")


def format_metrics(metrics: dict[str, Any]) -> str:
    """``key value`` pairs of the scalar and string metrics, floats to 4 digits."""
    parts = []
    for key, value in metrics.items():
        if key in _SKIP or isinstance(value, (dict, list)):
            continue
        parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def format_per_class(metrics: dict[str, Any]) -> str | None:
    """``per-class accuracy: name 0.9120, ...`` for classification metrics; None for other tasks."""
    per_class = metrics.get("per_class_accuracy")
    if not per_class:
        return None
    return "per-class accuracy: " + ", ".join(f"{name} {value:.4f}" for name, value in per_class.items())
