"""The task contract: what the engine asks of a task, the defaults every task shares, the base grid.

A task is a class, listed in ``tau_lab.tasks.TASKS``, built as ``Task(experiment, members, device)``
(``members``: the rows of ``config.members``). Its ``Data``, ``Model`` and ``Sweep`` are the pydantic
schemas of ``[data]``, ``[model]`` and ``[sweep]``; ``config.validate`` checks those tables with them, and
the task reads ``experiment.data``, ``experiment.model`` and ``experiment.sweep`` as those models
(attribute access). ``Sweep`` extends the base grid below with the task's own axes.

This module imports nothing of ``tau_lab.config``: the config imports the tasks, not the reverse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, NamedTuple, Protocol

import torch
import torch.utils._pytree as pytree
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer
from torch import Tensor, nn

from tau_lab.checks import check_positive
from tau_lab.temperature import MODES


class Schema(BaseModel):
    """A table of an experiment file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Sweep(Schema):
    """The grid: the product of these lists (and a task's own, in a subclass) with ``seeds``."""

    tau: list[float] = Field([0.07], min_length=1)
    tau_mode: list[str] = Field(["fixed"], min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    lr: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, min_length=1, description="learning rate of the model's parameters, per member (the τ × lr interaction)"
    )

    @model_serializer(mode="wrap")
    def _only_given_axes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An axis left out is no axis: it is not in the grid, the members table or ``config.toml``."""
        return {axis: values for axis, values in handler(self).items() if values is not None}

    @field_validator("tau")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        check_positive("tau", values)
        return values

    @field_validator("tau_mode")
    @classmethod
    def _modes(cls, values: list[str]) -> list[str]:
        for v in values:
            if v not in MODES:
                raise ValueError(f"tau_mode = {v!r} is not allowed: use one of {', '.join(MODES)}")
        return values


def warn(message: str) -> None:
    """One warning line on stderr: a setting was changed to one that works (the recorded config holds it)."""
    print(f"warning: {message}", file=sys.stderr)


class StepResult(NamedTuple):
    """One training step of a population of K members."""

    loss: Tensor  # [K]
    grads: dict[str, Tensor]  # name -> [K, ...], like the task's parameters
    grad_tau: Tensor  # [K], ∂L/∂τ
    sims: Tensor | None = None  # [K, ..., N] similarities, positive at index 0 (hardness metrics)


class Task(Protocol):
    """What the engine calls. ``params`` are the task's own parameters ``{name: [K, ...]}`` (the engine
    keeps the temperature's ``logit_scale`` apart and never hands it to the task)."""

    Data: ClassVar[type[BaseModel]]
    Model: ClassVar[type[BaseModel]]
    Sweep: ClassVar[type[Sweep]]
    params: dict[str, Tensor]

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None: ...

    def batch(self, step: int) -> Any:
        """The step's inputs for every member (drawn per seed: members of a seed see the same data)."""

    def batches(self, start: int, n: int) -> Any:
        """The inputs of steps ``start … start + n − 1``: ``batch(step)`` with every tensor stacked ``[n, ...]``
        (``TaskBase`` stacks ``batch``); a block of steps reads step i as ``index_batch(batches, i)``."""

    def step(self, params: dict[str, Tensor], tau: Tensor, batch: Any) -> StepResult:
        """Loss ``[K]``, gradients of ``params`` and ``∂L/∂τ`` ``[K]`` at ``tau [K]``."""

    def evaluate(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{metric: [K]}`` on held-out (or all) data."""

    def embed(self, params: dict[str, Tensor]) -> Tensor | None:
        """``[K, N, D]`` embeddings worth drawing, or ``None``."""

    def diagnostics(self, params: dict[str, Tensor], tau: Tensor, step: int) -> dict[str, Tensor]:
        """Extra ``{metric: [K]}`` at logging steps."""

    @staticmethod
    def member_bytes(experiment: Any) -> int:
        """Memory of one member, for the engine's chunking."""


class TaskBase:
    """The defaults of ``Task``: no diagnostics, no embeddings (a task's own tables are ``analysis.summary_tables``),
    a block's batches stacked from ``batch``."""

    def batches(self, start: int, n: int) -> Any:
        return pytree.tree_map(lambda *xs: torch.stack(xs), *(self.batch(s) for s in range(start, start + n)))

    def diagnostics(self, params: dict[str, Tensor], tau: Tensor, step: int) -> dict[str, Tensor]:
        return {}

    def embed(self, params: dict[str, Tensor]) -> Tensor | None:
        return None


def index_batch(batches: Any, i: int | Tensor) -> Any:
    """Step ``i`` of ``Task.batches``: every tensor ``[n, ...]`` indexed at ``i``."""
    if isinstance(batches, Tensor):  # most tasks' batch: no tree to walk (a Python cost at every step)
        return batches[i]
    return pytree.tree_map(lambda x: None if x is None else x[i], batches)


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
    parameters is the stack of each member's own gradient. ``torch.func.grad`` rather than
    ``torch.autograd.grad``: ``torch.compile`` traces it inside a compiled block of steps (``scan``).
    """

    def total(p: dict[str, Tensor], t: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        loss, sims = loss_fn(p, t)
        return loss.sum(), (loss,) if sims is None else (loss, sims)  # torch.func's aux holds tensors only

    (grads, grad_tau), (loss, *sims) = torch.func.grad(total, argnums=(0, 1), has_aux=True)(params, tau)
    return StepResult(loss.detach(), grads, grad_tau, sims[0].detach() if sims else None)
