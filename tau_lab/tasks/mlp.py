"""Batched layers: one network per member, weights stacked on a leading member axis ``K``.

A linear layer's weight is ``[K, out, in]`` and its bias ``[K, out]``; ``baddbmm(b, x, Wᵀ)`` computes the
K members' ``nn.Linear`` layers in one call on ``x [K, B, in]``. Each network is defined once as an
``nn.Module`` (``build``), initialised by PyTorch's own ``nn.Linear`` / ``nn.Embedding`` code under
``torch.manual_seed(seed)``, and stacked: a member reproduces the module it stands for, and members that
share a seed share their initial weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tau_lab.tasks.base import stack_modules


def mlp_module(sizes: Sequence[int]) -> nn.Sequential:
    """``Linear(sizes[0], sizes[1]) → ReLU → … → Linear(sizes[-2], sizes[-1])``, no ReLU after the last.

    ``nn.Sequential`` names linear layer i ``{2i}``: the ReLUs sit at the odd indices.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the CPU's random state as it was. Without an
    accelerator only the CPU's generator is seeded (all that ``torch.manual_seed`` then seeds too): it would also
    queue a seed for CUDA, formatting a stack trace each time, about 0.2 ms a module."""
    with torch.random.fork_rng(devices=[]):
        if torch.accelerator.is_available():
            torch.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        return build()


def init_population(seeds: Sequence[int], build: Callable[[], nn.Module], row: Tensor) -> dict[str, Tensor]:
    """Parameters of ``build()`` for every member, ``{name: [K, ...]}``, with ``name`` as in ``named_parameters``.

    Args:
        seeds: the distinct seeds; the module of seed i is built under ``torch.manual_seed(seeds[i])``.
        build: makes the module (the same architecture for every seed).
        row: ``[K]`` each member's index into ``seeds`` (``tasks.base.member_seeds``).
    """
    modules = [seeded(s, build) for s in seeds]
    stacked = stack_modules(modules, {name: name for name, _ in modules[0].named_parameters()})
    return {name: p.to(row.device)[row].contiguous() for name, p in stacked.items()}


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """K linear layers: ``x [K, B, in]``, ``weight [K, out, in]``, ``bias [K, out]`` → ``x Wᵀ + b`` ``[K, B, out]``."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def mlp(x: Tensor, params: dict[str, Tensor], prefix: str, layers: int) -> Tensor:
    """The stacked ``mlp_module`` named ``prefix`` with ``layers`` linear layers, on ``x [K, B, in]``."""
    for i in range(layers):
        if i:
            x = F.relu(x)
        x = linear(x, params[f"{prefix}.{2 * i}.weight"], params[f"{prefix}.{2 * i}.bias"])
    return x
