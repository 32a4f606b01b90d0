"""Peers of tau-lab's engine on the quadrants task, written independently of it: torch.func and JAX.

Both train the population of ``config.members(experiment)`` (fixed τ, SGD) on exactly the data the engine
and ``train_reference`` see: each member's initial weights come from ``quadrants.make_encoder(seed)`` and its
points from ``quadrants.draw_indices(seed, steps + 1, data)``. Only the step is written here, the way each
library's users write it: a per-member loss, its gradient by autodiff, a batch over members by ``vmap``.

- ``TorchFunc``: ``torch.func.vmap(grad_and_value(loss))`` per step from a Python loop, optionally under
  ``torch.compile`` (the step, update included, as one graph).
- ``Jax``: ``jax.vmap`` over members, ``jax.lax.scan`` over steps, ``jax.jit`` around it: the whole run is one
  compiled call, the anchor of issue 11. JAX is optional (``pip install -e .[bench]``); ``jax_missing()``
  says why it cannot be used.

Per member, with ``x [2 + negatives, 2]`` (anchor, positive, negatives), ``W₁ [hidden, 2]``, ``W₂ [2, hidden]``:
``e = tanh(x W₁ᵀ W₂ᵀ)``, ``n = e / max(|e|, 1e-8)``, ``s_j = n₀·n_{j+1}``, ``L = logsumexp(s/τ) − s₀/τ``;
SGD: ``W ← W − lr (∂L/∂W + wd W)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from tau_lab.tasks.quadrants import COS_EPS, draw_indices, make_encoder, make_points


def member_data(experiment: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The population's start and data stream, as plain tensors on the CPU.

    Returns ``points [N, 2]``, ``index [steps, K, 2 + negatives]`` (step-major), ``w1 [K, hidden, 2]``,
    ``w2 [K, 2, hidden]``, ``tau [K]``, ``lr`` and ``weight_decay``. Only fixed τ and SGD: the peers time the
    engine's hot path, not its temperature schedules.
    """
    if any(r["tau_mode"] != "fixed" for r in rows) or experiment.optimizer.name != "sgd":
        raise ValueError("the peers train fixed-τ members with SGD only")
    if any(r.get("lr") for r in rows):
        raise ValueError("the peers take one learning rate for every member")
    seeds = sorted({r["seed"] for r in rows})
    encoders = {s: make_encoder(s, experiment.model.hidden) for s in seeds}
    # steps + 1 draws, as the engine and train_reference make them (the draws of each column depend on the count)
    streams = {s: draw_indices(s, experiment.steps + 1, experiment.data)[:-1] for s in seeds}
    points, _ = make_points(experiment.data)
    return {
        "points": points,
        "index": torch.stack([streams[r["seed"]] for r in rows], 1),
        "w1": torch.stack([encoders[r["seed"]][0].weight.detach() for r in rows]),
        "w2": torch.stack([encoders[r["seed"]][1].weight.detach() for r in rows]),
        "tau": torch.tensor([float(r["tau_init"]) for r in rows]),
        "lr": float(experiment.optimizer.lr),
        "weight_decay": float(experiment.optimizer.weight_decay),
    }


# ----------------------------------------------------------------------------- torch.func


def _torch_loss(w1: Tensor, w2: Tensor, x: Tensor, tau: Tensor) -> Tensor:
    """One member's InfoNCE loss, ``x [2 + negatives, 2]`` → ``[]``."""
    e = torch.tanh(x @ w1.T @ w2.T)
    n = e / e.norm(dim=-1, keepdim=True).clamp_min(COS_EPS)
    logits = (n[1:] @ n[0]) / tau
    return torch.logsumexp(logits, 0) - logits[0]


