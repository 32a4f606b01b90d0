"""Bring your own model and data: a population of any ``nn.Module`` with ``torch.func``.

``[model] factory = "mypkg.models:two_towers"`` names a function returning an ``nn.Module`` whose
``forward(a, b)`` returns the two embeddings ``(u [B, D], v [B, D])`` of a batch of pairs (one encoder
applied to two views for SimCLR, an image and a text tower for CLIP). ``[data] factory =
"mypkg.data:pairs"`` names a function returning ``(a, b)`` or ``(a, b, labels)``: tensors with
the pairs on the first axis, or a ``torch.utils.data.Dataset`` of such tuples (stacked once).

The population is one module definition and its weights stacked on a member axis (as
``torch.func.stack_module_state`` stacks them), the factory called under ``torch.manual_seed(seed)`` so
members of one seed share their initial weights, and one ``vmap`` of ``functional_call`` runs every
member's forward in a single batched call:

    u, v = vmap(functional_call(module, ·, (a_k, b_k)))(params, a, b)      [K, B, D] each
    L = clip_loss(u, v; τ) | nt_xent(u, v; τ) | info_nce(u → v; τ)          [K]
      | siglip_loss(u, v; τ, b)

and autograd gives every member's gradient at once. With ``loss = "siglip"`` every member also has SigLIP's
learnable bias ``logit_bias [K]`` (from ``model.bias_init``), a parameter of the task beside the module's own
(trained with them, without weight decay: ``optim.bias_hyperparameters``) and logged as a metric.

A module with buffers (BatchNorm's running statistics) is refused: members would need their own running
statistics, and ``vmap`` cannot update them in place. ``nn.GroupNorm``/``nn.LayerNorm``, or
``BatchNorm(track_running_stats=False)``, work.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PrivateAttr
from torch import Tensor, nn
from torch.func import functional_call, vmap

from tau_lab import distributed, losses, metrics
from tau_lab.data.pairs import split
from tau_lab.errors import UserError
from tau_lab.optim import BIAS
from tau_lab.tasks import contrastive, reference
from tau_lab.tasks.base import Schema, StepResult, autograd_step, stack_modules
from tau_lab.tasks.mlp import seeded


@functools.cache
def _load_file(path: str) -> ModuleType:
    """A ``.py`` file as a module, loaded once: every member's module must be of one class."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def resolve(spec: str, key: str) -> Callable[..., Any]:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` → the function.

    Modules are looked up from the working directory too (as ``python -m`` does), and a ``.py`` path is taken
    relative to it. One line naming ``key`` when the function cannot be found.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"{key} = {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            if not Path(module_name).is_file():
                raise UserError(f"{key} = {spec!r}: no file {module_name}")
            target: Any = _load_file(str(Path(module_name).resolve()))
        else:
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            target = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{key} = {spec!r}: cannot import {module_name}: {err}") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UserError(f"{key} = {spec!r}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserError(f"{key} = {spec!r}: {attr} is not callable")
    return target


def call(spec: str, kwargs: dict[str, Any], key: str) -> Any:
    """``resolve(spec)(**kwargs)``; kwargs that do not fit its signature are one line naming ``key``."""
    fn = resolve(spec, key)
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as err:
        raise UserError(f"{key} = {spec!r} with kwargs {kwargs}: {err}") from None
    return fn(**kwargs)


class Data(Schema):
    factory: str = Field(description="'package.module:function' returning (a, b[, labels]) or a Dataset of them")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the factory")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out share of the pairs (of every class)")
    split_seed: int = 0
    batch_size: int = Field(64, ge=2, description="pairs per step")
    # the factory's tensors, kept by ``load_data`` with the factory and kwargs they came from: the engine's
    # memory estimate (``member_bytes``) and every chunk's task read one call of the factory
    _loaded: tuple[str, tuple[Tensor, Tensor, Tensor | None]] | None = PrivateAttr(None)


class Model(Schema):
    factory: str = Field(description="'package.module:function' returning an nn.Module with forward(a, b) -> (u, v)")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments of the factory")
    loss: Literal["clip", "nt_xent", "info_nce", "siglip"] = Field("clip", description="the loss of u and v")
    bias_init: float = Field(-10.0, allow_inf_nan=False, description="initial logit_bias (loss = 'siglip')")


def load_data(data: Data) -> tuple[Tensor, Tensor, Tensor | None]:
    """The factory's pairs as tensors ``a [n, ...]``, ``b [n, ...]``, ``labels [n]`` or ``None``; the factory
    is called once per ``data`` (and factory and kwargs), its tensors kept on it for the next call."""
    key = json.dumps([data.factory, data.kwargs], sort_keys=True, default=repr)
    if data._loaded is None or data._loaded[0] != key:
        data._loaded = key, _call_data(data)
    return data._loaded[1]


