"""What every task shares: the step's result, stacking member modules, seeds per member."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class StepResult(NamedTuple):
    """One training step of a population of K members."""

    loss: Tensor  # [K]
    grads: dict[str, Tensor]  # name -> [K, ...], like the parameters
    grad_tau: Tensor  # [K], ∂L/∂τ
    sims: Tensor  # [K, ..., N] similarities with the positive at index 0 (hardness metrics)


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
