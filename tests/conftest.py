"""Suite-wide fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run tiny models of many small ops: one thread is faster, and steady when the machine is busy.

    Benchmarks, not tests, measure multi-threaded speed.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