def _call_data(data: Data) -> tuple[Tensor, Tensor, Tensor | None]:
    out = call(data.factory, data.kwargs, "data.factory")
    if isinstance(out, torch.utils.data.Dataset):
        items = [out[i] for i in range(len(out))]  # type: ignore[arg-type]
        out = tuple(torch.stack([torch.as_tensor(item[j]) for item in items]) for j in range(len(items[0])))
    if not isinstance(out, tuple | list) or len(out) not in (2, 3):
        raise UserError(f"data.factory = {data.factory!r} returned {type(out).__name__}: expected (a, b[, labels])")
    a, b, *rest = (torch.as_tensor(x) for x in out)
    labels = rest[0].long() if rest else None
    if len(a) != len(b) or (labels is not None and len(labels) != len(a)):
        sizes = [len(x) for x in out]
        raise UserError(f"data.factory = {data.factory!r}: a, b (and labels) have {sizes} rows: they must agree")
    for name, x in (("a", a), ("b", b)):
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise UserError(f"data.factory = {data.factory!r}: '{name}' has NaN or infinite values")
    return a, b, labels


def build_module(model: Model, seed: int) -> nn.Module:
    """The model factory's module for ``seed``; refused with one line when it has buffers."""
    module = seeded(seed, lambda: call(model.factory, model.kwargs, "model.factory"))
    if not isinstance(module, nn.Module):
        raise UserError(f"model.factory = {model.factory!r} returned {type(module).__name__}: expected an nn.Module")
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        raise UserError(
            f"model.factory = {model.factory!r}: the module has buffers ({', '.join(buffers[:3])}…): running "
            "statistics cannot be kept per member; use GroupNorm/LayerNorm or BatchNorm(track_running_stats=False)"
        )
    return module


