"""Seed 001's toy study: 100 points in the four quadrants, a 2→10→2 tanh encoder, InfoNCE.

Each step draws, per seed, one anchor quadrant, an anchor and a positive from it (two
independent draws, as the seed does) and three distinct negatives from the other 75 points. The
loss is InfoNCE over the cosine similarities ``[cos(a, p), cos(a, n₁), cos(a, n₂), cos(a, n₃)] / τ``
with the positive as the target.

The population step computes the gradient in closed form (derived below, checked against
autograd in the tests): the model is so small that autograd's fixed cost per call would be most
of the step.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tau_lab.losses import compute_dtype
from tau_lab.tasks import reference
from tau_lab.tasks.base import Schema, StepResult, Sweep, TaskBase, autograd_step, member_seeds, stack_modules
from tau_lab.tasks.mlp import seeded

COS_EPS = 1e-8  # F.cosine_similarity's eps
UNIFORMITY_T = 2.0  # metrics.uniformity's t


class Pairs(NamedTuple):
    """The distinct pairs ``i < j`` of ``N`` labelled points, for ``Quadrants.evaluate``: ``flat`` (``[P]``, the
    flat index ``i N + j`` of each pair), ``same`` (the ``i`` and ``j`` of the same-label pairs), and the
    weights ``[P]`` that average over the same-label and the cross-label pairs."""

    flat: Tensor
    same: tuple[Tensor, Tensor]
    same_mean: Tensor
    cross_mean: Tensor

    @classmethod
    def of(cls, labels: Tensor) -> Pairs:
        i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
        same = labels[i] == labels[j]
        same_mean, cross_mean = same.double() / same.sum(), (~same).double() / (~same).sum()  # cast per call
        return cls(i * len(labels) + j, (i[same], j[same]), same_mean, cross_mean)


class Data(Schema):
    points_per_quadrant: int = Field(25, ge=2)
    negatives: int = Field(3, ge=1)
    data_seed: int = 0


class Model(Schema):
    hidden: int = Field(10, ge=1)
    gradients: Literal["closed_form", "autograd"] = Field(
        "closed_form",
        description="the step's gradients: written out (Quadrants.step) or by torch.func over the nn.Module "
        "(vmap of functional_call, as every module task computes them); the same numbers, at another speed",
    )


def make_points(data: Data) -> tuple[Tensor, Tensor]:
    """The seed's points: ``torch.rand(n, 2)`` shifted into quadrants 0..3. Returns ``[4n, 2]``, ``[4n]``."""
    n = data.points_per_quadrant
    g = torch.Generator().manual_seed(data.data_seed)
    points = torch.rand(4 * n, 2, generator=g)
    points[n : 2 * n, 0] -= 1
    points[2 * n : 3 * n, :] -= 1
    points[3 * n :, 1] -= 1
    labels = torch.arange(4).repeat_interleave(n)
    return points, labels


def make_encoder(seed: int, hidden: int) -> nn.Sequential:
    """The seed's encoder, initialised as ``nn.Linear`` does from ``seed``."""
    return seeded(
        seed, lambda: nn.Sequential(nn.Linear(2, hidden, bias=False), nn.Linear(hidden, 2, bias=False), nn.Tanh())
    )


def smallest(values: Tensor, k: int) -> Tensor:
    """``values.argsort(dim=1)[:, :k]``, the indices of each row's k smallest values in ascending order, by
    ``topk`` (3× faster for 3 of 75; on any device). Where the k + 1 smallest values of a row are distinct, that
    order is the one sorted order, so both agree; a row with a tie among them takes argsort's own order, on the
    CPU (a GPU's sort may order ties otherwise)."""
    j = min(k + 1, values.shape[1])
    top, index = values.topk(j, dim=1, largest=False, sorted=True)
    tied = (top[:, 1:] == top[:, :-1]).any(1)
    if bool(tied.any()):
        index[tied] = values[tied].cpu().argsort(dim=1)[:, :j].to(index.device)
    return index[:, :k]


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """``[K, m, k] @ [K, k, n]``. Eager, ``torch.bmm`` (``@`` adds expand and reshape calls per product). Under
    ``torch.compile``, the broadcast product ``a[..., None] * b[:, None]`` summed over ``k``: a GEMM call per
    product of a few elements would be a kernel of its own, and this form fuses into the step's kernels (at K = 5
    on a GPU 21.4 → 14.1 kernels a step; on the CPU compiled blocks 1.1–1.2× faster; docs/benchmarks.md)."""
    if torch.compiler.is_compiling():
        return (a.unsqueeze(-1) * b.unsqueeze(1)).sum(2)
    return torch.bmm(a, b)


