"""The lockstep loop: all members of a population take every step together, as one computation.

A sweep's members (grid × seeds) are split into chunks that fit the memory budget; each chunk is a
population whose parameters are stacked on a leading member axis. Per step the task returns the
loss and gradients of every member, the optimizer updates the live ones, and learnable
temperatures are clamped. A member whose loss (or, at logging steps, gradient or parameters)
turns non-finite is marked diverged at that step and frozen; the others go on.

The step is a pure function of the population's tensors (``Carry``; ``Training.forward`` then
``Training.update``). An evaluation reads the parameters its step starts from, before the step. A logging step
(``Training.log_step``: the step with its metrics) and the steps after it, up to the next logging step,
evaluation or checkpoint and at most ``block_steps``, are an interval (``_calls``); the steps after an evaluation
or a checkpoint that is not logged are a block. With ``compile`` the logging step is compiled, and a block is one
compiled graph, on the CPU its steps torch's ``scan`` (``_compiled_scan``), on a GPU its compiled steps captured as
a CUDA graph (``CudaGraphBlocks``). A block reads nothing back from the device: it computes what its steps alone
compute. Ctrl-C and the progress bar act between intervals and blocks.

A run directory keeps, per chunk i, ``checkpoints/chunk-{i}.pt`` (the ``PopulationState.state_dict()``
and the run's configuration; see ``tau_lab.checkpoint``) and the metrics it logged, appended as
``metrics/chunk-{i}-{until:08d}.parquet`` parts (the records of steps below ``until``) at every checkpoint
and evaluation, so a checkpoint never rewrites the log and a running run's metrics can be read
(``results.read_metrics``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import signal
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import pandas as pd
import torch
import torch.utils._pytree as pytree
from torch import Tensor
from torch._higher_order_ops.scan import scan

from tau_lab import config, distributed, metrics, results
from tau_lab.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    check_same_config,
    config_hash,
    fingerprint,
    load_checkpoint,
)
from tau_lab.errors import UserError
from tau_lab.optim import Optimizer, build_optimizer
from tau_lab.progress import Progress
from tau_lab.tasks import TASKS
from tau_lab.tasks.base import StepResult, Task, index_batch, warn
from tau_lab.temperature import Temperature


class Stopped(KeyboardInterrupt):
    """A signal stopped training once the step was checkpointed: ``signum`` is SIGINT (Ctrl-C) or SIGTERM
    (a scheduler, ``timeout``, ``kill``)."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "") -> None:
        super().__init__(message)
        self.signum = signum


class Interrupted(Stopped):
    """Ctrl-C or SIGTERM during ``run_sweep``: ``run_dir`` is left resumable (``tau-lab sweep --resume RUN_DIR``)."""

    def __init__(self, run_dir: Path, signum: int = signal.SIGINT) -> None:
        super().__init__(signum, f"interrupted: continue with tau-lab sweep --resume {run_dir}")
        self.run_dir = run_dir


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is available; ``cuda`` without it is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device = 'cuda' was asked for, but no CUDA device is available: use cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- the metric log


class MetricSink(Protocol):
    """Receives every record of a ``MetricLog`` as it is made (live monitoring: ``tau_lab.monitor``)."""

    def record(self, member_ids: list[int], step: int, values: dict[str, Tensor]) -> None:
        """``values``: ``{metric: [K]}`` float32, one value per member of ``member_ids``."""

    def flush(self) -> None:
        """Make the records so far visible to readers (called where the log writes its parts)."""

    def close(self) -> None:
        """Flush, and release what the records of a finished population hold."""


class MetricLog:
    """Per-member values ``[K]`` recorded at steps; becomes the long metrics table.

    With ``parts`` (a directory) and ``prefix``, ``flush(until)`` appends the records made since the last
    flush as ``parts/{prefix}-{until:08d}.parquet``; ``frame()`` reads them back before the records in memory.
    A ``sink`` also gets every record as it is made, and a flush at every ``flush``.
    """

    def __init__(
        self, member_ids: list[int], parts: Path | None = None, prefix: str = "", sink: MetricSink | None = None
    ) -> None:
        self.member_ids, self.parts, self.prefix, self.sink = member_ids, parts, prefix, sink
        self.steps: list[int] = []
        self.names: list[str] = []
        self.values: list[Tensor] = []

    def record(self, step: int, values: dict[str, Tensor]) -> None:
        copies = {name: value.detach().to(torch.float32, copy=True) for name, value in values.items()}
        for name, value in copies.items():  # copies: never a view of live state
            self.steps.append(step)
            self.names.append(name)
            self.values.append(value)
        if self.sink is not None:
            self.sink.record(self.member_ids, step, copies)

    def _pending(self) -> pd.DataFrame:
        k = len(self.member_ids)
        values = torch.stack(self.values).cpu().numpy() if self.values else np.zeros((0, k), np.float32)
        return pd.DataFrame(
            {
                "member": np.tile(np.asarray(self.member_ids, dtype=np.int64), len(self.steps)),
                "step": np.repeat(np.asarray(self.steps, dtype=np.int64), k),
                "metric": np.repeat(np.asarray(self.names, dtype=str), k),
                "value": values.reshape(-1),
            }
        )

    def _part_files(self) -> list[tuple[int, Path]]:
        if self.parts is None:
            return []
        files = self.parts.glob(f"{self.prefix}-*.parquet")
        return sorted((int(p.stem.rpartition("-")[2]), p) for p in files)

    def flush(self, until: int) -> None:
        """Append the pending records (steps below ``until``) to the parts, atomically."""
        if self.sink is not None:
            self.sink.flush()
        if self.parts is None or not self.steps:
            return
        frame = self._pending()
        results.atomic_write(self.parts / f"{self.prefix}-{until:08d}.parquet", lambda tmp: frame.to_parquet(tmp))
        self.steps, self.names, self.values = [], [], []

    def drop_after(self, step: int) -> None:
        """Remove parts of steps from ``step`` on: written after the checkpoint a resume starts from."""
        for until, path in self._part_files():
            if until > step:
                path.unlink()

    def frame(self) -> pd.DataFrame:
        """Every record: ``member``, ``step``, ``metric``, ``value`` (float32)."""
        frames = [pd.read_parquet(path) for _, path in self._part_files()]
        return pd.concat([*frames, self._pending()], ignore_index=True)


