"""Knowledge distillation on the digits: a population of small MLP students, one cached teacher.

Member k is a student ``s = W₂ relu(W₁ x + b₁) + b₂`` (``[B, 64] → [B, 10]``) trained on

    L_k = α_k · c_k · KL_batchmean(softmax(t / T_k) ‖ softmax(s / T_k)) + (1 − α_k) · CE_labelled(s, y)

with ``t`` the teacher's logits, ``c_k = T_k²`` when ``t2_scaling`` else 1, and the distillation
temperature T IS the member's τ (``sweep.tau``, ``tau_mode``; ``tau_init`` is T₀). α weights the
distillation term, as in Hinton et al. The soft term (``tau_lab.losses.kd_loss``) sees every image of
the batch, the transfer set of Hinton et al.; the hard term only the labelled ones: per seed, a
stratified ``labeled_fraction`` of each class (at least one image), averaged over the labelled
rows of the batch. Accuracy, ECE, agreement and KL are measured at T = 1, as at inference.

Three stratified splits (``tau_lab.teacher.load_split``): test (``data.test_fraction`` of the
digits), validation (``data.validation_fraction`` of the rest) and train. Students and teacher
train on the train split only; ``val_accuracy`` is measured on the validation split, so that T and α
can be chosen there (``tau_lab.analysis.distill``) and ``accuracy``, on the test split, reported
for the chosen setting without having picked it.

Members that share a seed share the student's initial weights, the labelled subset and the order
of batches, so a sweep over T, α and t2_scaling is a paired comparison. The teacher (see
``tau_lab.teacher``) runs once per step on each seed's batch ``[S, B, 64]``, never per member.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from tau_lab import metrics
from tau_lab.checks import check_unit_interval
from tau_lab.losses import KDLoss, kd_loss, scaled_cross_entropy
from tau_lab.tasks import base, reference
from tau_lab.tasks.base import Schema, StepResult, TaskBase, autograd_step, member_seeds
from tau_lab.tasks.mlp import init_population, mlp, mlp_module, seeded
from tau_lab.teacher import CLASSES, PIXELS, TeacherSpec, load_split, load_teacher


class Data(Schema):
    test_fraction: float = Field(0.25, gt=0, lt=1, description="stratified test split of the 1797 digits")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="stratified share of the training images held out to choose T and α on"
    )
    split_seed: int = Field(0, description="seed of the train/validation/test split (the teacher's too)")
    batch_size: int = Field(128, gt=0)


class Model(Schema):
    hidden: int = Field(16, ge=1, description="width of the student's hidden layer")
    teacher: TeacherSpec = TeacherSpec()


class Sweep(base.Sweep):
    alpha: list[float] = Field(
        [0.9], min_length=1, description="α weights the distillation term: loss = α·T²·KL + (1 − α)·CE (Hinton et al.)"
    )
    t2_scaling: list[bool] = Field([True], min_length=1, description="multiply the soft term by T² (Hinton et al.)")
    labeled_fraction: list[float] = Field(
        [1.0], min_length=1, description="share of each class the hard term sees; the soft term sees all images"
    )

    @field_validator("alpha")
    @classmethod
    def _unit(cls, values: list[float]) -> list[float]:
        check_unit_interval("alpha", values)
        return values

    @field_validator("labeled_fraction")
    @classmethod
    def _fraction(cls, values: list[float]) -> list[float]:
        for v in values:
            if not 0.0 < v <= 1.0:
                raise ValueError(f"labeled_fraction = {v:g} is not allowed: it must lie in (0, 1]")
        return values


# ----------------------------------------------------------------------------- data and students


def seed_data(seed: int, train_y: Tensor, steps: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """What a seed draws: each image's rank inside its class ``[N]`` (its labelled subset is the
    lowest ranks) and the batches of every step ``[steps + 1, B]``, walking through permutations."""
    g = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(train_y), generator=g)
    rank = torch.empty_like(train_y)
    for c in range(CLASSES):
        in_class = shuffled[train_y[shuffled] == c]
        rank[in_class] = torch.arange(len(in_class))
    epochs = math.ceil((steps + 1) * batch_size / len(train_y))
    order = torch.cat([torch.randperm(len(train_y), generator=g) for _ in range(epochs)])
    return rank, order[: (steps + 1) * batch_size].reshape(steps + 1, batch_size)


def labeled_mask(rank: Tensor, train_y: Tensor, fraction: Tensor) -> Tensor:
    """``rank [..., N]`` and ``fraction [...]`` → ``[..., N]`` bools: the lowest ``max(1, round(f n_c))``
    ranks of each class c. Subsets of one seed are nested: a smaller fraction labels fewer of the same images."""
    per_class = torch.bincount(train_y, minlength=CLASSES)  # [C]
    quota = (fraction[..., None] * per_class).round().clamp_min(1)  # [..., C]
    return rank < quota.gather(-1, train_y.expand(*quota.shape[:-1], -1))


def make_student(seed: int, hidden: int) -> nn.Sequential:
    """The student as one module, ``64 → hidden → 10`` with a ReLU, initialised from ``seed``."""
    return seeded(seed, lambda: mlp_module([PIXELS, hidden, CLASSES]))


def student_logits(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Batched students: ``x [K, B, 64]`` → logits ``[K, B, 10]``."""
    return mlp(x, params, "student", layers=2)


