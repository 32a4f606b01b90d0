"""One member trained alone, as a plain script writes it: the oracle of the population.

An ``nn.Module``, ``torch.optim`` (``tau_lab.optim.reference_optimizer``: the population's learning-rate and
weight-decay policy) and one Python step at a time; τ comes from a one-member ``Temperature`` of the member's
mode, called at every step, so fixed, learnable, cosine, linear and ctkd members all follow the very
schedule the population follows, and learnable and ctkd members get their gradient by autograd through it
(CTKD's gradient reversal included) where the population computes it in closed form
(``Temperature.logit_scale_grad``). Each task's ``train_reference(experiment, member)`` builds its module
and its loss, written the way its literature writes it, and calls ``train_reference`` below. It is the
oracle of the equivalence tests (``tests/test_reference.py``) and the sequential baseline of the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor, nn

from tau_lab.optim import reference_optimizer
from tau_lab.temperature import Temperature


class Reference(NamedTuple):
    """A member trained alone."""

    model: nn.Module
    logit_scale: Tensor  # as the population stores it: ln(1/τ), or CTKD's θ
    losses: list[float]  # the loss of every step, before that step's update


def train_reference(
    experiment: Any, member: dict[str, Any], model: nn.Module, loss_fn: Callable[[nn.Module, Tensor, int], Tensor]
) -> Reference:
    """Train ``model`` (built from the member's seed) for ``experiment.steps`` steps.

    ``loss_fn(model, tau, step)`` is the loss of the member's batch at ``step`` with ``tau`` a 0-d tensor.
    Per step: ``τ = temperature(step)``, the loss, one optimizer step over the model and (for learnable and
    ctkd members) ``logit_scale``, then the clamp of a learnable τ.
    """
    t = experiment.temperature
    temperature = Temperature([member["tau_init"]], member["tau_mode"], t.tau_min, t.tau_max, t.period)
    trained = temperature.logit_scale if bool(temperature.learnable[0]) else None
    optimizer = reference_optimizer(experiment.optimizer, model.named_parameters(), trained, member)
    losses = []
    for step in range(experiment.steps):
        loss = loss_fn(model, temperature(step)[0], step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        temperature.clamp_()
        losses.append(loss.item())
    return Reference(model, temperature.logit_scale.detach()[0], losses)
