"""SimCLR on scikit-learn's handwritten digits: two augmented views, an MLP encoder and head, NT-Xent.

Per step, each seed draws B training images without replacement and augments each twice
(``tau_lab.data.augment``); every member of the seed sees the same views. The encoder gives the
representation ``h = ReLU(f(x))`` that evaluation probes, the projection head ``z = g(h)`` (Linear, ReLU,
Linear, as SimCLR's) the embedding of the loss:

    L = NT-Xent(z⁽¹⁾, z⁽²⁾; τ),  z⁽ᵛ⁾ = g(ReLU(f(view_v(x))))  [K, B, D]

Evaluation on the held-out split of ``load_digits`` (labels are used here only):

- ``alignment.z``: ``E ‖ẑ(v₁) − ẑ(v₂)‖²`` over two fixed augmentations of every test image;
- ``uniformity.z`` and ``tolerance.z`` of the test images' ``ẑ`` (Wang & Isola; Wang & Liu), the space of
  the loss;
- ``alignment.h``, ``uniformity.h`` and ``tolerance.h``: the same on the encoder output ``h``, the space the
  k-NN and the probe read;
- ``knn_accuracy``: cosine k-NN of test ``h`` against the train ``h`` (k = 20);
- ``probe_accuracy``: a logistic regression trained on the frozen train ``h`` (``metrics.linear_probe``).

At logging steps, ``false_negative_mass`` (``contrastive.false_negative_mass``): the softmax mass each view
puts on the views of its batch that show its digit, other than its twin.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tau_lab import distributed, losses, metrics
from tau_lab.data.augment import Augment, augment
from tau_lab.tasks import contrastive, reference
from tau_lab.tasks.base import Schema, StepResult, autograd_step
from tau_lab.tasks.mlp import init_population, mlp, mlp_module, seeded

PIXELS = 64


class Data(contrastive.DigitsData):
    batch_size: int = Field(128, ge=2, description="images per step (2B views)")
    augment: Augment = Augment()
    knn_k: int = Field(20, ge=1, description="neighbours of the k-NN classifier")
    probe_steps: int = Field(100, ge=1, description="full-batch Adam steps of the linear probe")
    probe_lr: float = Field(0.05, gt=0, description="learning rate of the linear probe")


class Model(Schema):
    hidden: int = Field(128, ge=1, description="width of the encoder's hidden layer")
    features: int = Field(64, ge=1, description="width of the representation h (and of the head's hidden layer)")
    projection: int = Field(32, ge=1, description="width of the embedding z of the loss")


class Network(nn.Module):
    """One member as a module: encoder ``f`` (64 → hidden → features) and head ``g`` (features → features → D)."""

    def __init__(self, hidden: int, features: int, projection: int) -> None:
        super().__init__()
        self.encoder = mlp_module([PIXELS, hidden, features])
        self.head = mlp_module([features, features, projection])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.encoder(x)))


def represent(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``h = ReLU(f(x))``: ``x [K, N, 64]`` → ``[K, N, features]``."""
    return F.relu(mlp(x, params, "encoder", 2))


def project(params: dict[str, Tensor], h: Tensor) -> Tensor:
    """``z = g(h)``: ``[K, N, features]`` → ``[K, N, projection]``."""
    return mlp(h, params, "head", 2)