DRAW_ROWS = 1 << 16  # steps whose negatives are picked at a time: 20 MB of uniforms for 75 points, whatever the steps


def draw_indices(seed: int, steps: int, data: Data, device: torch.device | None = None) -> Tensor:
    """Point indices of every step, ``[steps, 2 + negatives]`` int32: anchor, positive, negatives. Drawn from a CPU
    generator, the uniforms that pick the negatives ``DRAW_ROWS`` steps at a time (the same numbers as one draw of
    them all: the generator runs on), so that memory is the indices' own, 4 (2 + negatives) bytes a step. With
    ``device``, the indices live there and the negatives are picked there (the same indices: the selection was
    most of a large GPU population's set-up)."""
    n, k = data.points_per_quadrant, data.negatives
    g = torch.Generator().manual_seed(seed)
    quadrant = torch.randint(0, 4, (steps, 1), generator=g)
    anchor = quadrant * n + torch.randint(0, n, (steps, 1), generator=g)
    positive = quadrant * n + torch.randint(0, n, (steps, 1), generator=g)
    index = torch.empty(steps, 2 + k, dtype=torch.int32, device=device)
    index[:, :2] = torch.cat([anchor, positive], dim=1)
    for start in range(0, steps, DRAW_ROWS):
        rows = slice(start, min(start + DRAW_ROWS, steps))
        other = smallest(torch.rand(rows.stop - start, 3 * n, generator=g).to(device), k)  # k distinct of 3n
        index[rows, 2:] = other + n * (other >= quadrant[rows].to(device) * n)  # skip the anchor's quadrant
    return index


