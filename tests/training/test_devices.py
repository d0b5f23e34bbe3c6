"""Device and precision resolution (``attnlab.training.devices``)."""

from __future__ import annotations

import logging

import pytest
import torch

from attnlab.functional.kernels import thresholds
from attnlab.training import devices


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(native, monkeypatch, caplog):
    monkeypatch.setattr(thresholds, "default_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert devices.cpu_has_bf16() is native
    assert devices.resolve_precision("auto", cpu) == (torch.bfloat16 if native else None)
    assert devices.resolve_precision("fp32", cpu) is None
    with caplog.at_level(logging.WARNING, logger="attnlab.training.devices"):
        assert devices.resolve_precision("bf16", cpu) == torch.bfloat16  # asked for: given, and warned where slow
    assert ("lacks native bf16" in caplog.text) is not native
