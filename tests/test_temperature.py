"""Tests of tau_lab.temperature: CLIP-style learnable τ, the clamp, fixed members, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tau_lab.temperature import Temperature, scheduled_tau

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def _sgd_step(temp: Temperature, lr: float) -> None:
    """Plain SGD, p ← p − lr·g (torch.optim.SGD's first step costs a second of imports)."""
    with torch.no_grad():
        temp.logit_scale -= lr * temp.logit_scale.grad
    temp.logit_scale.grad = None


def test_clip_initialisation():
    temp = Temperature([0.07], "learnable")
    # REFERENCE.md: log(1/0.07) = 2.659260, scale exp(logit_scale) = 14.2857
    assert temp.logit_scale.item() == pytest.approx(2.659260, abs=1e-6)
    assert temp.logit_scale.exp().item() == pytest.approx(14.2857, abs=1e-4)
    tau = temp()
    assert tau.shape == (1,)
    assert tau.item() == pytest.approx(0.07, rel=1e-6)


def test_default_clamp_is_clips():
    # CLIP clamps logit_scale to [0, ln 100]: τ in [0.01, 1]
    temp = Temperature([0.07], "learnable")
    with torch.no_grad():
        temp.logit_scale.fill_(10.0)
    temp.clamp_()
    assert temp.logit_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    with torch.no_grad():
        temp.logit_scale.fill_(-3.0)
    temp.clamp_()
    assert temp.logit_scale.item() == pytest.approx(0.0, abs=1e-7)


def test_learnable_moves_fixed_does_not():
    temp = Temperature([0.07, 0.2], ["learnable", "fixed"])
    start = temp.logit_scale.detach().clone()
    for _ in range(3):
        # a loss that depends on both members' τ
        temp().sum().backward()
        assert temp.logit_scale.grad[0] != 0
        assert temp.logit_scale.grad[1] == 0
        _sgd_step(temp, 0.1)
        temp.clamp_()
    now = temp.logit_scale.detach()
    assert now[0] != start[0]
    assert now[1] == start[1]
    assert temp()[1].item() == pytest.approx(0.2, rel=1e-6)


def test_learnable_gradient_is_minus_tau():
    # dτ/d(logit_scale) = d exp(−s)/ds = −τ
    temp = Temperature([0.07, 0.3], "learnable")
    temp().sum().backward()
    torch.testing.assert_close(temp.logit_scale.grad, -torch.tensor([0.07, 0.3]))


def test_clamp_does_not_mask_gradient():
    # at the upper bound the parameter still receives its gradient (REFERENCE.md)
    temp = Temperature([0.01], "learnable")
    with torch.no_grad():
        temp.logit_scale.fill_(20.0)
    temp.clamp_()
    temp().sum().backward()
    assert temp.logit_scale.grad.item() == pytest.approx(-0.01, rel=1e-5)


@SETTINGS
@given(
    steps=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8),
    lr=st.sampled_from([1.0, 10.0, 100.0]),
    tau_min=st.sampled_from([0.01, 0.05]),
    tau_max=st.sampled_from([0.5, 1.0]),
)
def test_clamp_bounds_learnable_and_spares_fixed(steps, lr, tau_min, tau_max):
    # fixed members deliberately outside the clamp, on both sides
    temp = Temperature(
        [0.1, 0.001, 5.0, 0.2], ["learnable", "fixed", "fixed", "learnable"], tau_min=tau_min, tau_max=tau_max
    )
    fixed_before = temp.logit_scale.detach()[1:3].clone()
    lo, hi = math.log(1 / tau_max), math.log(1 / tau_min)
    for weight in steps:
        (weight * temp().sum()).backward()
        _sgd_step(temp, lr)
        temp.clamp_()
        scale = temp.logit_scale.detach()
        for k in (0, 3):
            assert lo - 1e-6 <= scale[k].item() <= hi + 1e-6
        assert torch.equal(scale[1:3], fixed_before)
    tau = temp().detach()
    assert tau_min * (1 - 1e-6) <= tau[0].item() <= tau_max * (1 + 1e-6)
    assert tau[1].item() == pytest.approx(0.001, rel=1e-6)
    assert tau[2].item() == pytest.approx(5.0, rel=1e-6)