class Quadrants(TaskBase):
    """The population: encoder weights stacked as ``w1 [K, hidden, 2]``, ``w2 [K, 2, hidden]``."""

    Data, Model, Sweep = Data, Model, Sweep
    embedding_dim = 2

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None:
        self.data, hidden = experiment.data, experiment.model.hidden
        self.points, self.labels = (t.to(device) for t in make_points(self.data))
        self._pairs = Pairs.of(self.labels)
        seeds, self.seed_row = member_seeds(members, device)
        encoders = [make_encoder(s, hidden) for s in seeds]
        stacked = stack_modules(encoders, {"0.weight": "w1", "1.weight": "w2"})
        self.module = encoders[0].to("meta")  # the definition (gradients = "autograd"); weights come from params
        if experiment.model.gradients == "autograd":
            self.step = self.autograd_step  # type: ignore[method-assign]
        self.params = {k: v.to(device)[self.seed_row].contiguous() for k, v in stacked.items()}
        # [steps + 1, seeds, 2 + negatives], step-major; the last batch measures the final loss
        shape = (experiment.steps + 1, len(seeds), 2 + self.data.negatives)
        self.index = torch.empty(shape, dtype=torch.int32, device=device)
        for i, seed in enumerate(seeds):
            self.index[:, i] = draw_indices(seed, experiment.steps + 1, self.data, device)

    def batch(self, step: int) -> Tensor:
        """The step's points per member, ``[K, 2 + negatives, 2]``."""
        return F.embedding(self.index[step].index_select(0, self.seed_row), self.points)

    def batches(self, start: int, n: int) -> Tensor:
        """The points of steps ``start … start + n − 1``, ``[n, K, 2 + negatives, 2]``: one gather of rows
        (``embedding``: 2.7× faster than indexing at n = 99)."""
        return F.embedding(self.index[start : start + n].index_select(1, self.seed_row), self.points)

    def step(self, params: dict[str, Tensor], tau: Tensor, x: Tensor) -> StepResult:
        """Loss and closed-form gradients for a batch ``x [K, 2 + negatives, 2]``.

        Forward: ``h = x W₁ᵀ``, ``o = h W₂ᵀ``, ``e = tanh(o)``, ``n = e / |e|``,
        ``s_j = n₀·n_{j+1}``, ``L = logsumexp(s/τ) − s₀/τ``.
        Backward, with ``δ = (softmax(s/τ) − onehot₀) / τ = ∂L/∂s``:
        ``∂L/∂n₀ = Σ_j δ_j n_{j+1}``, ``∂L/∂n_{j+1} = δ_j n₀``;
        ``∂L/∂e = (∂L/∂n − n (n·∂L/∂n)) / |e|``; ``∂L/∂o = ∂L/∂e ⊙ (1 − e²)``;
        ``∂L/∂W₂ = (∂L/∂o)ᵀ h``; ``∂L/∂W₁ = (∂L/∂o W₂)ᵀ x``; ``∂L/∂τ = −Σ_j δ_j s_j / τ``.
        """
        # a product over the 2 input or output coordinates is written out as 2 terms: MKL's batched GEMM with an
        # inner size of 2 was the slowest op of a K = 1000 step (docs/benchmarks.md). Not addcmul for x W₁ᵀ: its
        # fused rounding moved float32 members further from the autograd reference
        w1, w2 = params["w1"], params["w2"]
        h = x[..., 0:1] * w1[:, None, :, 0] + x[..., 1:2] * w1[:, None, :, 1]  # x W₁ᵀ: [K, B, hidden]
        e = torch.tanh(bmm(h, w2.transpose(1, 2)))  # [K, B, 2]
        r = e.norm(dim=-1, keepdim=True).clamp_min(COS_EPS)
        n = e / r
        s = bmm(n[:, 1:], n[:, 0:1].transpose(1, 2)).squeeze(-1)  # [K, 1 + negatives]
        logits = s / tau[:, None]
        logp = F.log_softmax(logits, dim=-1)
        loss = -logp[:, 0]
        dlogits = logp.exp()
        dlogits[:, 0] -= 1
        ds = dlogits / tau[:, None]
        dn = torch.cat([bmm(ds.unsqueeze(1), n[:, 1:]), ds.unsqueeze(-1) * n[:, 0:1]], dim=1)
        de = (dn - n * (n * dn).sum(-1, keepdim=True)) / r
        do = de * (1 - e * e)
        dh = torch.addcmul(do[..., 0:1] * w2[:, None, 0], do[..., 1:2], w2[:, None, 1])  # ∂L/∂o W₂: [K, B, hidden]
        grads = {"w2": bmm(do.transpose(1, 2), h), "w1": bmm(dh.transpose(1, 2), x)}
        grad_tau = -(dlogits * s).sum(-1) / tau**2
        return StepResult(loss, grads, grad_tau, s)

    def autograd_step(self, params: dict[str, Tensor], tau: Tensor, x: Tensor) -> StepResult:
        """``step`` the way the engine trains any ``nn.Module`` (``tau_lab.tasks.module``): each member's loss
        written for one member, ``vmap`` of ``functional_call`` over the stacked weights, gradients by
        ``torch.func.grad`` (``autograd_step``). Same arguments and results as ``step``."""

        def member(w1: Tensor, w2: Tensor, x: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
            e = torch.func.functional_call(self.module, {"0.weight": w1, "1.weight": w2}, (x,))  # [B, 2]
            n = e / e.norm(dim=-1, keepdim=True).clamp_min(COS_EPS)
            s = n[1:] @ n[0]  # [1 + negatives]: the positive first
            # −log softmax, as cross-entropy computes it: its gradient softmax − onehot is formed in one place (a
            # logsumexp minus s₀/τ forms it as the difference of two terms of size 1/τ: float64 drifted at τ = 0.001)
            return -F.log_softmax(s / tau, dim=0)[0], s

        def loss_fn(p: dict[str, Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
            return torch.func.vmap(member)(p["w1"], p["w2"], x, t)

        return autograd_step(loss_fn, params, tau)

    def embed(self, params: dict[str, Tensor]) -> Tensor:
        """All points through every member's encoder, ``[K, N, 2]``."""
        return torch.tanh(self.points @ params["w1"].transpose(1, 2) @ params["w2"].transpose(1, 2))

    def evaluate(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """On all points: alignment of same-quadrant pairs, uniformity, tolerance (mean cosine of
        same-quadrant pairs) and the mean cosine of cross-quadrant pairs. Each ``[K]``.

        The same values as ``metrics.alignment``, ``uniformity`` and ``tolerance`` over the distinct pairs, from
        one cosine matrix ``c = n nᵀ`` of the unit rows ``n`` instead of a gather of each pair's rows per
        metric (the gathers were most of a K = 1000 run): on unit rows ``|n_i − n_j|² = 2 − 2 c_ij``, so
        uniformity is ``log mean_{i<j} exp(−t (2 − 2 c_ij))`` (t = 2; the exponent lies in [−8, 0]: no
        log-sum-exp shift needed). Alignment keeps its differences ``|n_i − n_j|²``: ``2 − 2c`` cancels where a quadrant
        collapses, and alignment then is small.
        """
        f = self.embed(params)
        n = F.normalize(f.to(compute_dtype(f)), dim=-1)
        k = len(n)
        cos = torch.bmm(n, n.transpose(1, 2)).reshape(k, -1).index_select(1, self._pairs.flat)  # [K, pairs]
        i, j = self._pairs.same
        return {
            "alignment": (n.index_select(1, i) - n.index_select(1, j)).pow(2).sum(-1).mean(-1),  # α = 2, unit rows
            "uniformity": cos.mul(2 * UNIFORMITY_T).sub_(2 * UNIFORMITY_T).exp_().mean(-1).log_(),
            "tolerance": cos @ self._pairs.same_mean.to(cos.dtype),
            "cross_similarity": cos @ self._pairs.cross_mean.to(cos.dtype),
        }

    @staticmethod
    def member_bytes(experiment: Any) -> int:
        """Memory of one member: float32 weights, gradients and two optimizer states (``4 · 4 hidden``), a block's
        stacked batches (``block_steps × (2 + negatives) × 2``), the evaluation's cosine matrix and pairs (``2 N²``
        for ``N`` points), and the int32 index stream of its seed (``(steps + 1) × (2 + negatives)``, at most one
        seed per member)."""
        data, batch = experiment.data, 2 + experiment.data.negatives
        points = 4 * data.points_per_quadrant
        floats = 4 * 4 * experiment.model.hidden + experiment.block_steps * batch * 2 + 2 * points**2
        return 4 * floats + 4 * (experiment.steps + 1) * batch


def train_reference(experiment: Any, member: dict[str, Any]) -> reference.Reference:
    """One member trained alone, as the study's original script writes it: the encoder as an ``nn.Module``,
    ``F.cosine_similarity`` and ``nn.CrossEntropyLoss``, ``torch.optim``, one Python step at a time, on the
    population's stream of points. The baseline of ``make bench``."""
    samples, _ = make_points(experiment.data)
    encoder = make_encoder(member["seed"], experiment.model.hidden)
    index = draw_indices(member["seed"], experiment.steps + 1, experiment.data)
    cross_entropy = nn.CrossEntropyLoss()

    def loss_fn(net: nn.Module, tau: Tensor, step: int) -> Tensor:
        anchor, positive, negatives = samples[index[step, 0:1]], samples[index[step, 1:2]], samples[index[step, 2:]]
        anchor_feature = net(anchor)
        positive_sim = F.cosine_similarity(anchor_feature, net(positive))
        negative_sim = F.cosine_similarity(anchor_feature, net(negatives))
        sims = torch.cat([positive_sim, negative_sim]) / tau
        return cross_entropy(sims.unsqueeze(0), torch.zeros(1, dtype=torch.long))

    return reference.train_reference(experiment, member, encoder, loss_fn)
