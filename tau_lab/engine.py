"""The lockstep loop: all members of a population take every step together, as one computation.

A sweep's members (grid × seeds) are split into chunks that fit the memory budget; each chunk is a
population whose parameters are stacked on a leading member axis. Per step the task returns the
loss and gradients of every member, the optimizer updates the live ones, and learnable
temperatures are clamped. A member whose loss (or, at logging steps, gradient or parameters)
turns non-finite is marked diverged at that step and frozen; the others go on.

A run directory keeps, per chunk i, ``checkpoints/chunk-{i}.pt`` (the ``PopulationState.state_dict()``
and the run's configuration; see ``tau_lab.checkpoint``) and the metrics it logged, appended as
``metrics/chunk-{i}-{until:08d}.parquet`` parts (the records of steps below ``until``) at every checkpoint
and evaluation, so a checkpoint never rewrites the log and a running run's metrics can be read
(``results.read_metrics``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

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
from tau_lab.tasks.base import StepResult, Task
from tau_lab.temperature import Temperature


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``run_sweep``: ``run_dir`` is left resumable (``tau-lab sweep --resume RUN_DIR``)."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted: continue with tau-lab sweep --resume {run_dir}")
        self.run_dir = run_dir


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is available; ``cuda`` without it is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device = 'cuda' was asked for, but no CUDA device is available: use cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- the metric log


class MetricLog:
    """Per-member values ``[K]`` recorded at steps; becomes the long metrics table.

    With ``parts`` (a directory) and ``prefix``, ``flush(until)`` appends the records made since the last
    flush as ``parts/{prefix}-{until:08d}.parquet``; ``frame()`` reads them back before the records in memory.
    """

    def __init__(self, member_ids: list[int], parts: Path | None = None, prefix: str = "") -> None:
        self.member_ids, self.parts, self.prefix = member_ids, parts, prefix
        self.steps: list[int] = []
        self.names: list[str] = []
        self.values: list[Tensor] = []

    def record(self, step: int, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            self.steps.append(step)
            self.names.append(name)
            self.values.append(value.detach().to(torch.float32, copy=True))  # never a view of live state

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
    previous_tau: Tensor  # every member's τ at the step before this one
    window_loss: Tensor  # the loss summed since the last logging step
    window_steps: int = 0
    step: int = 0  # the next step to take; steps + 1 once the population has finished
    embeddings: list[tuple[int, Tensor]] = field(default_factory=list)

    @classmethod
    def start(cls, params: dict[str, Tensor], optimizer: Optimizer, log: MetricLog) -> PopulationState:
        """Step 0: every member alive."""
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
            previous_tau=nan,
            window_loss=torch.zeros(k, device=device),
        )

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


# ----------------------------------------------------------------------------- one step's bookkeeping


def _finite_per_member(tensors: list[Tensor]) -> Tensor:
    return torch.stack([torch.isfinite(t).reshape(t.shape[0], -1).all(-1) for t in tensors]).all(0)


def _mark_divergence(state: PopulationState, step: int, tau: Tensor, out: StepResult, checked: list[Tensor]) -> None:
    """Freeze members whose loss (or any of ``checked``: gradients and parameters at logging steps) is not
    finite; keep the τ of their last finite step (a blown-up learnable τ is clamped to a meaningless end)."""
    finite = torch.isfinite(out.loss)
    if checked:
        finite &= _finite_per_member(checked)
    newly = state.alive & ~finite
    state.diverged_step = torch.where(newly, step, state.diverged_step)
    state.last_tau = torch.where(newly, tau if step == 0 else state.previous_tau, state.last_tau)
    state.previous_tau = tau
    state.alive &= finite
    state.window_loss += out.loss  # a frozen member's NaN is masked when the window is logged
    state.window_steps += 1


def _log(
    state: PopulationState,
    step: int,
    task: Task,
    temperature: Temperature,
    tau: Tensor,
    out: StepResult,
    grads: dict[str, Tensor],
) -> dict[str, Tensor]:
    """The logging step's metrics, each ``[K]``: the window's mean loss, gradient norms, τ, hardness, the
    task's diagnostics."""
    values = {
        "loss": torch.where(state.alive, state.window_loss / state.window_steps, math.nan),
        "grad_norm": metrics.grad_norm(out.grads.values()),
        "grad_norm_tau": grads["logit_scale"].abs(),
        "tau": torch.where(state.diverged_step >= 0, state.last_tau, tau),
        "logit_scale": temperature.logit_scale.detach(),
    }
    if out.sims is not None:
        k = len(tau)
        mean = metrics.effective_negatives(out.sims, tau).reshape(k, -1).mean(-1)  # of this process's rows
        values["effective_negatives"] = distributed.mean(mean)
    values |= {f"grad_norm.{n}": metrics.grad_norm([g]) for n, g in out.grads.items()}
    state.log.record(step, values | task.diagnostics(task.params, tau, step))
    state.window_loss.zero_()
    state.window_steps = 0
    return values


def _evaluate(state: PopulationState, step: int, task: Task, on_eval: Callable | None) -> None:
    """Evaluate every member, keep the embeddings, and freeze the members a search's pruner stops."""
    if on_eval is None and not distributed.is_main():
        return  # under torchrun process 0 evaluates and writes; a pruner needs the evaluation on every process
    with torch.no_grad():
        evaluation = task.evaluate(task.params)
        state.log.record(step, evaluation)
        embedded = task.embed(task.params)
        if embedded is not None:
            state.embeddings.append((step, embedded.float().cpu()))
    prune = on_eval(step, evaluation) if on_eval else None
    if prune is not None:
        state.pruned |= prune.to(state.alive.device) & state.alive
        state.alive &= ~state.pruned