class TorchFunc:
    """The population as ``torch.func`` users write it: ``vmap(grad_and_value(loss))`` and an SGD update,
    one call per step; ``compile`` wraps that step (gradient and update) in ``torch.compile``."""

    def __init__(self, experiment: Any, rows: list[dict[str, Any]], device: torch.device, compile: bool) -> None:
        d = member_data(experiment, rows)
        self.steps = experiment.steps
        self.points, self.index = d["points"].to(device), d["index"].to(device)
        self.start = (d["w1"].to(device), d["w2"].to(device))
        self.tau, lr, wd = d["tau"].to(device), d["lr"], d["weight_decay"]
        per_member = torch.func.vmap(torch.func.grad_and_value(_torch_loss, argnums=(0, 1)))

        def step(w1: Tensor, w2: Tensor, x: Tensor, tau: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            (g1, g2), loss = per_member(w1, w2, x, tau)
            return w1 - lr * (g1 + wd * w1), w2 - lr * (g2 + wd * w2), loss

        self.step = torch.compile(step, dynamic=False) if compile else step

    def run(self, steps: int | None = None) -> Tensor:
        """Train from the start for ``steps`` (default: the experiment's); the loss of every step
        before its update, ``[steps, K]`` (written on the device: no host sync inside the loop)."""
        steps = self.steps if steps is None else steps
        w1, w2 = self.start
        losses = torch.empty(steps, len(self.tau), device=self.tau.device)
        for t in range(steps):
            w1, w2, losses[t] = self.step(w1, w2, self.points[self.index[t]], self.tau)
        losses.sum().item()  # waits for the device
        return losses


# ----------------------------------------------------------------------------- JAX


def jax_missing() -> str | None:
    """``None`` when JAX can be imported, else why not (one line)."""
    try:
        import jax  # noqa: F401
    except ImportError as err:
        return f"JAX is not installed ({err}); pip install -e '.[bench]' adds it"
    return None


class Jax:
    """The anchor: ``jit(scan over steps of (vmap over members of value_and_grad(loss)) + SGD)``, float32.

    ``run()`` is one compiled call for the whole run (the first call of each number of steps compiles it).
    JAX uses its default device; the CPU wheel (``jax[cpu]``) has only the CPU.
    """

    def __init__(self, experiment: Any, rows: list[dict[str, Any]]) -> None:
        import jax
        import jax.numpy as jnp

        d = member_data(experiment, rows)
        self.steps = experiment.steps
        self.device = jax.devices()[0].platform
        lr, wd = d["lr"], d["weight_decay"]
        self.points = jnp.asarray(d["points"].numpy())
        self.index = jnp.asarray(d["index"].numpy().astype(np.int32))
        self.start = (jnp.asarray(d["w1"].numpy()), jnp.asarray(d["w2"].numpy()))
        self.tau = jnp.asarray(d["tau"].numpy())

        def loss(w1: Any, w2: Any, x: Any, tau: Any) -> Any:
            e = jnp.tanh(x @ w1.T @ w2.T)
            n = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), COS_EPS)
            logits = (n[1:] @ n[0]) / tau
            return jax.nn.logsumexp(logits) - logits[0]

        per_member = jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)))

        def train(w1: Any, w2: Any, points: Any, index: Any, tau: Any) -> tuple[Any, Any, Any]:
            def body(carry: tuple[Any, Any], idx: Any) -> tuple[tuple[Any, Any], Any]:
                w1, w2 = carry
                value, (g1, g2) = per_member(w1, w2, points[idx], tau)
                return (w1 - lr * (g1 + wd * w1), w2 - lr * (g2 + wd * w2)), value

            (w1, w2), losses = jax.lax.scan(body, (w1, w2), index)
            return w1, w2, losses

        self._train = jax.jit(train)

    def run(self, steps: int | None = None) -> np.ndarray:
        """Train from the start for ``steps`` (default: the experiment's, at most that); the loss of every
        step before its update, ``[steps, K]``. Blocks until the device has finished."""
        index = self.index if steps is None else self.index[:steps]
        _, _, losses = self._train(*self.start, self.points, index, self.tau)
        return np.asarray(losses.block_until_ready())
