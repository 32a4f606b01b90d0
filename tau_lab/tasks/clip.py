"""CLIP in miniature on the digits: an image tower, a bag-of-words text tower, the symmetric CLIP loss.

Each training image has one caption for the whole run, drawn per seed from templates and synonyms of its
digit (``tau_lab.data.captions``): ``"a handwritten seven"``, ``"the number 7"``. A fraction
``caption_noise`` of the captions (a sweep axis) names a wrong digit, as web captions sometimes do.

    image:  x [K, B, 64]  → MLP 64 → hidden → width, ReLU → Linear width → D (no bias)  → u
    text:   bag [K, B, V] → bag @ E (E [V, width], an embedding bag) → Linear width → D   → v
    L = clip_loss(u, v; τ) = ½ (CE(û v̂ᵀ / τ, arange B) + CE(v̂ ûᵀ / τ, arange B))          (objective = "clip")
    L = siglip(u, v; τ, b) = −(1/B) Σ_ij log σ(z_ij (û_i·v̂_j / τ + b)), z_ii = 1, z_ij = −1   (objective = "siglip")

The grid axis ``objective`` (``["clip", "siglip"]``; ``loss`` names the logged training loss) puts both in
one population: members of a seed share their initial towers and their batches whatever their loss, so CLIP
and SigLIP are compared pair by pair. Every member carries SigLIP's learnable bias ``logit_bias [K]`` (from
``model.bias_init``, −10 as in Zhai et al. 2023), trained at ``optimizer.bias_lr`` (default: the towers'
rate) and without weight decay (``optim.bias_hyperparameters``); it gets no gradient in CLIP members, which
never read it. SigLIP's learnable temperature ``t' = log 10`` is tau-lab's ``tau_mode = "learnable"`` from
``τ = 0.1``: ``logit_scale = ln(1/τ) = t'``. ``logit_bias`` is logged at every logging step (NaN for CLIP
members).

Captions of the same digit are interchangeable, so in a batch of B pairs every other caption of the
image's digit is a *false negative*; ``false_negative_rate`` reports their share of the negatives and
``false_negative_mass`` the softmax weight an image puts on them (both at logging steps). The sweep axis
``mask_false_negatives`` tests whether they matter: a member with ``true`` leaves them out of the loss
(``losses.clip_loss_rows``), each image's same-digit captions and each caption's same-digit images.

Evaluation on the held-out split, each test image with one noise-free caption:

- ``recall_i2t`` / ``recall_t2i``: the top-1 caption of an image (image of a caption) shows its digit;
  instance-level recall would be meaningless here, as captions only carry the digit;
- ``zero_shot_single``: classification by the nearest class prompt ``"a handwritten {digit}"``;
- ``zero_shot_ensemble``: by the mean of the normalised embeddings of every template × synonym per class,
  renormalised (CLIP's prompt ensembling);
- ``alignment.z`` of image and caption, ``uniformity.z`` and ``tolerance.z`` of the image embeddings ``u``
  (the joint space, which the loss, recall and zero-shot all read);
- ``uniformity.h`` and ``tolerance.h`` of the image tower's features ``h`` before its projection (no
  ``alignment.h``: the text tower's features live in another space until their own projection).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tau_lab import distributed, losses, metrics
from tau_lab.data import captions
from tau_lab.tasks import contrastive, reference
from tau_lab.tasks.base import Schema, StepResult, autograd_step
from tau_lab.tasks.mlp import init_population, linear, mlp, mlp_module, seeded

PIXELS = 64


class Data(contrastive.DigitsData):
    batch_size: int = Field(128, ge=2, description="image-caption pairs per step")


class Model(Schema):
    hidden: int = Field(128, ge=1, description="width of the image tower's hidden layer")
    width: int = Field(64, ge=1, description="width of both towers' features (and of the word embeddings)")
    embed_dim: int = Field(32, ge=1, description="width of the joint embedding space")
    bias_init: float = Field(-10.0, allow_inf_nan=False, description="initial logit_bias of SigLIP members")


class Sweep(contrastive.Sweep):
    caption_noise: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        [0.0], min_length=1, description="fractions of wrong captions"
    )
    mask_false_negatives: list[bool] = Field(
        [False], min_length=1, description="drop same-digit captions (images) from each image's (caption's) negatives"
    )
    # not "loss": that names the logged training loss, a column of the same members table
    objective: list[Literal["clip", "siglip"]] = Field(
        ["clip"], min_length=1, description="the loss: CLIP's softmax or SigLIP's sigmoid with a learnable bias"
    )


class MiniCLIP(nn.Module):
    """One member as a module: ``encode_image`` and ``encode_text`` as the population computes them, and
    SigLIP's bias ``logit_bias`` (a 0-d parameter, as open_clip's ``CLIP(init_logit_bias=...)`` holds it)."""

    def __init__(self, vocab_size: int, hidden: int, width: int, embed_dim: int, bias_init: float = -10.0) -> None:
        super().__init__()
        self.image = mlp_module([PIXELS, hidden, width])
        self.image_projection = nn.Linear(width, embed_dim, bias=False)
        self.text = nn.Embedding(vocab_size, width)
        self.text_projection = nn.Linear(width, embed_dim, bias=False)
        self.logit_bias = nn.Parameter(torch.tensor(float(bias_init)))  # draws nothing: the towers' init is unchanged

    def encode_image(self, x: Tensor) -> Tensor:
        return self.image_projection(F.relu(self.image(x)))

    def encode_text(self, bags: Tensor) -> Tensor:
        return self.text_projection(bags @ self.text.weight)


def image_features(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """The image tower before its projection, ``h = ReLU(MLP(x))``: ``[K, N, 64]`` → ``[K, N, width]``."""
    return F.relu(mlp(x, params, "image", 2))


def encode_image(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``u = W h``: ``[K, N, 64]`` → ``[K, N, D]``."""
    return linear(image_features(params, x), params["image_projection.weight"])