class ModuleTask(contrastive.ContrastiveTask):
    """The population: the factory's parameters stacked over members, ``{name: [K, ...]}``."""

    Data, Model, Sweep = Data, Model, contrastive.Sweep

    def __init__(self, experiment: Any, members: list[dict[str, Any]], device: torch.device) -> None:
        super().__init__(experiment, members, device)
        model = experiment.model
        self.populate(model.loss, *load_data(self.data), lambda seed: build_module(model, seed))
        if model.loss == "siglip":
            if BIAS in self.params:
                raise UserError(
                    f"model.factory = {model.factory!r}: the module has a parameter named {BIAS!r}, the name of "
                    "SigLIP's bias: rename it"
                )
            dtype = torch.get_default_dtype()
            self.params[BIAS] = torch.full((len(self.seed_row),), model.bias_init, dtype=dtype, device=device)

    def populate(
        self, loss: str, a: Tensor, b: Tensor, labels: Tensor | None, build: Callable[[int], nn.Module]
    ) -> None:
        """Split the pairs ``a [n, ...]``, ``b [n, ...]`` (``data.test_fraction``, stratified by ``labels``),
        and stack the weights of ``build(seed)`` for every member: ``params {name: [K, ...]}``."""
        device, dtype = self.device, torch.get_default_dtype()
        self.loss = loss
        test = split(len(a), labels, self.data.test_fraction, self.data.split_seed)
        a, b = (x.to(device, dtype) if x.is_floating_point() else x.to(device) for x in (a, b))
        test = test.to(device)
        self.train_a, self.train_b, self.test_a, self.test_b = a[~test], b[~test], a[test], b[test]
        self.test_labels = None if labels is None else labels.to(device)[test]
        self.n_train = len(self.train_a)
        self.batch_size = contrastive.clamp_batch_size(self.batch_size, self.n_train, "training pairs")
        self.reference_module = build  # one member's module, for standalone loops
        modules = [build(s).to(device, dtype) for s in self.seeds]
        stacked = stack_modules(modules, {name: name for name, _ in modules[0].named_parameters()})
        self.params = {name: p[self.seed_row].contiguous() for name, p in stacked.items()}
        self.module = copy.deepcopy(modules[0]).to("meta")  # the definition; weights come from params
        self.columns = losses.positive_first(self.batch_size, views=False, device=device)
        self.split_rows()

    def _forward(self, params: dict[str, Tensor], a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's ``(u, v)``, ``[K, B, D]`` each, in one vmapped call (the module's parameters only)."""
        own = {name: p for name, p in params.items() if name != BIAS}
        return vmap(lambda p, x, y: functional_call(self.module, p, (x, y)))(own, a, b)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Every member's training pairs ``[K, B, ...]``: drawn once per seed, from the seed's stream at ``step``."""
        idx = self.indices(step)
        return self.train_a[idx], self.train_b[idx]

    def step(self, params: dict[str, Tensor], tau: Tensor, batch: tuple[Tensor, Tensor]) -> StepResult:
        """The loss and its gradients by autograd; the u→v similarities with each partner first, ``[K, b, B]``.

        This process's ``b`` pairs are embedded and the whole batch's embeddings gathered
        (``distributed.gather``; in one process the rows are the batch): the loss is that of the rows against
        the whole batch (``clip_loss_rows``, ``nt_xent_rows``, ``siglip_loss_rows`` of the rows' u against every
        v, or ``info_nce`` of u against every v with the partner's global index as target), averaged over
        processes (``distributed.average``): the full batch's loss.
        """
        a, b = (x[:, self.rows] for x in batch)
        offset = self.rows.start

        def loss_fn(p: dict[str, Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
            u, v = self._forward(p, a, b)  # [K, b, D]
            u_all, v_all = distributed.gather(u, 1), distributed.gather(v, 1)  # [K, B, D]
            sims = self.similarities(u, v_all, self.local_columns)
            if self.loss == "clip":
                return losses.clip_loss_rows(u, v, u_all, v_all, t, offset), sims
            if self.loss == "nt_xent":
                return losses.nt_xent_rows(u, v, u_all, v_all, t, offset), sims
            if self.loss == "siglip":
                return losses.siglip_loss_rows(u, v_all, t, p[BIAS], offset), sims
            target = torch.arange(offset, offset + u.shape[1], device=u.device)
            return losses.info_nce(u, v_all, t, target=target), sims

        return distributed.average(autograd_step(loss_fn, params, tau))

    def diagnostics(self, params: dict[str, Tensor], tau: Tensor, step: int) -> dict[str, Tensor]:
        """SigLIP's bias ``logit_bias`` ``[K]`` at logging steps (nothing for the other losses)."""
        return {BIAS: params[BIAS]} if self.loss == "siglip" else {}

    def _test(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        k = len(self.seed_row)
        a = self.test_a.expand(k, *self.test_a.shape)
        b = self.test_b.expand(k, *self.test_b.shape)
        return self._forward(params, a, b)

    def embed(self, params: dict[str, Tensor]) -> Tensor:
        """The held-out pairs' ``u`` embeddings, ``[K, N_test, D]``."""
        return self._test(params)[0]

    def evaluate(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Recall@1 both ways, alignment, uniformity (and tolerance with labels) on the held-out pairs; each ``[K]``."""
        u, v = self._test(params)
        out = contrastive.geometry(u, self.test_labels, (u, v))
        out["recall_a2b"] = metrics.recall_at_1(u, v)
        out["recall_b2a"] = metrics.recall_at_1(v, u)
        return out

    @staticmethod
    def member_bytes(experiment: Any) -> int:
        """Parameters with their optimizer state, a rough activation budget: 64 numbers per input number
        of one batch (a conv net keeps several feature maps per input pixel alive for the backward pass), and the
        ``block_steps`` batches a block of steps holds stacked."""
        a, b, _ = load_data(experiment.data)
        per_batch = experiment.data.batch_size * (a[0].numel() + b[0].numel())
        module = build_module(experiment.model, 0)
        return contrastive.member_bytes(module, (64 + experiment.block_steps) * per_batch)


def paired_reference(
    task: ModuleTask, experiment: Any, member: dict[str, Any], model: nn.Module
) -> reference.Reference:
    """One member trained alone: ``model`` and ``torch.optim`` on the member's batches of ``task``, the loss
    written as a training script writes it (``F.cross_entropy`` of ``s/τ``; SigLIP's ``−Σ log σ(z · (s/τ + b))
    / B`` with ``model.logit_bias``), not with ``tau_lab.losses``."""
    n = task.batch_size
    target, self_pairs, twins = torch.arange(n), torch.eye(2 * n, dtype=torch.bool), torch.arange(2 * n).roll(n)

    def loss_fn(net: nn.Module, tau: Tensor, step: int) -> Tensor:
        a, b = (x[0] for x in task.batch(step))
        u, v = (F.normalize(z, dim=-1) for z in net(a, b))
        if task.loss == "nt_xent":
            z = torch.cat([u, v])
            return F.cross_entropy((z @ z.T / tau).masked_fill(self_pairs, float("-inf")), twins)
        logits = u @ v.T / tau
        if task.loss == "siglip":
            return -F.logsigmoid((2 * torch.eye(n) - 1) * (logits + net.logit_bias)).sum() / n
        if task.loss == "info_nce":
            return F.cross_entropy(logits, target)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    return reference.train_reference(experiment, member, model, loss_fn)


def train_reference(experiment: Any, member: dict[str, Any]) -> reference.Reference:
    """One member of ``task = "module"`` trained alone (``paired_reference``); with SigLIP, its bias a
    parameter ``logit_bias`` of the module, as open_clip's ``CLIP`` holds it."""
    task = ModuleTask(experiment, [member], torch.device("cpu"))
    model = build_module(experiment.model, member["seed"])
    if experiment.model.loss == "siglip":
        model.register_parameter(BIAS, nn.Parameter(torch.tensor(experiment.model.bias_init)))
    return paired_reference(task, experiment, member, model)
