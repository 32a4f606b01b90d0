"""Bring your own embeddings: projection heads trained on paired features from an ``.npz`` file.

A researcher exports paired features of their own model (``a [n, d_a]``, ``b [n, d_b]``, optional
``labels [n]``; ``tau_lab.data.pairs``), and every member trains two heads into a joint space:

    u = head_a(a) [K, B, D],  v = head_b(b) [K, B, D]   (a Linear layer, or Linear → ReLU → Linear)
    L = clip_loss(u, v; τ)            (model.loss = "clip", symmetric)
      or InfoNCE(u → v; τ)            (model.loss = "info_nce", a→b only: row i of v is u_i's positive)

The heads are an ``nn.Module`` run by the generic module task (``tau_lab.tasks.module``: one ``vmap`` of
``functional_call`` over the stacked members): a hand-batched step measured no faster (0.95–0.97×,
``benchmarks/bench_module.py``, docs/benchmarks.md), so this task is only its data and its model.

Inputs are standardised with the train split's mean and standard deviation (``data.standardize``).
Evaluation on the held-out pairs: ``recall_a2b`` / ``recall_b2a`` (the partner is the top-1 among all test
pairs), ``alignment`` of the pairs, ``uniformity`` of ``u``, and ``tolerance`` of ``u`` when there are labels.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from tau_lab.data.pairs import Pairs, load_pairs, split
from tau_lab.tasks import contrastive, reference
from tau_lab.tasks.base import Schema
from tau_lab.tasks.mlp import mlp_module, seeded
from tau_lab.tasks.module import ModuleTask, paired_reference


@functools.lru_cache(maxsize=2)
def _read(path: str, resolved: str, version: tuple[int, int]) -> Pairs:
    return load_pairs(path)  # errors name the path as the user wrote it


def read(path: str) -> Pairs:
    """``load_pairs(path)``, read once per version of the file: checking the experiment, sizing the chunks and
    building the task all need it, and a researcher's file may be large. Do not modify the tensors."""
    file = Path(path)
    if not file.is_file():
        return load_pairs(file)  # its one-line UserError
    stat = file.stat()
    return _read(path, str(file.resolve()), (stat.st_mtime_ns, stat.st_size))


class Data(Schema):
    path: str = Field(description="the .npz file (arrays a, b, optional labels), relative to the working directory")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share of the pairs (of every class)")
    split_seed: int = Field(0, description="seed of the train/test split")
    batch_size: int = Field(256, ge=2, description="pairs per step (at most the training pairs)")
    standardize: bool = Field(True, description="standardise a and b with the train split's statistics")

    @field_validator("path")
    @classmethod
    def _readable(cls, path: str) -> str:
        """Check the file when the experiment is loaded, before a run directory is made."""
        try:
            read(path)
        except ValueError as err:  # UserError
            raise ValueError(str(err).removeprefix(f"{path}: ")) from None
        return path

    @model_validator(mode="after")
    def _fits(self) -> Data:
        self.batch_size = contrastive.clamp_batch_size(self.batch_size, *self.batch_limit())
        return self

    def batch_limit(self) -> tuple[int, str]:
        """The most pairs a batch can draw (a ``Sweep.batch_size`` is clamped to it too)."""
        pairs = read(self.path)
        return int((~split(len(pairs.a), pairs.labels, self.test_fraction, self.split_seed)).sum()), "training pairs"


class Model(Schema):
    loss: Literal["clip", "info_nce"] = Field("clip", description="symmetric CLIP loss, or InfoNCE from a to b")
    hidden: int = Field(0, ge=0, description="hidden width of the heads; 0 makes them linear")
    dim: int = Field(32, ge=1, description="width of the joint embedding space")


class Heads(nn.Module):
    """One member as a module: a head per side, ``forward(a, b) -> (head_a(a), head_b(b))``."""

    def __init__(self, d_a: int, d_b: int, hidden: int, dim: int) -> None:
        super().__init__()
        middle = [hidden] if hidden else []
        self.a = mlp_module([d_a, *middle, dim])
        self.b = mlp_module([d_b, *middle, dim])

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return self.a(a), self.b(b)


def _standardize(x: Tensor, train: Tensor) -> Tensor:
    return (x - x[train].mean(0)) / x[train].std(0).clamp_min(1e-6)  # a constant column stays 0, not NaN


class PairsTask(ModuleTask):
    """The population: ``Heads`` parameters stacked over members, ``{name: [K, ...]}``."""

    Data, Model, Sweep = Data, Model, contrastive.Sweep

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None:
        contrastive.ContrastiveTask.__init__(self, experiment, members, device)
        model = experiment.model
        pairs = read(self.data.path)
        a, b = pairs.a, pairs.b
        if self.data.standardize:
            train = ~split(len(a), pairs.labels, self.data.test_fraction, self.data.split_seed)
            a, b = _standardize(a, train), _standardize(b, train)
        self.heads = (a.shape[1], b.shape[1], model.hidden, model.dim)
        self.populate(model.loss, a, b, pairs.labels, lambda seed: seeded(seed, lambda: Heads(*self.heads)))

    @staticmethod
    def member_bytes(experiment: Any) -> int:
        """Parameters and optimizer state, the larger of the step's activations (about three copies of the
        inputs and the heads' outputs, four of the B × B similarities) and the evaluation's (every pair), and the
        ``block_steps`` batches of inputs a block of steps holds stacked."""
        pairs = read(experiment.data.path)
        m, b = experiment.model, experiment.data.batch_size
        inputs = pairs.a.shape[1] + pairs.b.shape[1]
        width = inputs + 2 * (m.hidden + m.dim)
        heads = Heads(pairs.a.shape[1], pairs.b.shape[1], m.hidden, m.dim)
        block = experiment.block_steps * b * inputs
        return contrastive.member_bytes(heads, max(3 * b * width + 4 * b * b, len(pairs.a) * width) + block)


def train_reference(experiment: Any, member: dict[str, Any]) -> reference.Reference:
    """One member trained alone: ``Heads`` and ``torch.optim`` on the member's own pairs (``paired_reference``)."""
    task = PairsTask(experiment, [member], torch.device("cpu"))
    return paired_reference(task, experiment, member, seeded(member["seed"], lambda: Heads(*task.heads)))