# ----------------------------------------------------------------------------- the population's state


class Carry(NamedTuple):
    """What a training step reads and writes, passed on by value: a block of steps is then a pure function of
    it, which ``torch.compile`` traces whole. Every tensor but the parameters' is ``[K]``."""

    params: dict[str, Tensor]  # the task's parameters and logit_scale
    optimizer: dict[str, Tensor]  # the optimizer's state
    alive: Tensor
    diverged_step: Tensor  # -1 while alive
    last_tau: Tensor  # a diverged member's τ at its last finite step
    previous_tau: Tensor  # every member's τ at the step before this one (at step 0: its τ)
    window_loss: Tensor  # the loss summed since the last logging step


@dataclass
class PopulationState:
    """Everything a population carries from one step to the next; a checkpoint is its ``state_dict()``.

    ``params`` are the task's parameters and the temperature's ``logit_scale`` (the same tensors, updated in
    place); every other tensor is ``[K]``, one value per member.
    """

    params: dict[str, Tensor]
    optimizer: Optimizer
    log: MetricLog
    alive: Tensor
    pruned: Tensor
    diverged_step: Tensor  # -1 while alive
    last_tau: Tensor  # a diverged member's τ at its last finite step
    previous_tau: Tensor  # every member's τ at the step before this one (at step 0: its τ)
    window_loss: Tensor  # the loss summed since the last logging step
    window_steps: int = 0
    step: int = 0  # the next step to take; steps + 1 once the population has finished
    embeddings: list[tuple[int, Tensor]] = field(default_factory=list)

    @classmethod
    def start(cls, params: dict[str, Tensor], optimizer: Optimizer, log: MetricLog, tau: Tensor) -> PopulationState:
        """Step 0 (``tau``: its τ ``[K]``): every member alive."""
        scale = params["logit_scale"]
        k, device = len(scale), scale.device
        nan = torch.full((k,), math.nan, dtype=scale.dtype, device=device)
        return cls(
            params,
            optimizer,
            log,
            alive=torch.ones(k, dtype=torch.bool, device=device),
            pruned=torch.zeros(k, dtype=torch.bool, device=device),
            diverged_step=torch.full((k,), -1, device=device),
            last_tau=nan,
            previous_tau=tau.clone(),  # at step 0, a member that diverges keeps the τ of that step
            window_loss=torch.zeros(k, device=device),
        )

    def carry(self) -> Carry:
        """The tensors a step reads and writes."""
        tracked = (self.alive, self.diverged_step, self.last_tau, self.previous_tau, self.window_loss)
        return Carry(dict(self.params), dict(self.optimizer.state), *tracked)

    def assign(self, carry: Carry) -> None:
        """Take a step's results, copied into this state's own tensors (the task and the temperature hold the
        parameters; a CUDA graph reuses its outputs' memory at its next replay)."""
        for name, value in [*carry.params.items(), *carry.optimizer.items()]:
            own = self.params[name] if name in self.params else self.optimizer.state[name]
            if value is not own:
                own.copy_(value)
        for name in Carry._fields[2:]:
            if getattr(carry, name) is not getattr(self, name):
                getattr(self, name).copy_(getattr(carry, name))

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors (on the CPU), lists and numbers."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "params": {n: p.cpu() for n, p in self.params.items()},
            "optimizer": {n: v.cpu() for n, v in self.optimizer.state_dict().items()},
            **{n: getattr(self, n).cpu() for n in ("alive", "pruned", "diverged_step", "last_tau", "previous_tau")},
            "window_loss": self.window_loss.cpu(),
            "window_steps": self.window_steps,
            "embedding_steps": [s for s, _ in self.embeddings],
            "embeddings": [e for _, e in self.embeddings],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state["params"].items():
            self.params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        device = self.alive.device
        for name in ("alive", "pruned", "diverged_step", "last_tau", "previous_tau", "window_loss"):
            setattr(self, name, state[name].to(device))
        self.step, self.window_steps = state["step"], state["window_steps"]
        self.embeddings = list(zip(state["embedding_steps"], state["embeddings"], strict=True))

    def output(self) -> dict[str, Any]:
        """What ``train_population`` returns."""
        return {
            "alive": self.alive.cpu(),
            "diverged_step": self.diverged_step.cpu(),
            "pruned": self.pruned.cpu(),
            "log": self.log,
            "embeddings": self.embeddings,
            "params": {n: p.cpu() for n, p in self.params.items()},
        }


