"""What the contrastive tasks (``simclr``, ``clip``, ``pairs``) share.

- ``Sweep``: τ, its mode and seeds, plus the temperature's own learning rate and weight decay per member,
  and the batch size per population;
- ``clamp_batch_size``: a batch larger than the training set is cut to it, with one warning line;
- ``population_batch_size``: the batch size of a population's rows;
- ``DigitsData``: the ``[data]`` table the digits tasks share;
- ``ContrastiveTask``: the base of the three: per-seed draws of the step's batch, the digits split, the
  similarity rows with the positive first, the shared inputs of evaluation;
- ``geometry``: alignment, uniformity and tolerance of embeddings, in member chunks that fit memory;
- ``false_negative_mass``: the softmax mass on same-class negatives (a diagnostic of false negatives);
- ``member_bytes``: the memory estimate behind the engine's chunking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from tau_lab import distributed, losses, metrics
from tau_lab.data.digits import load_digits
from tau_lab.tasks.base import Schema, TaskBase, member_seeds, warn
from tau_lab.tasks.base import Sweep as BaseSweep

PAIR_METRIC_BYTES = 2**28  # memory for the [members, pairs, D] tensors of uniformity and tolerance


class Sweep(BaseSweep):
    """The grid of a contrastive task.

    ``tau_lr`` and ``tau_weight_decay``, when given, are axes of the grid: the learning rate and weight decay
    of a learnable member's ``logit_scale``, in place of ``optimizer.tau_lr`` / ``optimizer.tau_weight_decay``.
    Fixed and scheduled members have no ``logit_scale`` to train and ignore them.

    ``batch_size``, when given, is an axis too, in place of ``data.batch_size``; the engine trains the members
    of each size as a population of their own (``engine.chunks``), since every member of a population takes
    the same step shapes. Members of one seed start from the same weights whatever their batch size, and a
    seed's batch of B is the first B of its batch of B' > B (``draw_batch``): the sizes are paired. A size
    larger than the training set is clamped to it, as ``data.batch_size`` is: ``config.validate`` hands the
    validated ``[data]`` table as the context, and its ``batch_limit`` says how many examples there are.
    """

    tau_lr: list[Annotated[float, Field(gt=0)]] | None = Field(
        None, min_length=1, description="learning rate of a learnable τ's logit_scale, per member"
    )
    tau_weight_decay: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, min_length=1, description="weight decay of a learnable τ's logit_scale, per member"
    )
    batch_size: list[Annotated[int, Field(ge=2)]] | None = Field(
        None, min_length=1, description="examples per step; each size trains as a population of its own"
    )

    @field_validator("batch_size")
    @classmethod
    def _fits(cls, values: list[int] | None, info: ValidationInfo) -> list[int] | None:
        limit = getattr((info.context or {}).get("data"), "batch_limit", None)
        if values is None or limit is None or limit() is None:
            return values
        available, what = limit()
        return [clamp_batch_size(b, available, what, "sweep.batch_size") for b in values]


class DigitsData(Schema):
    """``[data]`` of a task on the digits: the split, and a batch that fits the training images."""

    test_fraction: float = Field(0.25, gt=0, lt=1, description="held-out share of every class")
    split_seed: int = Field(0, description="seed of the train/test split and of the test set's views or captions")
    batch_size: int = Field(128, ge=2, description="images per step")

    @model_validator(mode="after")
    def _fits(self) -> DigitsData:
        self.batch_size = clamp_batch_size(self.batch_size, *self.batch_limit())
        return self

    def batch_limit(self) -> tuple[int, str]:
        """The most examples a batch can draw, and what they are (a ``Sweep.batch_size`` is clamped to it too)."""
        return digits_train_size(self.test_fraction, self.split_seed), "training images"


def clamp_batch_size(batch_size: int, available: int, what: str, key: str = "data.batch_size") -> int:
    """``batch_size``, or ``available`` with one warning line when the batch is larger: a batch draws without
    replacement. Schemas call it, so that the recorded config holds the size used."""
    if batch_size <= available:
        return batch_size
    warn(f"{key} = {batch_size} is larger than the {available} {what}: using batch_size = {available}")
    return available


def population_batch_size(members: list[dict[str, Any]], default: int) -> int:
    """The batch size of a population: its rows' ``batch_size`` (a sweep axis), else ``default``
    (``data.batch_size``). ``engine.chunks`` never puts two sizes in one population."""
    sizes = {m.get("batch_size", default) for m in members}
    if len(sizes) != 1:
        raise ValueError(f"one population, batch sizes {sorted(sizes)}: engine.chunks trains each size apart")
    return sizes.pop()


def digits_train_size(test_fraction: float, split_seed: int) -> int:
    """Training images of the digits split (``load_digits``)."""
    return len(load_digits(test_fraction, split_seed).train_y)


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


class ContrastiveTask(TaskBase):
    """The base of the contrastive tasks.

    ``batch_size`` is the population's (``population_batch_size``); subclasses set ``n_train`` (and, for
    ``similarities``, ``columns``: ``losses.positive_first`` of their batch, then ``split_rows()``) before they
    draw.

    Under torchrun (``tau_lab.distributed``) ``batch_size`` is the global batch: every process draws all of it
    and its ``step`` embeds the process's ``rows``, gathers the other processes' embeddings and computes the
    loss of its rows against the whole batch; ``evaluate`` and ``diagnostics`` read the whole batch on every
    process (the same numbers everywhere).
    """

    n_train: int
    batch_size: int
    columns: Tensor  # [N, N] or [N, N - 1]: the rows of a similarity matrix reordered positive first
    rows: slice  # this process's rows of the global batch (all of it in one process)
    local_columns: Tensor  # the rows of ``columns`` of this process's anchors

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None:
        self.data, self.device = experiment.data, device
        self.seeds, self.seed_row = member_seeds(members, device)
        self.batch_size = population_batch_size(members, self.data.batch_size)

    def load_digits(self) -> None:
        """The digits split of ``data.test_fraction`` and ``data.split_seed``, images in the default dtype:
        ``train_x [N, 64]``, ``train_y [N]``, ``test_x``, ``test_y``."""
        digits = load_digits(self.data.test_fraction, self.data.split_seed, self.device)
        dtype = torch.get_default_dtype()
        self.train_x, self.test_x = digits.train_x.to(dtype), digits.test_x.to(dtype)
        self.train_y, self.test_y = digits.train_y, digits.test_y
        self.n_train = len(self.train_x)

    def draw(self, seed: int, step: int) -> Tensor:
        """Seed ``seed``'s batch at ``step``: ``[B]`` distinct training indices."""
        return draw_batch(self.n_train, self.batch_size, step_generator(seed, step, self.device))

    def indices(self, step: int) -> Tensor:
        """Every member's training indices at ``step``, ``[K, B]``: drawn once per seed, shared by its members."""
        return torch.stack([self.draw(s, step) for s in self.seeds])[self.seed_row]

    def split_rows(self) -> None:
        """This process's ``rows`` of the global batch (``distributed.local_rows``: one line when the batch
        does not split) and their ``local_columns``."""
        self.rows = distributed.local_rows(self.batch_size)
        self.local_columns = losses.rows_columns(self.columns, self.rows)

    def positive_first(self, sims: Tensor, columns: Tensor | None = None) -> Tensor:
        """``[K, n, N]`` similarities → each row ``[s_positive, s_negatives…]`` (``columns``, by default those
        of the whole batch, ``n = N``)."""
        columns = self.columns if columns is None else columns
        return sims.gather(2, columns.expand(len(sims), -1, -1))

    def similarities(self, u: Tensor, v: Tensor, columns: Tensor | None = None) -> Tensor:
        """Cosine similarities of ``u [K, n, D]`` to ``v [K, B, D]`` (u_i's positive is v's row of its global
        index), positive first (``columns``: of the whole batch, or ``local_columns`` for this process's rows),
        ``[K, n, B]``, out of the graph: what the hardness metrics read."""
        un, vn = F.normalize(u.detach(), dim=-1), F.normalize(v.detach(), dim=-1)
        return self.positive_first(un @ vn.transpose(1, 2), columns)

    def members(self, x: Tensor) -> Tensor:
        """Shared inputs ``[N, F]`` as a batch for every member, ``[K, N, F]`` (no copy)."""
        return x.expand(len(self.seed_row), -1, -1)