class SimCLR(contrastive.ContrastiveTask):
    """The population: ``Network`` parameters stacked over members, ``{name: [K, ...]}``."""

    Data, Model, Sweep = Data, Model, contrastive.Sweep

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None:
        super().__init__(experiment, members, device)
        self.params = init_population(self.seeds, lambda: Network(**experiment.model.model_dump()), self.seed_row)
        self.load_digits()
        g = torch.Generator(device).manual_seed(self.data.split_seed)
        self.test_views = augment(self.test_x.expand(2, -1, -1), g, self.data.augment)  # [2, N_test, 64]
        self.columns = losses.positive_first(2 * self.batch_size, views=True, device=device)
        self.split_rows()

    def views(self, seed: int, step: int) -> Tensor:
        """Seed ``seed``'s two views of its batch at ``step``: ``[2, B, 64]`` (the augmentations continue the
        stream of the draw)."""
        g = contrastive.step_generator(seed, step, self.device)
        x = self.train_x[contrastive.draw_batch(self.n_train, self.batch_size, g)]
        return augment(x.expand(2, -1, -1), g, self.data.augment)

    def batch(self, step: int) -> Tensor:
        """Every member's views, ``[K, 2, B, 64]``: drawn once per seed, shared by the seed's members."""
        return torch.stack([self.views(s, step) for s in self.seeds])[self.seed_row]

    def step(self, params: dict[str, Tensor], tau: Tensor, views: Tensor) -> StepResult:
        """NT-Xent of the two views' embeddings and its gradients by autograd.

        With ``ẑ = normalize([z⁽¹⁾; z⁽²⁾])`` and ``s_ij = ẑ_i·ẑ_j``, each view's row is reordered to
        ``[s_twin, s_negatives…]`` ``[K, 2B, 2B − 1]`` (self excluded), and the loss is the mean over the 2B
        views of ``−log softmax(s/τ)₀``: ``losses.nt_xent`` exactly, written on the reordered rows because
        they are also the hardness similarities of ``StepResult`` and because leaving self out, rather than
        masking it with −∞, keeps ``∂L/∂τ`` finite (``−∞/τ`` has the derivative ``0 · ∞``).

        Under torchrun the anchors are this process's ``b`` images' two views, ``[K, 2b, 2B − 1]``, against
        the gathered views of the whole batch (``distributed.gather``), and the loss and gradients are
        averaged over processes (``losses.nt_xent_rows``'s form); in one process the rows are the batch.
        """
        k, _, b, _ = views.shape
        local = views[:, :, self.rows]  # [K, 2, b, 64]
        x = local.reshape(k, 2 * local.shape[2], PIXELS)

        def loss_fn(p: dict[str, Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
            z = F.normalize(project(p, represent(p, x)), dim=-1)  # [K, 2b, D]: view 1 rows, then view 2 rows
            z_all = distributed.gather(z.reshape(k, 2, -1, z.shape[-1]), 2).reshape(k, 2 * b, -1)  # [K, 2B, D]
            sims = self.positive_first(z @ z_all.transpose(1, 2), self.local_columns)
            return losses.scaled_cross_entropy(sims, 0, t).mean(-1), sims

        return distributed.average(autograd_step(loss_fn, params, tau))

    def embed(self, params: dict[str, Tensor]) -> Tensor:
        """The test images' embeddings ``z``, ``[K, N_test, D]``."""
        return project(params, represent(params, self.members(self.test_x)))

    def evaluate(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Alignment, uniformity and tolerance of both ``z`` (``.z``) and ``h`` (``.h``), k-NN and linear-probe
        accuracy on the test split; each ``[K]``."""
        h_train = represent(params, self.members(self.train_x))
        h_test = represent(params, self.members(self.test_x))
        views = self.members(self.test_views.reshape(-1, PIXELS))  # [K, 2 N_test, 64]
        h_views = represent(params, views)
        out = contrastive.geometry(project(params, h_test), self.test_y, project(params, h_views).chunk(2, 1), ".z")
        out |= contrastive.geometry(h_test, self.test_y, h_views.chunk(2, dim=1), ".h")
        out["knn_accuracy"] = metrics.knn_accuracy(h_test, h_train, self.train_y, self.test_y, self.data.knn_k)
        out["probe_accuracy"] = metrics.linear_probe(
            h_train, self.train_y, h_test, self.test_y, self.data.probe_steps, self.data.probe_lr
        )
        return out

    def diagnostics(self, params: dict[str, Tensor], tau: Tensor, step: int) -> dict[str, Tensor]:
        """``false_negative_mass`` ``[K]`` of the step's batch at ``params``: over the 2B views, the softmax
        weight (of ``s/τ`` over the twin and the 2B − 2 negatives) on the negatives showing the view's digit."""
        k, b = len(tau), self.batch_size
        z = F.normalize(project(params, represent(params, self.batch(step).reshape(k, 2 * b, PIXELS))), dim=-1)
        digits = self.train_y[self.indices(step)].repeat(1, 2)  # [K, 2B]: the views' digits, as the rows of z
        same = self.positive_first(digits[:, :, None] == digits[:, None, :])
        mass = contrastive.false_negative_mass(self.positive_first(z @ z.transpose(1, 2)), same, tau)
        return {"false_negative_mass": mass}

    @staticmethod
    def member_bytes(experiment: Any) -> int:
        """Parameters and optimizer state, and the larger of the step's activations (about three copies of
        the layers' outputs for 2B views and four of the 2B × 2B similarities) and the evaluation's (the
        layers' outputs for all 1797 digits and the k-NN similarities of test × train, under 1797² / 4)."""
        m, b = experiment.model, experiment.data.batch_size
        step = 3 * 2 * b * (m.hidden + 2 * m.features + m.projection) + 4 * (2 * b) ** 2
        evaluation = 1797 * (m.hidden + 2 * m.features + m.projection) + 1797**2 // 4
        return contrastive.member_bytes(Network(**m.model_dump()), max(step, evaluation))


def train_reference(experiment: Any, member: dict[str, Any]) -> reference.Reference:
    """One member trained alone: a ``Network`` and ``torch.optim`` on the member's seed's views, with NT-Xent
    as SimCLR implementations write it (logits ``s/τ``, the diagonal masked after the division)."""
    task = SimCLR(experiment, [member], torch.device("cpu"))
    model = seeded(member["seed"], lambda: Network(**experiment.model.model_dump()))
    b = task.batch_size
    self_pairs = torch.eye(2 * b, dtype=torch.bool)
    twins = torch.arange(2 * b).roll(b)

    def loss_fn(net: nn.Module, tau: Tensor, step: int) -> Tensor:
        z = F.normalize(net(task.views(member["seed"], step).reshape(2 * b, PIXELS)), dim=-1)
        return F.cross_entropy((z @ z.T / tau).masked_fill(self_pairs, float("-inf")), twins)

    return reference.train_reference(experiment, member, model, loss_fn)