def _save(checkpoint: Path | None, state: PopulationState, identity: dict[str, str]) -> None:
    if checkpoint is None:
        return
    state.log.flush(state.step)  # the metrics first: a part past the checkpoint is dropped on resume
    saved = state.state_dict() | {"config": identity, "config_hash": config_hash(identity)}
    results.atomic_write(checkpoint, lambda tmp: torch.save(saved, tmp))


def _resume(checkpoint: Path | None, state: PopulationState, identity: dict[str, str]) -> None:
    if checkpoint is None:
        return
    if checkpoint.exists():
        saved = load_checkpoint(checkpoint)
        if saved.get("config_hash") != config_hash(identity):
            check_same_config(checkpoint, saved.get("config", {}), identity)
        try:
            state.load_state_dict(saved)
        except (KeyError, RuntimeError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{checkpoint}: does not fit this population ({type(err).__name__}); delete it to train that "
                "chunk again from step 0"
            ) from None
    state.log.drop_after(state.step)


# ----------------------------------------------------------------------------- the step


class StepInputs(NamedTuple):
    """What a step takes besides the ``Carry``; a block's are stacked ``[n, ...]`` (``Training.inputs``)."""

    step: int | Tensor
    batch: Any  # Task.batch(step)
    scheduled: Tensor | None  # [K]: the scheduled members' τ (Temperature.schedule), None if there are none
    lam: Tensor | None  # ctkd's λ(step) (Temperature.schedule); None: computed from the step


def _finite_per_member(tensors: list[Tensor]) -> Tensor:
    return torch.stack([torch.isfinite(t).reshape(t.shape[0], -1).all(-1) for t in tensors]).all(0)