def _by_member(fn: Callable[..., Tensor], x: Tensor, *args: Tensor) -> Tensor:
    """``fn(x, *args)`` over chunks of members, so that the ``[members, N(N-1)/2, D]`` float32 tensors it makes
    (about three: two gathers and their difference) fit in ``PAIR_METRIC_BYTES``."""
    n, d = x.shape[-2], x.shape[-1]
    chunk = max(1, PAIR_METRIC_BYTES // (4 * 3 * d * n * (n - 1) // 2))
    return torch.cat([fn(part, *args) for part in x.split(chunk)])


def geometry(
    z: Tensor, labels: Tensor | None, positives: tuple[Tensor, Tensor] | None, suffix: str = ""
) -> dict[str, Tensor]:
    """Uniformity and tolerance of ``z``, alignment of the positive pairs; each ``[K]``, named
    ``uniformity{suffix}``, ``tolerance{suffix}``, ``alignment{suffix}``.

    Tasks with a projection head measure both spaces: ``suffix=".z"`` on the projection the loss reads,
    ``suffix=".h"`` on the encoder output the probes read; tasks without one use the plain names.

    Args:
        z: ``[K, N, D]`` embeddings (the metrics normalise them).
        labels: ``[N]``, or ``None`` (no tolerance).
        positives: two ``[K, M, D]``, row i of one the positive of row i of the other, or ``None`` (no
            alignment: the two sides live in spaces that are not compared, as CLIP's two towers before
            their projections).
        suffix: appended to every name.
    """
    out = {f"uniformity{suffix}": _by_member(metrics.uniformity, z)}
    if positives is not None:
        out[f"alignment{suffix}"] = metrics.alignment(*positives)
    if labels is not None:
        out[f"tolerance{suffix}"] = _by_member(metrics.tolerance, z, labels)
    return out


def false_negative_mass(sims: Tensor, same: Tensor, tau: Tensor) -> Tensor:
    """The softmax mass each anchor puts on its same-class negatives, averaged over anchors: ``[K]``.

    ``FNM = mean_i Σ_{j ≥ 1, y_j = y_i} exp(s_ij/τ) / Σ_{j ≥ 0} exp(s_ij/τ)``: the denominator runs over
    every candidate of the row, the positive (column 0) included, as in the loss's softmax; the numerator
    over the negatives of the anchor's class only (column 0 is never counted, whatever ``same`` says).

    Args:
        sims: ``[K, N, C]`` similarities, each row positive first (``ContrastiveTask.positive_first``).
        same: ``[K, N, C]`` bool, candidate j has anchor i's class.
        tau: ``[K]``.
    """
    weights = torch.softmax(sims / tau[:, None, None], dim=-1)
    negatives = same.clone()
    negatives[..., 0] = False
    return (weights * negatives).sum(-1).mean(-1)


def member_bytes(model: nn.Module, activations: int) -> int:
    """Float32 bytes of one member: the parameters of ``model`` with their gradients and AdamW's two
    moments, and ``activations`` numbers alive at the peak of a step or an evaluation."""
    return 4 * (4 * sum(p.numel() for p in model.parameters()) + activations)
