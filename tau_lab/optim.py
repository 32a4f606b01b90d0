"""SGD and AdamW over stacked member parameters ``[members, ...]``, with a mask of live members.

The updates are elementwise, so one update of a stack equals K separate updates, and match
``torch.optim.SGD`` (L2 weight decay) and ``torch.optim.AdamW`` (decoupled weight decay)
exactly. Members masked out of a parameter's update (diverged, pruned, or a fixed temperature)
are left untouched there, their optimizer state included.

SigLIP's bias (``BIAS``) is the one task parameter with a policy of its own: no weight decay, and the learning
rate ``optimizer.bias_lr`` (``bias_hyperparameters``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

# SigLIP's learnable bias b (``logit_bias [K]``): open_clip keeps it out of weight decay, as it does every 1-D
# parameter, so that decay does not pull b from its −10 start towards 0. tau-lab exempts only this loss
# parameter; the towers' layer biases keep ``optimizer.weight_decay`` as before (results stay comparable).
BIAS = "logit_bias"


def _per_member(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A number as it is; a tensor ``[K]`` shaped ``[K, 1, ..., 1]`` to act on ``like [K, ...]``."""
    if isinstance(value, Tensor):
        return value.reshape(-1, *([1] * (like.ndim - 1)))
    return value


class Optimizer:
    """``sgd``: ``p ← p − lr (g + wd p)``. ``adamw``: ``p ← p (1 − lr wd) − lr m̂ / (√v̂ + ε)``.

    Args:
        name: ``sgd`` or ``adamw``.
        params: the stacked tensors, updated in place.
        lr, weight_decay: per parameter name, one number for every member or a tensor ``[K]`` with one
            value per member (the temperature has its own).
    """

    def __init__(
        self,
        name: str,
        params: dict[str, Tensor],
        lr: dict[str, float | Tensor],
        weight_decay: dict[str, float | Tensor],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.name, self.lr, self.weight_decay, self.betas, self.eps = name, lr, weight_decay, betas, eps
        self.state: dict[str, Tensor] = {}
        # each parameter's learning rate, weight decay and their product, tensors shaped [K, 1, …, 1] like it ([]
        # for one number): a step reshapes nothing, and torch.compile takes them as inputs, not as constants it
        # would compile a graph for each value of (a search's trials, a sweep's populations)
        self.rates: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for key, p in params.items():
            rate, decay = (
                torch.as_tensor(_per_member(v, p), dtype=p.dtype, device=p.device) for v in (lr[key], weight_decay[key])
            )
            self.rates[key] = (rate, decay, rate * decay)
        self.decays = {key: isinstance(wd, Tensor) or bool(wd) for key, wd in weight_decay.items()}  # else: no wd p
        if name == "adamw":
            for key, p in params.items():
                self.state[f"{key}.m"] = torch.zeros_like(p)
                self.state[f"{key}.v"] = torch.zeros_like(p)
            first = next(iter(params.values()))
            self.state["t"] = torch.zeros(first.shape[0], device=first.device)

    @torch.no_grad()
    def step(self, params: dict[str, Tensor], grads: dict[str, Tensor], masks: dict[str, Tensor]) -> None:
        """Update ``params`` in place where ``masks[name]`` (``[K]`` bools) is true."""
        updated, self.state = self.update(params, grads, masks, self.state)
        for key, p in params.items():
            p.copy_(updated[key])

    def update(
        self, params: dict[str, Tensor], grads: dict[str, Tensor], masks: dict[str, Tensor], state: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``step`` as a pure function: the updated parameters and optimizer state, new tensors (a compiled
        block of steps carries them from step to step; nothing it was given is written).

        Per parameter, with its rates shaped once (``rates``). ``torch._foreach_*`` over the parameters was
        measured no faster on the CPU (it runs a foreach op tensor by tensor; docs/benchmarks.md), and the
        masks' ``torch.where`` has no foreach form."""
        state = dict(state)
        if self.name == "adamw":
            state["t"] = state["t"] + torch.stack(list(masks.values())).any(0)
            t = state["t"].clamp(min=1)
            b1, b2 = self.betas
            bc1, bc2 = 1 - b1**t, 1 - b2**t
        updated = {}
        for key, p in params.items():
            g, (lr, wd, lr_wd) = grads[key], self.rates[key]
            mask = self._mask(masks[key], p)
            if self.name == "sgd":
                update = lr * (g + wd * p) if self.decays[key] else lr * g
            else:
                m = state[f"{key}.m"] = torch.where(mask, b1 * state[f"{key}.m"] + (1 - b1) * g, state[f"{key}.m"])
                v = state[f"{key}.v"] = torch.where(mask, b2 * state[f"{key}.v"] + (1 - b2) * g * g, state[f"{key}.v"])
                denom = (v / self._mask(bc2, p)).sqrt() + self.eps
                update = lr * (m / self._mask(bc1, p)) / denom + lr_wd * p
            updated[key] = torch.where(mask, p - update, p)  # where, not a product: frozen members may hold NaN
        return updated, state

    @staticmethod
    def _mask(mask: Tensor, like: Tensor) -> Tensor:
        return mask.reshape(-1, *([1] * (like.ndim - 1)))

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)


def model_lr(opt: Any, member: dict[str, Any]) -> float:
    """The learning rate of a member's model parameters: its own (the grid axis ``lr``), else ``optimizer.lr``."""
    return member.get("lr") or opt.lr


def tau_hyperparameters(opt: Any, member: dict[str, Any]) -> tuple[float, float]:
    """The learning rate and weight decay of a member's ``logit_scale``: the member's own (a grid axis
    ``tau_lr`` / ``tau_weight_decay``), else ``optimizer.tau_lr`` / ``optimizer.tau_weight_decay``, and the
    learning rate falls back to the member's ``model_lr``."""
    lr = member.get("tau_lr") or opt.tau_lr or model_lr(opt, member)
    weight_decay = member.get("tau_weight_decay")
    return lr, opt.tau_weight_decay if weight_decay is None else weight_decay


def bias_hyperparameters(opt: Any, member: dict[str, Any]) -> tuple[float, float]:
    """The learning rate and weight decay of a member's ``BIAS``: ``optimizer.bias_lr``, else the member's
    ``model_lr`` (open_clip trains it at the model's rate); never any decay.

    An AdamW step moves b by about its learning rate at most, so from −10 b needs ``|b* + 10| / lr`` steps to
    reach its value ``b*``: a short run may want a larger ``bias_lr``."""
    return opt.bias_lr or model_lr(opt, member), 0.0


def build_optimizer(opt: Any, params: dict[str, Tensor], members: list[dict[str, Any]]) -> Optimizer:
    """The population's optimizer over ``params`` (stacked ``[K, ...]``; ``logit_scale`` among them when the
    temperature is trained): each member's ``model_lr`` and ``optimizer.weight_decay`` for the task's parameters
    (``bias_hyperparameters`` for ``BIAS``), each member's ``tau_hyperparameters`` for ``logit_scale``."""
    first = next(iter(params.values()))
    per_member = {"dtype": first.dtype, "device": first.device}
    model = torch.tensor([model_lr(opt, m) for m in members], **per_member) if any("lr" in m for m in members) else None
    lr: dict[str, float | Tensor] = dict.fromkeys(params, opt.lr if model is None else model)
    weight_decay: dict[str, float | Tensor] = dict.fromkeys(params, opt.weight_decay)
    for name, hyperparameters in ((BIAS, bias_hyperparameters), ("logit_scale", tau_hyperparameters)):
        if name in params:
            own_lr, own_wd = zip(*(hyperparameters(opt, m) for m in members), strict=True)
            lr[name] = torch.tensor(own_lr, **per_member)
            weight_decay[name] = torch.tensor(own_wd, **per_member)
    return Optimizer(opt.name, params, lr, weight_decay, opt.betas, opt.eps)


def reference_optimizer(
    opt: Any, params: Iterable[tuple[str, Tensor]], logit_scale: Tensor | None, member: dict[str, Any]
) -> torch.optim.Optimizer:
    """The same policy for one member trained alone with ``torch.optim`` (``SGD`` or ``AdamW``) over the
    module's ``named_parameters()``: ``BIAS`` in a group with the member's ``bias_hyperparameters``, and the
    ``logit_scale`` group, when given, with the member's ``tau_hyperparameters``."""
    named = dict(params)
    groups: list[dict[str, Any]] = [
        {
            "params": [p for n, p in named.items() if n != BIAS],
            "lr": model_lr(opt, member),
            "weight_decay": opt.weight_decay,
        }
    ]
    if BIAS in named:
        lr, weight_decay = bias_hyperparameters(opt, member)
        groups.append({"params": [named[BIAS]], "lr": lr, "weight_decay": weight_decay})
    if logit_scale is not None:
        lr, weight_decay = tau_hyperparameters(opt, member)
        groups.append({"params": [logit_scale], "lr": lr, "weight_decay": weight_decay})
    if opt.name == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps)