def encode_text(params: dict[str, Tensor], bags: Tensor) -> Tensor:
    """Bags of words ``[K, N, V]`` → ``[K, N, D]``."""
    return linear(torch.bmm(bags, params["text.weight"]), params["text_projection.weight"])


class Batch(NamedTuple):
    """A step's inputs for every member."""

    images: Tensor  # [K, B, 64]
    bags: Tensor  # [K, B, V]: the captions' bags of words
    same: Tensor  # [K, B images, B captions] bool: caption j names image i's digit


class CLIP(contrastive.ContrastiveTask):
    """The population: ``MiniCLIP`` parameters stacked over members, ``{name: [K, ...]}``."""

    Data, Model, Sweep = Data, Model, Sweep

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None:
        super().__init__(experiment, members, device)
        self.vocab = captions.Vocabulary()
        model = experiment.model.model_dump()
        self.params = init_population(self.seeds, lambda: MiniCLIP(len(self.vocab), **model), self.seed_row)
        self.load_digits()
        dtype = torch.get_default_dtype()
        self.bags = captions.bag_table(self.vocab).to(device, dtype)  # [T, 10, S, V]
        noise = torch.tensor([m["caption_noise"] for m in members], device=device)
        self.caption_digit, self.caption_bag = self._captions(noise)  # [K, N_train], [K, N_train, V]
        self.mask = torch.tensor([m["mask_false_negatives"] for m in members], device=device)  # [K]
        self.masks_negatives = any(m["mask_false_negatives"] for m in members)
        self.losses = [m["objective"] for m in members]
        self.siglip = torch.tensor([loss == "siglip" for loss in self.losses], device=device)  # [K]
        g = torch.Generator(device).manual_seed(self.data.split_seed)
        test = captions.draw_captions(len(self.test_y), g)
        self.test_bags = self.bags[test.template, self.test_y, test.synonym]  # [N_test, V]
        self.prompts = {
            name: captions.prompt_bags(self.vocab, ensemble).to(device, dtype)  # [P, 10, V]
            for name, ensemble in (("single", False), ("ensemble", True))
        }
        self.columns = losses.positive_first(self.batch_size, views=False, device=device)
        self.split_rows()

    def _captions(self, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's training captions: the digit each names ``[K, N]`` and its bag ``[K, N, V]``.

        Drawn per seed (template, synonym, which captions are wrong), so the members of a seed share their
        captions up to the noise level, and a higher level's wrong captions include a lower level's.
        """
        template, synonym, digits = [], [], []
        for s in self.seeds:
            g = torch.Generator(self.device).manual_seed(s)
            draw = captions.draw_captions(len(self.train_y), g)
            template.append(draw.template)
            synonym.append(draw.synonym)
            digits.append(captions.caption_noise(self.train_y, noise, g))  # [K, N]: every member's level
        digit = torch.stack(digits)[self.seed_row, torch.arange(len(noise), device=self.device)]
        return digit, self.bags[torch.stack(template)[self.seed_row], digit, torch.stack(synonym)[self.seed_row]]

    def batch(self, step: int) -> Batch:
        """Images, their captions' bags of words, and which captions name which image's digit."""
        idx = self.indices(step)
        image_digit, caption_digit = self.train_y[idx], self.caption_digit.gather(1, idx)  # [K, B]
        bags = self.caption_bag.gather(1, idx[..., None].expand(-1, -1, len(self.vocab)))
        return Batch(self.train_x[idx], bags, image_digit[:, :, None] == caption_digit[:, None, :])

    def step(self, params: dict[str, Tensor], tau: Tensor, batch: Batch) -> StepResult:
        """Each member's loss (CLIP or SigLIP) and its gradients by autograd; the image→text similarities with
        each image's own caption first, ``[K, b, B]``, for the hardness metrics.

        This process's ``b`` rows are embedded, the embeddings of the whole batch gathered
        (``distributed.gather``; the rows themselves in one process), and the loss is that of the rows against
        the whole batch (``losses.clip_loss_rows``; ``losses.siglip_loss_rows``: the rows' images against every
        caption), averaged over processes (``distributed.average``), which makes it the full batch's loss.
        Members with ``mask_false_negatives`` leave the batch's same-digit pairs out of the loss (the
        ``exclude`` of both); for the others nothing is excluded.

        A population that mixes the losses computes both for every member and keeps each member's own with
        ``torch.where``, rather than splitting the members by index: the extra work is the B × B elementwise
        part of one loss (the towers and their [K, B, D] outputs are shared), the step keeps one fixed-shape
        graph (``torch.compile(dynamic=False)``, no gather and scatter of members), and ``where``'s backward
        gives the branch a member does not use an exact zero, so a CLIP member's gradients are those of a
        CLIP-only population. A population of one loss computes that loss alone.
        """
        eye = torch.eye(len(batch.same[0]), dtype=torch.bool, device=self.device)
        exclude = batch.same & ~eye & self.mask[:, None, None]
        # with no member masking, leaving the −∞ fill out spares a [K, B, B] pass forward and backward
        clip_exclude = exclude if self.masks_negatives else None
        images, bags = batch.images[:, self.rows], batch.bags[:, self.rows]
        uses = set(self.losses)

        def loss_fn(p: dict[str, Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
            u, v = encode_image(p, images), encode_text(p, bags)  # [K, b, D]
            u_all, v_all = distributed.gather(u, 1), distributed.gather(v, 1)  # [K, B, D]
            sims = self.similarities(u, v_all, self.local_columns)
            if uses == {"siglip"}:
                return losses.siglip_loss_rows(u, v_all, t, p["logit_bias"], self.rows.start, exclude), sims
            clip = losses.clip_loss_rows(u, v, u_all, v_all, t, self.rows.start, clip_exclude)
            if uses == {"clip"}:
                return clip, sims
            siglip = losses.siglip_loss_rows(u, v_all, t, p["logit_bias"], self.rows.start, exclude)
            return torch.where(self.siglip, siglip, clip), sims

        return distributed.average(autograd_step(loss_fn, params, tau))

    def diagnostics(self, params: dict[str, Tensor], tau: Tensor, step: int) -> dict[str, Tensor]:
        """At ``params`` on the batch of ``step``, each ``[K]``:

        - ``false_negative_rate``: the share of an image's B − 1 negative captions that name its digit;
        - ``false_negative_mass``: the weight ``softmax(s/τ)`` of an image's row (its caption and the B − 1
          others, none masked) puts on those captions, averaged over the images
          (``contrastive.false_negative_mass``); for SigLIP members too, which have no softmax: there it
          reads where the embedding puts those captions relative to the others, not a weight of the loss;
        - ``logit_bias``: SigLIP's bias ``b``; NaN for CLIP members (they have none).
        """
        batch = self.batch(step)
        b = batch.same.shape[1]
        negatives = batch.same.sum((1, 2)) - batch.same.diagonal(dim1=1, dim2=2).sum(1)
        sims = self.similarities(encode_image(params, batch.images), encode_text(params, batch.bags))
        mass = contrastive.false_negative_mass(sims, self.positive_first(batch.same), tau)
        bias = torch.where(self.siglip, params["logit_bias"], torch.nan)
        return {"false_negative_rate": negatives / (b * (b - 1)), "false_negative_mass": mass, "logit_bias": bias}

    def _classes(self, params: dict[str, Tensor], prompts: Tensor) -> Tensor:
        """Class embeddings ``[K, 10, D]``: the mean of the normalised prompt embeddings, renormalised."""
        p, c, v = prompts.shape
        text = F.normalize(encode_text(params, self.members(prompts.reshape(p * c, v))), dim=-1)
        return F.normalize(text.reshape(-1, p, c, text.shape[-1]).mean(1), dim=-1)

    def embed(self, params: dict[str, Tensor]) -> Tensor:
        """The test images' embeddings, ``[K, N_test, D]``."""
        return encode_image(params, self.members(self.test_x))

    def evaluate(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Recall@1 both ways, zero-shot accuracy (single prompt, ensemble), alignment, uniformity and
        tolerance of the joint space (``.z``), uniformity and tolerance of the image tower's ``h`` (``.h``),
        on the test split; each ``[K]``."""
        h = image_features(params, self.members(self.test_x))
        u = linear(h, params["image_projection.weight"])
        v = encode_text(params, self.members(self.test_bags))
        out = contrastive.geometry(u, self.test_y, (u, v), ".z") | contrastive.geometry(h, self.test_y, None, ".h")
        out["recall_i2t"] = metrics.recall_at_1(u, v, self.test_y, self.test_y)
        out["recall_t2i"] = metrics.recall_at_1(v, u, self.test_y, self.test_y)
        un = F.normalize(u, dim=-1)
        for name, prompts in self.prompts.items():
            classes = self._classes(params, prompts)
            out[f"zero_shot_{name}"] = metrics.accuracy(un @ classes.transpose(1, 2), self.test_y)
        return out

    @staticmethod
    def member_bytes(experiment: Any) -> int:
        """Parameters and optimizer state, and the larger of the step's activations (about three copies of
        the towers' outputs and four of the B × B similarities) and the evaluation's (the towers' outputs
        for every digit)."""
        m, b = experiment.model, experiment.data.batch_size
        vocab = len(captions.Vocabulary())
        step = 3 * b * (m.hidden + 2 * m.width + 2 * m.embed_dim + vocab) + 4 * b * b
        evaluation = 1797 * (m.hidden + 2 * m.width + 2 * m.embed_dim + vocab)
        return contrastive.member_bytes(MiniCLIP(vocab, **m.model_dump()), max(step, evaluation))


def train_reference(experiment: Any, member: dict[str, Any]) -> reference.Reference:
    """One member trained alone: a ``MiniCLIP`` and ``torch.optim`` on the member's own pairs, with the loss
    as its paper writes it: CLIP's (``logits = û v̂ᵀ / τ``, the mean of the row and column cross-entropies)
    or SigLIP's (``logits = û v̂ᵀ / τ + b``, ``labels = 2 I − 1``, ``−Σ log σ(labels · logits) / B``). With
    ``mask_false_negatives``, the same-digit pairs other than the diagonal are masked to −∞ after the division
    (CLIP) or dropped from the sum (SigLIP). The module's ``logit_bias`` is an unused parameter of a CLIP
    member (``torch.optim`` skips it: it has no gradient)."""
    task = CLIP(experiment, [member], torch.device("cpu"))
    model = seeded(member["seed"], lambda: MiniCLIP(len(task.vocab), **experiment.model.model_dump()))
    labels = torch.arange(task.batch_size)

    def loss_fn(net: nn.Module, tau: Tensor, step: int) -> Tensor:
        images, bags, same = (part[0] for part in task.batch(step))
        u = F.normalize(net.encode_image(images), dim=-1)
        v = F.normalize(net.encode_text(bags), dim=-1)
        logits = u @ v.T / tau
        excluded = same & (labels[:, None] != labels) if member["mask_false_negatives"] else torch.zeros_like(same)
        if member["objective"] == "siglip":
            signs = 2 * torch.eye(len(labels), dtype=logits.dtype) - 1
            pairs = F.logsigmoid(signs * (logits + net.logit_bias))
            return -pairs[~excluded].sum() / len(labels)
        logits = logits.masked_fill(excluded, float("-inf"))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    return reference.train_reference(experiment, member, model, loss_fn)