def test_clamp_reaches_the_bound_under_a_big_step():
    temp = Temperature([0.07], "learnable", tau_min=0.01, tau_max=1.0)
    temp().sum().backward()  # gradient −τ: SGD raises logit_scale, lowering τ
    _sgd_step(temp, 1e4)
    assert temp.logit_scale.item() > math.log(100)
    temp.clamp_()
    assert temp().item() == pytest.approx(0.01, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


def test_cosine_schedule_key_points():
    temp = Temperature([0.5], "cosine", tau_min=0.1, tau_max=1.0, period=100)
    assert temp(0).item() == pytest.approx(1.0, rel=1e-6)
    assert temp(25).item() == pytest.approx(0.55, rel=1e-6)  # midway: cos(π/2) = 0
    assert temp(50).item() == pytest.approx(0.1, rel=1e-6)
    assert temp(100).item() == pytest.approx(1.0, rel=1e-6)
    assert temp(150).item() == pytest.approx(0.1, rel=1e-6)


def test_linear_schedule_reaches_min_and_stays():
    temp = Temperature([0.5], "linear", tau_min=0.1, tau_max=1.0, period=100)
    assert temp(0).item() == pytest.approx(1.0, rel=1e-6)
    assert temp(50).item() == pytest.approx(0.55, rel=1e-6)
    for step in (100, 101, 1000):
        assert temp(step).item() == pytest.approx(0.1, rel=1e-6)


@given(step=st.integers(0, 10_000), period=st.integers(1, 1000))
@SETTINGS
def test_schedules_stay_in_range(step, period):
    for mode in ("cosine", "linear"):
        tau = scheduled_tau(mode, step, 0.1, 1.0, period)
        assert 0.1 - 1e-12 <= tau <= 1.0 + 1e-12


def test_mixed_modes_in_one_module():
    temp = Temperature([0.07, 0.3, 0.5, 0.5], ["learnable", "fixed", "cosine", "linear"], period=10)
    tau = temp(5)
    torch.testing.assert_close(tau, torch.tensor([0.07, 0.3, 0.01, 0.505]))
    # only the learnable member carries a gradient through a scheduled step
    tau.sum().backward()
    grad = temp.logit_scale.grad
    assert grad[0] != 0
    assert torch.equal(grad[1:], torch.zeros(3))


def test_scheduled_tau_rejects_non_schedule():
    with pytest.raises(ValueError, match="'fixed'"):
        scheduled_tau("fixed", 0, 0.1, 1.0, 10)


# ---------------------------------------------------------------------------------------------
# Argument errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"tau_init": 0.0}, r"tau_init = 0\b"),
        ({"tau_init": -0.07}, r"tau_init = -0\.07"),
        ({"tau_init": float("nan")}, r"tau_init = nan"),
        ({"tau_init": [0.07, float("inf")]}, r"tau_init = inf"),
        ({"modes": "warm"}, r"tau_mode = 'warm'"),
        ({"tau_min": 0.5, "tau_max": 0.5}, r"tau_min = 0\.5 .*tau_max = 0\.5"),
        ({"tau_min": 0.9, "tau_max": 0.5}, r"tau_min = 0\.9 .*tau_max = 0\.5"),
        ({"tau_min": 0.0}, r"tau_min = 0\b"),
        ({"tau_max": float("nan")}, r"tau_max = nan"),
        ({"tau_init": 0.005, "modes": "learnable"}, r"tau_init = 0\.005 .*learnable"),
        ({"tau_init": 2.0, "modes": "learnable"}, r"tau_init = 2 .*learnable"),
        ({"tau_init": 0.5, "modes": "cosine"}, r"period"),
        ({"tau_init": [0.5, 0.5], "modes": ["fixed", "linear"]}, r"period"),
        ({"tau_init": 0.5, "modes": "cosine", "period": 0}, r"period = 0"),
        ({"tau_init": [0.1, 0.2], "modes": ["fixed"]}, r"modes has 1 entries"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Temperature(**kwargs)


def test_fixed_member_may_lie_outside_the_clamp():
    # the clamp concerns learnable members only
    temp = Temperature([0.001, 5.0], "fixed")
    torch.testing.assert_close(temp(), torch.tensor([0.001, 5.0]))


def test_logit_scale_grad_matches_autograd():
    temp = Temperature([0.07, 0.3, 0.5], ["learnable", "fixed", "learnable"])
    tau = temp()
    grad_tau = torch.tensor([2.0, -1.0, 0.5])
    (grad_tau * tau).sum().backward()
    got = temp.logit_scale_grad(tau.detach(), grad_tau, step=0)
    learnable = temp.learnable
    torch.testing.assert_close(got[learnable], temp.logit_scale.grad[learnable])
    # for the fixed member autograd gives 0; the method reports the pull −τ ∂L/∂τ instead
    assert temp.logit_scale.grad[1] == 0
    torch.testing.assert_close(got, -tau.detach() * grad_tau)