@contextlib.contextmanager
def _interrupt_after_step() -> Iterator[list[bool]]:
    """Ctrl-C (SIGINT) during training sets a flag the loop reads after each step, so that the population
    checkpoints a consistent state before it stops; a second Ctrl-C stops at once. Only the main thread
    can take signals: elsewhere Ctrl-C keeps its usual effect."""
    interrupted = [False]
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        interrupted[0] = True
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------- the loop


def train_population(
    experiment: config.Experiment,
    rows: list[dict[str, Any]],
    device: torch.device,
    checkpoint: Path | None = None,
    progress: bool = False,
    on_eval: Callable[[int, dict[str, Tensor]], Tensor | None] | None = None,
    label: str = "population",
) -> dict[str, Any]:
    """Train one population (a chunk of members) to the end; resumes from ``checkpoint`` if it exists.

    ``on_eval(step, evaluation)`` is called at every evaluation with the ``{metric: [K]}`` just
    measured; it may return ``[K]`` bools of members to prune (a search's pruner): they are frozen
    from that step on, like diverged members, with status ``pruned``.

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
    trained = params if trains_tau else task.params
    writes = distributed.is_main()  # under torchrun, process 0 writes; the others read a checkpoint to resume
    parts = None if checkpoint is None or not writes else checkpoint.parent.parent / "metrics"
    log = MetricLog([r["member"] for r in rows], parts, None if checkpoint is None else checkpoint.stem)
    state = PopulationState.start(params, build_optimizer(experiment.optimizer, trained, rows), log)
    identity = fingerprint(experiment) | {"members": json.dumps(rows, sort_keys=True)}
    _resume(checkpoint, state, identity)
    step_fn = torch.compile(task.step, dynamic=False) if experiment.compile else task.step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=experiment.precision == "bf16")
    bar = Progress(steps, min(state.step, steps), label, progress and writes)
    saves = checkpoint if writes else None

    with _interrupt_after_step() as interrupted, contextlib.closing(bar):
        for step in range(state.step, steps + 1):
            logging, last = step % experiment.log_every == 0 or step == steps, step == steps
            # forward and backward: every member's loss, gradients and ∂L/∂τ at its τ of this step
            tau = temperature(step).detach()
            with autocast:
                out = step_fn(task.params, tau, task.batch(step))
            grads = dict(out.grads)
            if trains_tau or logging:
                grads["logit_scale"] = temperature.logit_scale_grad(tau, out.grad_tau, step)
            # divergence: non-finite members are frozen (gradients and parameters are checked when logging)
            _mark_divergence(state, step, tau, out, [*grads.values(), *params.values()] if logging else [])
            # logging and evaluation (a search's pruner may freeze members here)
            if logging:
                losses = _log(state, step, task, temperature, tau, out, grads)["loss"][state.alive]
                bar.status(int(state.alive.sum()), len(rows), *((losses.min(), losses.max()) if len(losses) else ()))
            if step % experiment.eval_every == 0 or last:
                _evaluate(state, step, task, on_eval)
                state.log.flush(step + 1)  # a running run's metrics are readable from its evaluations on
            if last:
                break
            # the update of the live members, then the clamp of learnable τ
            masks = {name: state.alive for name in task.params}
            if trains_tau:
                masks["logit_scale"] = state.alive & temperature.learnable
            state.optimizer.step(trained, grads, masks)
            temperature.clamp_()
            state.step = step + 1
            bar.update(state.step)
            # checkpoint; after Ctrl-C, one more and stop: the run resumes from this very step
            if interrupted[0] or (experiment.checkpoint_every and state.step % experiment.checkpoint_every == 0):
                _save(saves, state, identity)
            if interrupted[0]:
                raise KeyboardInterrupt

    if state.step <= steps:  # not resumed from a finished checkpoint
        state.step = steps + 1
        _save(saves, state, identity)
    return state.output()


def chunks(experiment: config.Experiment, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split the members into populations that fit ``memory_budget_mb``."""
    per_member = TASKS[experiment.task].member_bytes(experiment)
    size = max(1, int(experiment.memory_budget_mb * 2**20 // per_member))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


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
) -> tuple[Path | None, dict[str, pd.DataFrame]]:
    """Train every member of ``experiment`` and write its run directory.

    Ctrl-C checkpoints the step it stopped at and raises ``Interrupted`` with the run directory.
    With ``run_dir`` given (``--resume``), continue that run from its checkpoints; its ``config.toml`` must
    match ``experiment`` but for ``RESUMABLE_CHANGES``. ``rows`` trains these members instead of the grid (a
    search's trials). ``on_eval(chunk, step, evaluation)`` is ``train_population``'s pruning hook, given the
    rows of the population it evaluated.

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
            outputs.append(train_population(experiment, chunk, device, checkpoint, progress, hook, label))
        except KeyboardInterrupt:
            raise Interrupted(run_dir) from None
    out = tables(rows, outputs)
    for table_name, df in out.items() if writes else ():
        results.write_table(df, run_dir / table_name, csv=table_name == "members")
    return run_dir, out
