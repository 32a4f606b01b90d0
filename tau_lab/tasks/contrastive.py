"""What the contrastive tasks (``simclr``, ``clip``, ``pairs``) share.

- ``Sweep``: τ, its mode and seeds, plus the temperature's own learning rate and weight decay per member;
- ``step_generator``, ``draw_batch``: the random stream of one seed at one step, and a batch drawn from it;
- ``geometry``: alignment, uniformity and tolerance of embeddings, in member chunks that fit memory;
- ``train_reference``: one member trained alone with ``torch.optim``, the oracle of the population;
- ``member_bytes``: the memory estimate behind the engine's chunking.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import Tensor, nn

from tau_lab import config, metrics
from tau_lab.temperature import SCHEDULES, scheduled_tau

PAIR_METRIC_BYTES = 2**28  # memory for the [members, pairs, D] tensors of uniformity and tolerance


class Sweep(config.Sweep):
    """The grid of a contrastive task.

    ``tau_lr`` and ``tau_weight_decay``, when given, are axes of the grid: the learning rate and weight decay
    of a learnable member's ``logit_scale``, in place of ``optimizer.tau_lr`` / ``optimizer.tau_weight_decay``.
    Fixed and scheduled members have no ``logit_scale`` to train and ignore them.
    """

    tau_lr: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, min_length=1, description="learning rate of a learnable τ's logit_scale, per member"
    )
    tau_weight_decay: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, min_length=1, description="weight decay of a learnable τ's logit_scale, per member"
    )

    @model_serializer(mode="wrap")
    def _only_given_axes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An axis left out is no axis: it is not in the grid, the members table or ``config.toml``."""
        return {axis: values for axis, values in handler(self).items() if values is not None}


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The random stream of ``seed`` at ``step``.

    Seeded by hashing the pair with NumPy's ``SeedSequence``, so streams are independent across seeds and
    steps, and a step draws the same whatever the run's length or where it was resumed.
    """
    state = np.random.SeedSequence([seed % 2**64, step]).generate_state(1, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(state))


def draw_batch(n: int, size: int, generator: torch.Generator) -> Tensor:
    """``size`` distinct indices of ``0..n-1``, uniformly at random: ``[size]``."""
    return torch.randperm(n, generator=generator, device=generator.device)[:size]


def _by_member(fn: Callable[..., Tensor], x: Tensor, *args: Tensor) -> Tensor:
    """``fn(x, *args)`` over chunks of members, so that the ``[members, N(N-1)/2, D]`` float32 tensors it makes
    (about three: two gathers and their difference) fit in ``PAIR_METRIC_BYTES``."""
    n, d = x.shape[-2], x.shape[-1]
    chunk = max(1, PAIR_METRIC_BYTES // (4 * 3 * d * n * (n - 1) // 2))
    return torch.cat([fn(part, *args) for part in x.split(chunk)])


def geometry(z: Tensor, labels: Tensor | None, positives: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """Uniformity and tolerance of ``z``, alignment of the positive pairs; each ``[K]``.

    Args:
        z: ``[K, N, D]`` embeddings (the metrics normalise them).
        labels: ``[N]``, or ``None`` (no tolerance).
        positives: two ``[K, M, D]``, row i of one the positive of row i of the other.
    """
    out = {"alignment": metrics.alignment(*positives), "uniformity": _by_member(metrics.uniformity, z)}
    if labels is not None:
        out["tolerance"] = _by_member(metrics.tolerance, z, labels)
    return out


def train_reference(
    experiment: Any,
    member: dict[str, Any],
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Tensor | float, int], Tensor],
) -> tuple[nn.Module, Tensor, list[float]]:
    """One member trained alone, as a plain script writes it: ``model`` (built from the member's seed),
    ``torch.optim`` and CLIP's ``logit_scale``, one Python step at a time.

    ``loss_fn(model, tau, step)`` returns the loss of the member's batch at ``step``. Returns the trained
    model, its ``logit_scale`` and the loss per step. The oracle of the population's equivalence tests and
    the sequential baseline of ``benchmarks/bench_contrastive.py``.
    """
    opt, t = experiment.optimizer, experiment.temperature
    mode = member["tau_mode"]
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / member["tau_init"])))
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "weight_decay": opt.weight_decay}]
    if mode == "learnable":
        tau_wd = member.get("tau_weight_decay")
        groups.append(
            {
                "params": [logit_scale],
                "lr": member.get("tau_lr") or opt.tau_lr or opt.lr,
                "weight_decay": opt.tau_weight_decay if tau_wd is None else tau_wd,
            }
        )
    if opt.name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=opt.lr)
    else:
        optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
    losses = []
    for step in range(experiment.steps):
        if mode == "learnable":
            tau: Tensor | float = torch.exp(-logit_scale)
        elif mode in SCHEDULES:
            tau = scheduled_tau(mode, step, t.tau_min, t.tau_max, t.period)
        else:
            tau = member["tau_init"]
        loss = loss_fn(model, tau, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if mode == "learnable":
            with torch.no_grad():
                logit_scale.clamp_(math.log(1 / t.tau_max), math.log(1 / t.tau_min))
        losses.append(loss.item())
    return model, logit_scale.detach(), losses


def member_bytes(model: nn.Module, activations: int) -> int:
    """Float32 bytes of one member: the parameters of ``model`` with their gradients and AdamW's two
    moments, and ``activations`` numbers alive at the peak of a step or an evaluation."""
    return 4 * (4 * sum(p.numel() for p in model.parameters()) + activations)
