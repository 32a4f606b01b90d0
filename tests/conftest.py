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
