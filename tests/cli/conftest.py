"""Fixtures shared by the CLI tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch


@pytest.fixture
def autocast_spy(monkeypatch) -> Callable[[type, str], list[bool]]:
    """``spy(cls, name)`` wraps the method ``cls.name`` and returns a list that gets, per call,
    whether it ran under CPU bf16 autocast."""

    def spy(cls: type, name: str) -> list[bool]:
        seen: list[bool] = []
        method = getattr(cls, name)

        def wrapped(self, *args, **kwargs):
            seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
            return method(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapped)
        return seen

    return spy
