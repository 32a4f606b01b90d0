"""Bring your own embeddings: projection heads trained on paired features from an ``.npz`` file.

A researcher exports paired features of their own model (``a [n, d_a]``, ``b [n, d_b]``, optional
``labels [n]``; ``tau_lab.data.pairs``), and every member trains two heads into a joint space:

    u = head_a(a) [K, B, D],  v = head_b(b) [K, B, D]   (a Linear layer, or Linear → ReLU → Linear)
    L = clip_loss(u, v; τ)            (model.loss = "clip", symmetric)
      or InfoNCE(u → v; τ)            (model.loss = "info_nce", a→b only: row i of v is u_i's positive)

Inputs are standardised with the train split's mean and standard deviation (``data.standardize``).
Evaluation on the held-out pairs: ``recall_a2b`` / ``recall_b2a`` (the partner is the top-1 among all test
pairs), ``alignment`` of the pairs, ``uniformity`` of ``u``, and ``tolerance`` of ``u`` when there are labels.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from tau_lab import losses, metrics
from tau_lab.data.pairs import Pairs, load_pairs, split
from tau_lab.tasks import contrastive, reference
from tau_lab.tasks.base import Schema, StepResult, autograd_step
from tau_lab.tasks.mlp import init_population, mlp, mlp_module, seeded


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
        pairs = read(self.path)
        available = int((~split(len(pairs.a), pairs.labels, self.test_fraction, self.split_seed)).sum())
        self.batch_size = contrastive.clamp_batch_size(self.batch_size, available, "training pairs")
        return self


class Model(Schema):
    loss: Literal["clip", "info_nce"] = Field("clip", description="symmetric CLIP loss, or InfoNCE from a to b")
    hidden: int = Field(0, ge=0, description="hidden width of the heads; 0 makes them linear")
    dim: int = Field(32, ge=1, description="width of the joint embedding space")


class Heads(nn.Module):
    """One member as a module: a head per side, ``a`` and ``b``."""

    def __init__(self, d_a: int, d_b: int, hidden: int, dim: int) -> None:
        super().__init__()
        middle = [hidden] if hidden else []
        self.a = mlp_module([d_a, *middle, dim])
        self.b = mlp_module([d_b, *middle, dim])


def _standardize(x: Tensor, train: Tensor) -> Tensor:
    return (x - x[train].mean(0)) / x[train].std(0).clamp_min(1e-6)  # a constant column stays 0, not NaN


class PairsTask(contrastive.ContrastiveTask):
    """The population: ``Heads`` parameters stacked over members, ``{name: [K, ...]}``."""

    Data, Model, Sweep = Data, Model, contrastive.Sweep

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None:
        super().__init__(experiment, members, device)
        model = experiment.model
        self.loss, self.layers, self.widths = model.loss, 2 if model.hidden else 1, (model.hidden, model.dim)
        pairs = read(self.data.path)
        test = split(len(pairs.a), pairs.labels, self.data.test_fraction, self.data.split_seed)
        a, b = pairs.a, pairs.b
        if self.data.standardize:
            a, b = _standardize(a, ~test), _standardize(b, ~test)
        dtype = torch.get_default_dtype()
        a, b, test = a.to(device, dtype), b.to(device, dtype), test.to(device)
        self.train_a, self.train_b, self.test_a, self.test_b = a[~test], b[~test], a[test], b[test]
        self.test_labels = None if pairs.labels is None else pairs.labels.to(device)[test]
        self.n_train, self.batch_size = len(self.train_a), self.data.batch_size
        self.params = init_population(self.seeds, lambda: Heads(a.shape[1], b.shape[1], *self.widths), self.seed_row)
        self.columns = losses.positive_first(self.batch_size, views=False, device=device)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Every member's training pairs, ``a [K, B, d_a]`` and ``b [K, B, d_b]``: drawn once per seed."""
        idx = self.indices(step)
        return self.train_a[idx], self.train_b[idx]

    def _encode(self, params: dict[str, Tensor], a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return mlp(a, params, "a", self.layers), mlp(b, params, "b", self.layers)

    def step(self, params: dict[str, Tensor], tau: Tensor, batch: tuple[Tensor, Tensor]) -> StepResult:
        """The loss and its gradients by autograd; the a→b similarities with each partner first, ``[K, B, B]``."""

        def loss_fn(p: dict[str, Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
            u, v = self._encode(p, *batch)
            sims = self.similarities(u, v)
            if self.loss == "clip":
                return losses.clip_loss(u, v, t), sims
            return losses.info_nce(u, v, t, target=torch.arange(u.shape[1], device=u.device)), sims

        return autograd_step(loss_fn, params, tau)

    def _test(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self._encode(params, self.members(self.test_a), self.members(self.test_b))

    def embed(self, params: dict[str, Tensor]) -> Tensor:
        """The test pairs' ``a`` embeddings, ``[K, N_test, D]``."""
        return self._test(params)[0]

    def evaluate(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Recall@1 both ways, alignment, uniformity (and tolerance with labels) on the test pairs; each ``[K]``."""
        u, v = self._test(params)
        out = contrastive.geometry(u, self.test_labels, (u, v))
        out["recall_a2b"] = metrics.recall_at_1(u, v)
        out["recall_b2a"] = metrics.recall_at_1(v, u)
        return out

    @staticmethod
    def member_bytes(experiment: Any) -> int:
        """Parameters and optimizer state, and the larger of the step's activations (about three copies of the
        inputs and the heads' outputs, four of the B × B similarities) and the evaluation's (every pair)."""
        pairs = read(experiment.data.path)
        m, b = experiment.model, experiment.data.batch_size
        width = pairs.a.shape[1] + pairs.b.shape[1] + 2 * (m.hidden + m.dim)
        heads = Heads(pairs.a.shape[1], pairs.b.shape[1], m.hidden, m.dim)
        return contrastive.member_bytes(heads, max(3 * b * width + 4 * b * b, len(pairs.a) * width))


def train_reference(experiment: Any, member: dict[str, Any]) -> reference.Reference:
    """One member trained alone: ``Heads`` and ``torch.optim`` on the member's own pairs, the loss as the
    papers write it (``logits = û v̂ᵀ / τ``; CLIP: the mean of the row and column cross-entropies, InfoNCE:
    the rows only)."""
    task = PairsTask(experiment, [member], torch.device("cpu"))
    model = seeded(member["seed"], lambda: Heads(task.train_a.shape[1], task.train_b.shape[1], *task.widths))
    labels = torch.arange(task.batch_size)

    def loss_fn(net: nn.Module, tau: Tensor, step: int) -> Tensor:
        a, b = task.batch(step)
        logits = F.normalize(net.a(a[0]), dim=-1) @ F.normalize(net.b(b[0]), dim=-1).T / tau
        if task.loss == "info_nce":
            return F.cross_entropy(logits, labels)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return reference.train_reference(experiment, member, model, loss_fn)
