"""Turning metrics dicts into one printable line."""

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