@dataclass
class Training:
    """The training step as pure functions of the ``Carry``: ``forward`` (τ, the task's loss and gradients,
    divergence at this very step), ``update`` (the masked optimizer, the clamp of learnable τ), ``log_step`` (both,
    with the metrics a logging step records), and ``block``: n steps in one call, the engine's path between
    logging steps. No host syncs: a block runs ahead."""

    task: Task
    temperature: Temperature
    optimizer: Optimizer
    trains_tau: bool  # else logit_scale is left out of the update: fewer ops per step
    bf16: bool  # the task's step under autocast to bfloat16

    def forward(
        self, c: Carry, x: StepInputs, check: bool = False, step_fn: Callable[..., StepResult] | None = None
    ) -> tuple[Carry, Tensor, StepResult, dict[str, Tensor]]:
        """Every member's loss and gradients (``∂L/∂logit_scale`` too when τ is trained or ``check``) at its τ of
        ``x.step``; members whose loss (with ``check``, at logging steps: gradients and parameters too) is not
        finite are frozen from this step, keeping the τ of their last finite step (a blown-up learnable τ is
        clamped to a meaningless end). Returns the carry, τ ``[K]``, the task's result and the gradients."""
        scale = c.params["logit_scale"]
        tau = self.temperature.tau(scale, scale, x.scheduled)
        with torch.autocast(tau.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = (step_fn or self.task.step)({n: c.params[n] for n in self.task.params}, tau, x.batch)
        grads = dict(out.grads)
        if self.trains_tau or check:
            grads["logit_scale"] = self.temperature.logit_scale_grad(tau, out.grad_tau, x.step, x.lam)
        finite = torch.isfinite(out.loss)
        if check:
            finite &= _finite_per_member([*grads.values(), *c.params.values()])
        newly = c.alive & ~finite
        c = c._replace(
            alive=c.alive & finite,
            diverged_step=torch.where(newly, x.step, c.diverged_step),
            last_tau=torch.where(newly, c.previous_tau, c.last_tau),
            previous_tau=tau,
            window_loss=c.window_loss + out.loss,  # a frozen member's NaN is masked when the window is logged
        )
        return c, tau, out, grads

    def update(self, c: Carry, grads: dict[str, Tensor]) -> Carry:
        """The optimizer's step on the live members (on learnable τ: live and learnable), then the clamp."""
        masks = {name: c.alive for name in self.task.params}
        if self.trains_tau:
            masks["logit_scale"] = c.alive & self.temperature.learnable
        params, optimizer = self.optimizer.update({n: c.params[n] for n in masks}, grads, masks, c.optimizer)
        params = c.params | params
        params["logit_scale"] = self.temperature.clamp(params["logit_scale"])
        return c._replace(params=params, optimizer=optimizer)

    def step(self, c: Carry, x: StepInputs, step_fn: Callable[..., StepResult] | None = None) -> Carry:
        """One step: ``forward``, then ``update``."""
        c, _, _, grads = self.forward(c, x, step_fn=step_fn)
        return self.update(c, grads)

    def log_step(self, c: Carry, x: StepInputs) -> tuple[Carry, Tensor, dict[str, Tensor]]:
        """A logging step: ``forward`` with every check, the metrics it logs (each ``[K]``), then ``update``, the
        loss window restarted. Returns the updated carry, τ and the metrics: ``window_loss`` (the loss summed over
        the window, this step's included), the gradient norms (all, ``∂L/∂logit_scale``'s, each parameter's), τ
        (a diverged member's at its last finite step), ``logit_scale`` and, for a task that returns similarities,
        ``effective_negatives`` (the mean over this process's rows). One call: compiled, one graph."""
        c, tau, out, grads = self.forward(c, x, check=True)
        values = {
            "window_loss": c.window_loss,
            "grad_norm": metrics.grad_norm(out.grads.values()),
            "grad_norm_tau": grads["logit_scale"].abs(),
            "tau": torch.where(c.diverged_step >= 0, c.last_tau, tau),
            "logit_scale": c.params["logit_scale"],
            **{f"grad_norm.{n}": metrics.grad_norm([g]) for n, g in out.grads.items()},
        }
        if out.sims is not None:
            values["effective_negatives"] = metrics.effective_negatives(out.sims, tau).reshape(len(tau), -1).mean(-1)
        c = self.update(c._replace(window_loss=torch.zeros_like(c.window_loss)), grads)
        return c, tau, values

    def block(self, c: Carry, xs: StepInputs, step_fn: Callable[..., StepResult] | None = None) -> Carry:
        """``len(xs.step)`` steps in one call, each ``forward`` then ``update``; ``xs`` from ``inputs``."""
        for i in range(len(xs.step)):
            c = self.step(c, _step_inputs(xs, i), step_fn)
        return c

    def flat_step(self, spec: pytree.TreeSpec) -> Callable[[list[Tensor], dict[str, Any]], list[Tensor]]:
        """``step`` on flat tensors, the form torch traces: the carry's leaves (``spec`` its structure) and the
        step's inputs as a dict of the fields that are not None (a ``Carry`` argument stops dynamo in torch 2.11)."""
        return lambda leaves, given: pytree.tree_leaves(self.step(pytree.tree_unflatten(leaves, spec), _inputs(given)))

    def scan(self, c: Carry, xs: StepInputs) -> Carry:
        """``block`` as torch's ``scan`` higher-order op, for ``torch.compile``: the step is traced once, whatever
        the block's length (an unrolled loop compiles for minutes)."""
        leaves, spec = pytree.tree_flatten(c)
        step = self.flat_step(spec)

        def body(leaves: list[Tensor], given: dict[str, Any]) -> tuple[list[Tensor], Tensor]:
            # scan takes flat tensors, none of them an input's alias (an unchanged one is cloned)
            return [t.clone() for t in step(leaves, given)], given["step"].clone()

        # scan's initial carry may alias none of its inputs: after a logging step a fixed τ is the temperature's
        # own buffer
        leaves, _ = scan(body, [t.clone() for t in leaves], _given(xs))
        return pytree.tree_unflatten(leaves, spec)

    def inputs(self, start: int, n: int) -> StepInputs:
        """The inputs of steps ``start … start + n − 1``, stacked ``[n, ...]``."""
        scheduled, lam = self.temperature.schedule(start, n)
        steps = torch.arange(start, start + n, device=self.temperature.tau_init.device)
        return StepInputs(steps, self.task.batches(start, n), scheduled, lam)


def _block_end(experiment: config.Experiment, step: int) -> int:
    """The first step after ``step`` that is logged or evaluated, or that a checkpoint is written before."""
    every = (experiment.log_every, experiment.eval_every, experiment.checkpoint_every or experiment.steps)
    return min(experiment.steps, *((step // e + 1) * e for e in every))


def _rows(xs: StepInputs, start: int) -> StepInputs:
    """Steps ``start …`` of a block's stacked inputs (views)."""
    return pytree.tree_map(lambda x: None if x is None else x[start:], xs)


def _step_inputs(xs: StepInputs, i: int) -> StepInputs:
    """Step ``i`` of a block's stacked inputs."""
    return StepInputs(xs.step[i], index_batch(xs.batch, i), *(None if v is None else v[i] for v in xs[2:]))


@functools.cache
def _compile(fn: Callable[..., Any], dynamic: bool | None = False, whole: bool = False) -> Callable[..., Any]:
    """``torch.compile(fn)``, made once per process: a wrapper costs about 0.5 ms, and dynamo keeps its graphs per
    function anyway (a population of the same shapes runs the graphs of the first). ``whole``: ``fullgraph``, with
    inductor's ``cpp_wrapper`` (a ``scan``'s loop runs in C++)."""
    return torch.compile(fn, dynamic=dynamic, fullgraph=whole, options={"cpp_wrapper": True} if whole else None)


def _flat_log_step(
    training: Training, spec: pytree.TreeSpec, leaves: list[Tensor], given: dict[str, Any]
) -> tuple[list[Tensor], Tensor, dict[str, Tensor]]:
    """``Training.log_step`` on flat tensors (``flat_step``'s form)."""
    c, tau, values = training.log_step(pytree.tree_unflatten(leaves, spec), _inputs(given))
    return pytree.tree_leaves(c), tau, values


def _compiled_log_step(training: Training) -> Callable[[Carry, StepInputs], tuple[Carry, Tensor, dict[str, Tensor]]]:
    """``training.log_step`` compiled on flat tensors (a logging step run eagerly was most of a compiled K = 5
    population's time outside its blocks; docs/benchmarks.md)."""

    def log_step(c: Carry, x: StepInputs) -> tuple[Carry, Tensor, dict[str, Tensor]]:
        leaves, spec = pytree.tree_flatten(c)
        leaves, tau, values = _compile(_flat_log_step)(training, spec, leaves, _given(x))
        return pytree.tree_unflatten(leaves, spec), tau, values

    return log_step


Interval = Callable[[Carry, StepInputs], tuple[Carry, Tensor, dict[str, Tensor], Tensor]]
Block = Callable[[Carry, StepInputs], Carry]


def _then(log_step: Callable[[Carry, StepInputs], tuple[Carry, Tensor, dict[str, Tensor]]], block: Block) -> Interval:
    """An interval: ``log_step`` on the first of the stacked inputs ``xs``, then ``block`` on the rest (if any).
    Returns the carry after both, and the logging step's τ, metrics and ``alive`` (the members its loss is logged
    for)."""

    def interval(c: Carry, xs: StepInputs) -> tuple[Carry, Tensor, dict[str, Tensor], Tensor]:
        logged, tau, values = log_step(c, _step_inputs(xs, 0))
        return block(logged, _rows(xs, 1)) if len(xs.step) > 1 else logged, tau, values, logged.alive

    return interval


def _calls(training: Training, compile: bool, device: torch.device) -> tuple[Interval, Block]:
    """The loop's two calls: ``interval`` (a logging step and the block of steps after it) and ``block`` (steps that
    follow an evaluation or a checkpoint). Eager: ``Training.log_step`` and ``Training.block``. With ``compile``, the
    logging step compiled on flat tensors, and on the CPU ``_compiled_scan``, on a GPU ``CudaGraphBlocks``. (The
    logging step and the block compiled as one graph saved 1 ms of 34 at K = 5 and took 3 s more to compile: torch
    caches no graph with a ``scan`` between processes; docs/benchmarks.md.)"""
    if not compile:
        return _then(training.log_step, training.block), training.block
    block = CudaGraphBlocks(training) if device.type == "cuda" else _compiled_scan(training)
    return _then(_compiled_log_step(training), block), block


def _scan(training: Training, c: Carry, xs: StepInputs) -> Carry:
    return training.scan(c, xs)


def _compiled_scan(training: Training) -> Block:
    """``training.scan`` compiled whole (``fullgraph``, with inductor's ``cpp_wrapper``: the scan's loop runs in
    C++), one graph for every length. A task's step that torch cannot capture whole inside ``scan`` (a graph
    break: a read of a tensor's value, an unsupported op) falls back, with one warning, to the eager block around
    the task's step compiled alone."""
    step_fn: list[Callable[..., StepResult]] = []  # the fallback's

    def block(c: Carry, xs: StepInputs) -> Carry:
        if not step_fn:
            try:
                if len(xs.step) > 1:  # one graph for every length (torch specialises a length of 1)
                    for t in pytree.tree_leaves(xs):
                        if t is not None:
                            torch._dynamo.mark_dynamic(t, 0)
                return _compile(_scan, dynamic=None, whole=True)(training, c, xs)
            except torch._dynamo.exc.TorchDynamoException as err:  # raised while tracing, before any step ran
                warn(
                    f"compile: this task's block of steps is not traceable whole ({type(err).__name__}); "
                    "its steps run one by one, each compiled"
                )
                step_fn.append(torch.compile(training.task.step, dynamic=False))
        return training.block(c, xs, step_fn[0])

    return block


class CudaGraphBlocks:
    """A GPU's compiled blocks: the step (``forward`` and ``update``) compiled by inductor into fused kernels,
    and a block of n steps captured once as a CUDA graph (one per block length), then replayed: a block costs
    one launch from the host, whatever its steps. The graph reads its own copy of the carry and of the block's
    inputs (filled before each replay: a block may follow a logging step whose carry the state has not taken yet),
    and writes its outputs to fixed tensors, valid until the next replay (``PopulationState.assign`` copies them
    out)."""

    def __init__(self, training: Training) -> None:
        self.training = training
        self.step: Callable[[list[Tensor], dict[str, Any]], list[Tensor]] | None = None  # compiled at first use
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[Tensor], Carry]] = {}

    def steps(self, c: Carry, xs: StepInputs, n: int | None = None) -> Carry:
        """The block the graph records (its first ``n`` steps): each step reads its inputs in place, views of
        the stack (``_aligned``: a misaligned view would be copied by inductor at every step)."""
        leaves, spec = pytree.tree_flatten(c)
        if self.step is None:
            self.step = torch.compile(self.training.flat_step(spec), dynamic=False)
        for i in range(len(xs.step) if n is None else n):
            leaves = self.step(leaves, _given(_step_inputs(xs, i)))
        return pytree.tree_unflatten(leaves, spec)

    def capture(self, c: Carry, xs: StepInputs) -> tuple[torch.cuda.CUDAGraph, list[Tensor], Carry]:
        c, xs = pytree.tree_map(torch.clone, c), pytree.tree_map(_aligned, xs)
        if self.step is None:  # the step compiles at its first call: outside the capture, on a side stream
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.steps(c, xs, n=1)
            torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (a data loader, JAX's runtime) do not break the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            outputs = self.steps(c, xs)
        return graph, _tensors((c, xs)), outputs

    def __call__(self, c: Carry, xs: StepInputs) -> Carry:
        n = len(xs.step)
        if n not in self.graphs:
            self.graphs[n] = self.capture(c, xs)
        graph, inputs, outputs = self.graphs[n]
        for fixed, value in zip(inputs, _tensors((c, xs)), strict=True):
            if value is not fixed:
                fixed.copy_(value)
        graph.replay()
        return outputs


def _aligned(x: Any) -> Any:
    """A copy of stacked inputs ``[n, ...]`` whose rows start at multiples of 16 bytes (each row padded), so that
    row ``i`` is an aligned view: inductor's kernels assume aligned inputs and copy any other."""
    if not isinstance(x, Tensor) or x.dim() == 0:
        return x
    per_16 = max(1, 16 // x.element_size())
    row = -(-x[0].numel() // per_16) * per_16
    out = torch.empty(len(x) * row, dtype=x.dtype, device=x.device)
    out = out.as_strided(x.shape, (row, *torch.empty(x.shape[1:], device="meta").stride()))
    return out.copy_(x)


def _given(x: StepInputs) -> dict[str, Any]:
    """The fields of ``x`` that are not None: torch's ``scan`` and a compiled step take tensors only."""
    return {name: value for name, value in x._asdict().items() if value is not None}


def _inputs(given: dict[str, Any]) -> StepInputs:
    """``_given``'s inverse."""
    return StepInputs(**(dict.fromkeys(StepInputs._fields) | given))


def _tensors(tree: Any) -> list[Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]


# ----------------------------------------------------------------------------- logging, evaluation, Ctrl-C


def _log(
    state: PopulationState, step: int, task: Task, tau: Tensor, values: dict[str, Tensor], logged: Tensor
) -> Tensor:
    """Record ``Training.log_step``'s metrics (the window's mean loss for the ``logged`` members ``[K]``, NaN for
    the others) and the task's diagnostics, on the parameters the step started from (the state's, not yet
    updated). Returns the mean losses ``[K]``."""
    values = dict(values)
    values["loss"] = torch.where(logged, values.pop("window_loss") / state.window_steps, math.nan)
    if "effective_negatives" in values:
        values["effective_negatives"] = distributed.mean(values["effective_negatives"])
    state.log.record(step, values | task.diagnostics(task.params, tau, step))
    state.window_steps = 0
    return values["loss"]


def _evaluate(state: PopulationState, step: int, task: Task, on_eval: Callable | None) -> Tensor | None:
    """Evaluate every member, keep the embeddings, and freeze the members a search's pruner stops: returns them
    ``[K]`` (None without a pruner)."""
    if on_eval is None and not distributed.is_main():
        return None  # under torchrun process 0 evaluates and writes; a pruner needs the evaluation on every process
    with torch.no_grad():
        evaluation = task.evaluate(task.params)
        state.log.record(step, evaluation)
        embedded = task.embed(task.params)
        if embedded is not None:
            state.embeddings.append((step, embedded.float().cpu()))
    prune = on_eval(step, evaluation) if on_eval else None
    if prune is None:
        return None
    prune = prune.to(state.alive.device) & state.alive
    state.pruned |= prune
    state.alive &= ~prune
    return prune


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; the stop of a scheduler, ``timeout`` or ``kill``


@contextlib.contextmanager
def _interrupt_after_step() -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) or SIGTERM during training sets a flag (the signal's number) the loop reads after each
    step, so that the population checkpoints a consistent state before it stops; a second signal has its
    usual effect at once. Only the main thread can take signals: elsewhere they keep their usual effect."""
    interrupted = [0]
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def handler(signum: int, frame: Any) -> None:
        interrupted[0] = signum
        restore()

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield interrupted
    finally:
        restore()


# ----------------------------------------------------------------------------- the loop


def train_population(
    experiment: config.Experiment,
    rows: list[dict[str, Any]],
    device: torch.device,
    checkpoint: Path | None = None,
    progress: bool = False,
    on_eval: Callable[[int, dict[str, Tensor]], Tensor | None] | None = None,
    label: str = "population",
    sink: MetricSink | None = None,
) -> dict[str, Any]:
    """Train one population (a chunk of members) to the end; resumes from ``checkpoint`` if it exists.

    ``on_eval(step, evaluation)`` is called at every evaluation with the ``{metric: [K]}`` just
    measured; it may return ``[K]`` bools of members to prune (a search's pruner): they are frozen
    from that step on, like diverged members, with status ``pruned``. ``sink`` gets every metric record.

    Returns ``alive``, ``pruned`` and ``diverged_step`` per member, the metric log, the
    embeddings and the final parameters.
    """
    # setup: the task, the temperature of every member, one optimizer over both; resume from the checkpoint
    steps, t = experiment.steps, experiment.temperature
    task: Task = TASKS[experiment.task](experiment, rows, device)
    taus, modes = [r["tau_init"] for r in rows], [r["tau_mode"] for r in rows]
    temperature = Temperature(taus, modes, t.tau_min, t.tau_max, t.period).to(device)
    params = {**task.params, "logit_scale": temperature.logit_scale.data}
    trains_tau = bool(temperature.learnable.any())  # else logit_scale is left out: fewer ops per step
    optimizer = build_optimizer(experiment.optimizer, params if trains_tau else task.params, rows)
    writes = distributed.is_main()  # under torchrun, process 0 writes; the others read a checkpoint to resume
    parts = None if checkpoint is None or not writes else checkpoint.parent.parent / "metrics"
    log = MetricLog([r["member"] for r in rows], parts, None if checkpoint is None else checkpoint.stem, sink)
    state = PopulationState.start(params, optimizer, log, temperature(0).detach())
    identity = {} if checkpoint is None else fingerprint(experiment) | {"members": json.dumps(rows, sort_keys=True)}
    _resume(checkpoint, state, identity)
    training = Training(task, temperature, optimizer, trains_tau, experiment.precision == "bf16")
    interval, block = _calls(training, experiment.compile, device)
    bar = Progress(steps, min(state.step, steps), label, progress and writes)
    saves = checkpoint if writes else None

    with _interrupt_after_step() as interrupted, contextlib.closing(bar):
        step = state.step
        while step <= steps:
            last = step == steps
            logging, evaluating = step % experiment.log_every == 0 or last, step % experiment.eval_every == 0 or last
            # the evaluation reads the parameters this step starts from; a search's pruner may freeze members
            pruned = _evaluate(state, step, task, on_eval) if evaluating else None
            # a logging step runs alone, the steps up to the next event (at most block_steps) as one block after it
            start = step + logging
            n = 0 if last else min(experiment.block_steps, _block_end(experiment, step) - start)
            xs = training.inputs(step, start - step + n)
            if logging:
                # the logging step (forward and backward, divergence with gradients and parameters checked too, the
                # metrics, the update), then the block after it; the task's diagnostics see the parameters the step
                # started from: the state's, until it takes the interval's carry
                before = state.carry()
                carry, tau, values, alive = interval(before, xs)
                state.window_steps += 1
                losses = _log(state, step, task, tau, values, alive if pruned is None else alive | pruned)[alive]
                bar.status(int(alive.sum()), len(rows), *((losses.min(), losses.max()) if len(losses) else ()))
                if last:  # the final step measures; its update is not taken
                    carry = carry._replace(params=before.params, optimizer=before.optimizer)
            else:
                carry = block(state.carry(), xs)
            state.assign(carry)  # divergence inside a block is recorded at its exact step
            state.window_steps += n
            if evaluating:
                state.log.flush(step + 1)  # a running run's metrics are readable from its evaluations on
            if last:
                break
            step = state.step = start + n
            bar.update(step)
            # checkpoint; after Ctrl-C or SIGTERM (read between blocks), one more and stop: a resume starts here
            if interrupted[0] or (experiment.checkpoint_every and step % experiment.checkpoint_every == 0):
                _save(saves, state, identity)
            if interrupted[0]:
                raise Stopped(interrupted[0])

    if state.step <= steps:  # not resumed from a finished checkpoint
        state.step = steps + 1
        _save(saves, state, identity)
    return state.output()


def chunks(experiment: config.Experiment, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split the members into populations: each run of consecutive rows of one ``batch_size`` (a sweep axis of
    the contrastive tasks; every member of a population takes the same step shapes), cut into pieces that fit
    ``memory_budget_mb`` at that size. The populations, end to end, are ``rows`` in their order (``tables``)."""
    populations = []
    for batch_size, run in itertools.groupby(rows, key=lambda row: row.get("batch_size")):
        sized = experiment
        if batch_size is not None:  # a member's memory grows with its batch
            sized = experiment.model_copy(
                update={"data": experiment.data.model_copy(update={"batch_size": batch_size})}
            )
        per_member = TASKS[experiment.task].member_bytes(sized)
        size = max(1, int(experiment.memory_budget_mb * 2**20 // per_member))
        group = list(run)
        populations += [group[i : i + size] for i in range(0, len(group), size)]
    return populations


def tables(rows: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The members, metrics and embeddings tables of a finished sweep."""
    metric_frames, embedding_frames, status, diverged = [], [], [], []
    offset = 0
    for output in outputs:
        ids = [r["member"] for r in rows[offset : offset + len(output["alive"])]]
        offset += len(ids)
        metric_frames.append(output["log"].frame())
        status += [
            "pruned" if p else "ok" if a else "diverged"
            for a, p in zip(output["alive"].tolist(), output["pruned"].tolist(), strict=True)
        ]
        diverged += output["diverged_step"].tolist()
        for step, emb in output["embeddings"]:
            k, n, d = emb.shape
            frame = pd.DataFrame(emb.reshape(k * n, d).numpy(), columns=[f"e{i}" for i in range(d)])
            frame.insert(0, "point", np.tile(np.arange(n), k))
            frame.insert(0, "step", step)
            frame.insert(0, "member", np.repeat(ids, n))
            embedding_frames.append(frame)
    # a canonical row order, whatever the chunking
    metrics_df = pd.concat(metric_frames).sort_values(["member", "step", "metric"], kind="stable", ignore_index=True)
    final = metrics_df.sort_values("step").groupby(["member", "metric"])["value"].last().unstack("metric")
    members_df = pd.DataFrame(rows)
    members_df["status"] = status
    members_df["diverged_step"] = pd.array([s if s >= 0 else None for s in diverged], dtype="Int64")
    members_df = members_df.join(final, on="member")
    out = {"members": members_df, "metrics": metrics_df}
    if embedding_frames:
        out["embeddings"] = pd.concat(embedding_frames).sort_values(
            ["member", "step"], kind="stable", ignore_index=True
        )
    return out


def run_sweep(
    experiment: config.Experiment,
    name: str,
    run_dir: Path | None = None,
    root: Path = results.RESULTS_DIR,
    progress: bool = False,
    rows: list[dict[str, Any]] | None = None,
    on_eval: Callable[[list[dict[str, Any]], int, dict[str, Tensor]], Tensor | None] | None = None,
    sink: MetricSink | None = None,
) -> tuple[Path | None, dict[str, pd.DataFrame]]:
    """Train every member of ``experiment`` and write its run directory.

    Ctrl-C or SIGTERM checkpoints the step it stopped at and raises ``Interrupted`` with the run directory
    and the signal.
    With ``run_dir`` given (``--resume``), continue that run from its checkpoints; its ``config.toml`` must
    match ``experiment`` but for ``RESUMABLE_CHANGES``. ``rows`` trains these members instead of the grid (a
    search's trials). ``on_eval(chunk, step, evaluation)`` is ``train_population``'s pruning hook, given the
    rows of the population it evaluated. ``sink`` gets every metric record; it is closed after each population.

    Under torchrun (``tau_lab.distributed``) only process 0 creates and writes the run directory; another
    process given no ``run_dir`` trains without one (and returns ``None`` for it), given one (a resume) it
    reads the checkpoints there.
    """
    device = resolve_device(experiment.device)
    rows = config.members(experiment) if rows is None else rows
    writes = distributed.is_main()
    if run_dir is None and writes:
        run_dir = results.new_run_dir(name, root, results.run_files(config.dumps(experiment), device))
    elif run_dir is not None:
        path = run_dir / "config.toml"
        recorded = config.validate(tomllib.loads(path.read_text()), str(path))
        check_same_config(path, fingerprint(recorded), fingerprint(experiment))
    if writes and not (run_dir / "members.parquet").is_file():  # the grid while it trains: plot and report read it
        results.write_table(pd.DataFrame(rows).assign(status="running"), run_dir / "members")
    outputs = []
    populations = chunks(experiment, rows)
    for i, chunk in enumerate(populations):
        checkpoint = None if run_dir is None else run_dir / "checkpoints" / f"chunk-{i}.pt"
        hook = None if on_eval is None else functools.partial(on_eval, chunk)
        label = f"chunk {i + 1}/{len(populations)}"
        try:
            outputs.append(train_population(experiment, chunk, device, checkpoint, progress, hook, label, sink))
        except KeyboardInterrupt as err:  # a second signal stops at once: SIGINT's KeyboardInterrupt
            raise Interrupted(run_dir, getattr(err, "signum", signal.SIGINT)) from None
        finally:
            if sink is not None:
                sink.close()
    out = tables(rows, outputs)
    for table_name, df in out.items() if writes else ():
        results.write_table(df, run_dir / table_name, csv=table_name == "members")
    return run_dir, out