class Batch(NamedTuple):
    """One step's inputs, per member."""

    x: Tensor  # [K, B, 64]
    teacher: Tensor  # [K, B, 10] teacher logits
    y: Tensor  # [K, B] labels
    labeled: Tensor  # [K, B] 1.0 where the hard term may use the label


def kd_parts(logits: Tensor, batch: Batch, T: Tensor, alpha: Tensor, t2_scaling: Tensor) -> KDLoss:
    """The loss and its two parts, each ``[K]``: ``soft`` from ``kd_loss`` (all rows), ``hard`` the
    cross-entropy at T = 1 averaged over the labelled rows (0 when a batch has none)."""
    soft = kd_loss(logits, batch.teacher, batch.y, T, alpha, t2_scaling).soft
    # kd_loss's own hard term averages over every row; the labelled subset needs its own average
    ce = scaled_cross_entropy(logits, batch.y, 1.0)  # [K, B]
    hard = (ce * batch.labeled).sum(-1) / batch.labeled.sum(-1).clamp_min(1)
    return KDLoss(alpha * soft + (1 - alpha) * hard, soft, hard)


# ----------------------------------------------------------------------------- the population


class Distill(TaskBase):
    """The population: students stacked as ``student.0.weight [K, h, 64]``, ``student.0.bias [K, h]``,
    ``student.2.weight [K, 10, h]``, ``student.2.bias [K, 10]``."""

    Data, Model, Sweep = Data, Model, Sweep

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None:
        data, model = experiment.data, experiment.model
        split = (data.test_fraction, data.split_seed, data.validation_fraction)
        digits = load_split(*split)
        teacher = load_teacher(model.teacher, *split)
        dtype = torch.get_default_dtype()  # float64 in the equivalence tests
        self.teacher = teacher.model.to(device, dtype)
        self.teacher_accuracy = teacher.test_accuracy
        seeds, self.seed_row = member_seeds(members, device)
        self.params = init_population(
            seeds, lambda: nn.ModuleDict({"student": mlp_module([PIXELS, model.hidden, CLASSES])}), self.seed_row
        )

        self.train_x, self.train_y = digits.train_x.to(device, dtype), digits.train_y.to(device)
        self.test_x, self.test_y = digits.test_x.to(device, dtype), digits.test_y.to(device)
        self.val_x, self.val_y = digits.val_x.to(device, dtype), digits.val_y.to(device)
        with torch.no_grad():
            self.test_teacher = self.teacher(self.test_x)  # [N_test, 10]
        drawn = [seed_data(s, digits.train_y, experiment.steps, data.batch_size) for s in seeds]
        rank = torch.stack([r for r, _ in drawn]).to(device)  # [S, N]
        self.index = torch.stack([i for _, i in drawn], 1).to(device)  # [steps + 1, S, B], step-major

        def column(key: str, dtype: torch.dtype) -> Tensor:
            return torch.tensor([m[key] for m in members], dtype=dtype, device=device)

        self.alpha = column("alpha", dtype)
        self.t2_scaling = column("t2_scaling", torch.bool)
        self.labeled = labeled_mask(rank[self.seed_row], self.train_y, column("labeled_fraction", torch.float32))

    def batch(self, step: int) -> Batch:
        index = self.index[step]  # [S, B]
        x = self.train_x[index]
        with torch.no_grad():
            teacher = self.teacher(x)  # once per seed's batch, shared by that seed's members
        rows = self.seed_row
        return Batch(x[rows], teacher[rows], self.train_y[index][rows], self.labeled.gather(1, index[rows]).float())

    def step(self, params: dict[str, Tensor], tau: Tensor, batch: Batch) -> StepResult:
        """Loss ``[K]``, gradients by autograd, and ``∂L/∂T`` (for learnable and ctkd members)."""

        def loss(p: dict[str, Tensor], T: Tensor) -> tuple[Tensor, None]:
            return kd_parts(student_logits(p, batch.x), batch, T, self.alpha, self.t2_scaling).total, None

        return autograd_step(loss, params, tau)

    def diagnostics(self, params: dict[str, Tensor], tau: Tensor, step: int) -> dict[str, Tensor]:
        """Both parts of the loss and the gradient norm of each, with respect to the student's logits
        (``[K, B, 10]``) and to its parameters; the total's with respect to the logits (the engine's
        ``grad_norm`` is the total's with respect to the parameters). The parts are unweighted by α.

        At step 0 the gradient norms are also recorded as ``*_init``, so the members table, which
        holds the last value of each metric, keeps the gradient scale at initialisation.
        """
        batch = self.batch(step)
        leaves = {n: params[n].detach().requires_grad_() for n in self.params}
        logits = student_logits(leaves, batch.x)
        parts = kd_parts(logits, batch, tau, self.alpha, self.t2_scaling)
        out = {"loss_soft": parts.soft.detach(), "loss_hard": parts.hard.detach()}
        by_logits = {}
        for name, part in [("soft", parts.soft), ("hard", parts.hard)]:
            d_logits, *d_params = torch.autograd.grad(part.sum(), [logits, *leaves.values()], retain_graph=True)
            by_logits[name] = d_logits
            out[f"grad_{name}_logits"] = metrics.grad_norm([d_logits])
            out[f"grad_{name}_params"] = metrics.grad_norm(d_params)
        a = self.alpha[:, None, None]
        out["grad_total_logits"] = metrics.grad_norm([a * by_logits["soft"] + (1 - a) * by_logits["hard"]])
        if step == 0:
            out |= {f"{n}_init": v for n, v in out.items() if n.startswith("grad_")}
        return out

    def evaluate(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """At T = 1. On the test set: accuracy, ECE, agreement with the teacher's arg-max,
        ``KL(teacher ‖ student)`` (batchmean), and the teacher's own accuracy; on the validation set:
        ``val_accuracy``, the one to choose T and α by. Each ``[K]``."""
        k = len(self.seed_row)
        logits = student_logits(params, self.test_x.expand(k, -1, -1))  # [K, N_test, 10]
        val_logits = student_logits(params, self.val_x.expand(k, -1, -1))  # [K, N_val, 10]
        return {
            "val_accuracy": metrics.accuracy(val_logits, self.val_y),
            "accuracy": metrics.accuracy(logits, self.test_y),
            "ece": metrics.expected_calibration_error(logits, self.test_y),
            "agreement": (logits.argmax(-1) == self.test_teacher.argmax(-1)).float().mean(-1),
            "kl_teacher": kd_loss(logits, self.test_teacher, self.test_y, 1.0, 1.0).soft,
            "teacher_accuracy": torch.full((k,), self.teacher_accuracy, device=logits.device),
        }

    @staticmethod
    def member_bytes(experiment: Any) -> int:
        """One member's float32 memory: weights with gradients and two AdamW states, and the
        step's activations (inputs, hidden layer, logits and their softmax intermediates)."""
        h, b = experiment.model.hidden, experiment.data.batch_size
        weights = (PIXELS + 1) * h + (h + 1) * CLASSES
        return 4 * (4 * weights + b * (2 * PIXELS + 4 * h + 12 * CLASSES))


# ----------------------------------------------------------------------------- the user's loop


def train_reference(experiment: Any, member: dict[str, Any]) -> reference.Reference:
    """One member trained alone, as a user writes it: ``nn.Module`` student, ``torch.optim``, the teacher
    run on every batch, the loss as a plain script writes it (``F.kl_div`` · T², ``F.cross_entropy``). The baseline
    of ``benchmarks/bench_distill.py``."""
    data = experiment.data
    split = (data.test_fraction, data.split_seed, data.validation_fraction)
    digits = load_split(*split)  # the population's train split: the validation images never train
    dtype = torch.get_default_dtype()
    teacher = load_teacher(experiment.model.teacher, *split).model.to(dtype)
    student = make_student(member["seed"], experiment.model.hidden)
    rank, index = seed_data(member["seed"], digits.train_y, experiment.steps, data.batch_size)
    labeled = labeled_mask(rank, digits.train_y, torch.tensor(member["labeled_fraction"], dtype=torch.float32))
    alpha = member["alpha"]

    def loss_fn(net: nn.Module, T: Tensor, step: int) -> Tensor:
        x, y, m = digits.train_x[index[step]].to(dtype), digits.train_y[index[step]], labeled[index[step]]
        with torch.no_grad():
            teacher_logits = teacher(x)
        logits = net(x)
        soft = F.kl_div(F.log_softmax(logits / T, dim=1), F.softmax(teacher_logits / T, dim=1), reduction="batchmean")
        if member["t2_scaling"]:
            soft = soft * T * T
        hard = F.cross_entropy(logits[m], y[m]) if m.any() else logits.sum() * 0
        return alpha * soft + (1 - alpha) * hard

    return reference.train_reference(experiment, member, student, loss_fn)
