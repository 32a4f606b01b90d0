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


def assert_population_matches_reference(experiment, train_reference, rtol: float, atol: float) -> None:
    """Every member of the population ends with the weights and logit_scale of its standalone run."""
    from tau_lab import config, engine

    rows = config.members(experiment)
    out = engine.train_population(experiment, rows, torch.device("cpu"))
    for k, row in enumerate(rows):
        net, logit_scale, _ = train_reference(experiment, row)
        for name, p in net.named_parameters():
            torch.testing.assert_close(out["params"][name][k], p.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(out["params"]["logit_scale"][k], logit_scale, rtol=rtol, atol=atol)
