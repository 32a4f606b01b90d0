"""check_finite is used by no library module yet (the CLI's share of checks.py): test it directly."""

from __future__ import annotations

import pytest
import torch

from tau_lab.checks import check_finite, check_positive, check_unit_interval


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_check_finite_names_argument_and_value(bad):
    value = torch.tensor([[1.0, 2.0], [bad, 3.0]])
    with pytest.raises(ValueError, match=rf"^loss contains {bad} values"):
        check_finite("loss", value)


def test_check_finite_accepts_finite_extremes():
    check_finite("loss", torch.tensor([torch.finfo(torch.float32).max, -1e30, 0.0]))


def test_checks_accept_the_boundaries():
    # [0, 1] is closed for weights; τ just above 0 is allowed
    check_unit_interval("alpha", [0.0, 1.0])
    check_positive("tau", torch.tensor([1e-30]))
    with pytest.raises(ValueError, match=r"^tau = 0 is not allowed"):
        check_positive("tau", [1.0, 0.0])
