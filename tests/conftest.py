import contextlib

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The tests' tensors are tiny: OpenMP hand-offs cost more than the work (up to ~100x on a loaded
    # machine), and pytest-xdist already runs one worker per core.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@contextlib.contextmanager
def default_float64():
    """Tensors default to float64 inside: equality tests then check the math, not float32 rounding."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
