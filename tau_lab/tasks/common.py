"""What every task shares: the step's result, stacking member modules, seeds per member.

A task is a class, listed in ``tau_lab.tasks.TASKS``, built as ``Task(experiment, members, device)``
with:

- ``Data``, ``Model``, ``Sweep``: pydantic schemas of its ``[data]``, ``[model]`` and ``[sweep]``
  tables (``Sweep`` extends ``tau_lab.config.Sweep`` with the task's own grid axes);
- ``params``: the population's parameters, ``{name: [K, ...]}``;
- ``batch(step)`` → the step's inputs, and ``step(params, tau, batch)`` → ``StepResult``;
- ``evaluate(params)`` → ``{metric: [K]}`` on held-out or full data;
- ``embed(params)`` → ``[K, N, D]`` embeddings worth drawing, or ``None``;
- ``diagnostics(params, tau, step)`` → extra ``{metric: [K]}`` at logging steps (may be ``{}``);
- ``member_bytes(experiment)`` (static) → memory of one member, for chunking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class StepResult(NamedTuple):
    """One training step of a population of K members."""

    loss: Tensor  # [K]
    grads: dict[str, Tensor]  # name -> [K, ...], like the parameters
    grad_tau: Tensor  # [K], ∂L/∂τ
    sims: Tensor | None = None  # [K, ..., N] similarities, positive at index 0 (hardness metrics)


def member_seeds(members: list[dict[str, Any]], device: torch.device) -> tuple[list[int], Tensor]:
    """The distinct seeds, and for each member the row of its seed ``[K]``.

    Members that share a seed share initial weights and data order, so a sweep over τ is a paired
    comparison.
    """
    seeds = sorted({m["seed"] for m in members})
    row = torch.tensor([seeds.index(m["seed"]) for m in members], device=device)
    return seeds, row


def stack_modules(modules: list[nn.Module], names: dict[str, str]) -> dict[str, Tensor]:
    """Stack the parameters of per-seed modules on a leading axis: ``{new_name: [S, ...]}``."""
    return {new: torch.stack([dict(m.named_parameters())[old].detach() for m in modules]) for old, new in names.items()}


def autograd_step(
    loss_fn: Callable[[dict[str, Tensor], Tensor], tuple[Tensor, Tensor | None]],
    params: dict[str, Tensor],
    tau: Tensor,
) -> StepResult:
    """Gradients by autograd for ``loss_fn(params, tau) -> (loss [K], sims or None)``.

    Members are independent, so the gradient of ``Σ_k L_k`` with respect to the stacked
    parameters is the stack of each member's own gradient.
    """
    leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
    tau = tau.detach().requires_grad_()
    loss, sims = loss_fn(leaves, tau)
    *grads, grad_tau = torch.autograd.grad(loss.sum(), [*leaves.values(), tau], allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves.values(), grads, strict=True)]
    grad_tau = torch.zeros_like(tau) if grad_tau is None else grad_tau
    return StepResult(
        loss.detach(), dict(zip(leaves, grads, strict=True)), grad_tau, None if sims is None else sims.detach()
    )
