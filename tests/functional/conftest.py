"""The functional tests choose kernels by the default thresholds, never by a table measured on this machine."""

import pytest

from attnlab.functional.kernels import Thresholds, set_thresholds


@pytest.fixture(autouse=True)
def kernel_defaults():
    """Hand the dispatcher the default thresholds for the test; restore what was in force after."""
    previous = set_thresholds(Thresholds())
    yield
    set_thresholds(previous)
