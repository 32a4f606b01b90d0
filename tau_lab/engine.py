"""The lockstep loop: all members of a population take every step together, as one computation.

A sweep's members (grid × seeds) are split into chunks that fit the memory budget; each chunk is a
population whose parameters are stacked on a leading member axis. Per step the task returns the
loss and gradients of every member, the optimizer updates the live ones, and learnable
temperatures are clamped. A member whose loss (or, at logging steps, gradient or parameters)
turns non-finite is marked diverged at that step and frozen; the others go on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from tau_lab import config, metrics, results
from tau_lab.optim import Optimizer
from tau_lab.tasks import TASKS
from tau_lab.temperature import Temperature


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is available; ``cuda`` without it is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' was asked for, but no CUDA device is available: use cpu or auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


class MetricLog:
    """Per-member values ``[K]`` recorded at steps; becomes the long metrics table."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.names: list[str] = []
        self.values: list[Tensor] = []

    def record(self, step: int, values: dict[str, Tensor]) -> None:
        for name, value in values.items():
            self.steps.append(step)
            self.names.append(name)
            self.values.append(value.detach().to(torch.float32, copy=True))  # never a view of live state

    def frame(self, member_ids: list[int]) -> pd.DataFrame:
        values = torch.stack(self.values).cpu().numpy()  # [records, K]
        k = len(member_ids)
        return pd.DataFrame(
            {
                "member": np.tile(member_ids, len(self.steps)),
                "step": np.repeat(self.steps, k),
                "metric": np.repeat(self.names, k),
                "value": values.reshape(-1),
            }
        )


def _finite_per_member(tensors: list[Tensor]) -> Tensor:
    return torch.stack([torch.isfinite(t).reshape(t.shape[0], -1).all(-1) for t in tensors]).all(0)


def train_population(
    experiment: config.Experiment,
    rows: list[dict[str, Any]],
    device: torch.device,
    checkpoint: Path | None = None,
    progress: bool = False,
    on_eval: Callable[[int, dict[str, Tensor]], Tensor | None] | None = None,
) -> dict[str, Any]:
    """Train one population (a chunk of members) to the end; resumes from ``checkpoint`` if it exists.

    ``on_eval(step, evaluation)`` is called at every evaluation with the ``{metric: [K]}`` just
    measured; it may return ``[K]`` bools of members to prune (a search's pruner): they are frozen
    from that step on, like diverged members, with status ``pruned``.

    Returns ``alive``, ``pruned`` and ``diverged_step`` per member, the metric log, the
    embeddings and the final parameters.
    """
    saved = torch.load(checkpoint, weights_only=False) if checkpoint and checkpoint.exists() else None
    if saved and saved["done"]:
        return saved["output"]
    task = TASKS[experiment.task](experiment, rows, device)
    t, opt = experiment.temperature, experiment.optimizer
    temperature = Temperature(
        [r["tau_init"] for r in rows], [r["tau_mode"] for r in rows], t.tau_min, t.tau_max, t.period
    ).to(device)
    params = {**task.params, "logit_scale": temperature.logit_scale.data}
    # logit_scale is trained only when some member's τ is learnable (fewer ops per step otherwise)
    trained = params if temperature.learnable.any() else task.params
    # a task may sweep tau_lr / tau_weight_decay: a member's own value, else the optimizer's
    tau_lr = [r.get("tau_lr") or opt.tau_lr or opt.lr for r in rows]
    tau_wd = [opt.tau_weight_decay if r.get("tau_weight_decay") is None else r["tau_weight_decay"] for r in rows]
    per_member = {"dtype": params["logit_scale"].dtype, "device": device}
    lr = {name: opt.lr for name in task.params} | {"logit_scale": torch.tensor(tau_lr, **per_member)}
    weight_decay = {name: opt.weight_decay for name in task.params}
    weight_decay["logit_scale"] = torch.tensor(tau_wd, **per_member)
    optimizer = Optimizer(opt.name, trained, lr, weight_decay, opt.betas, opt.eps)
    k, steps = len(rows), experiment.steps
    alive = torch.ones(k, dtype=torch.bool, device=device)
    diverged_step = torch.full((k,), -1, device=device)
    pruned = torch.zeros(k, dtype=torch.bool, device=device)
    log, embeddings, start = MetricLog(), [], 0
    window_loss, window_steps = torch.zeros(k, device=device), 0  # the loss logged is the window's mean
    if saved:
        for name, value in saved["params"].items():
            params[name].copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
        alive, diverged_step, start = saved["alive"].to(device), saved["diverged_step"].to(device), saved["step"]
        pruned = saved["pruned"].to(device)
        log, embeddings = saved["log"], saved["embeddings"]
        window_loss, window_steps = saved["window_loss"].to(device), saved["window_steps"]
    step_fn = torch.compile(task.step, dynamic=False) if experiment.compile else task.step
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=experiment.precision == "bf16")
    bar = tqdm(total=steps, initial=start, disable=not progress, unit="step", dynamic_ncols=True)

    for step in range(start, steps + 1):
        tau = temperature(step).detach()
        with autocast:
            out = step_fn(params, tau, task.batch(step))
        logging = step % experiment.log_every == 0 or step == steps
        grads = dict(out.grads)
        if trained is params or logging:
            grads["logit_scale"] = temperature.logit_scale_grad(tau, out.grad_tau, step)
        finite = torch.isfinite(out.loss)
        if logging:
            finite &= _finite_per_member([*grads.values(), *params.values()])
        diverged_step = torch.where(alive & ~finite, step, diverged_step)
        alive &= finite
        window_loss += out.loss  # a frozen member's NaN is masked when the window is logged
        window_steps += 1

        if logging:
            values = {
                "loss": torch.where(alive, window_loss / window_steps, math.nan),
                "grad_norm": metrics.grad_norm(out.grads.values()),
                "grad_norm_tau": grads["logit_scale"].abs(),
                "tau": tau,
                "logit_scale": temperature.logit_scale.detach(),
            }
            if out.sims is not None:
                values["effective_negatives"] = metrics.effective_negatives(out.sims, tau).reshape(k, -1).mean(-1)
            values |= {f"grad_norm.{n}": metrics.grad_norm([g]) for n, g in out.grads.items()}
            log.record(step, values | task.diagnostics(params, tau, step))
            window_loss.zero_()
            window_steps = 0
            losses = values["loss"][alive]
            if len(losses):
                bar.set_postfix_str(f"loss {losses.min():.3g}..{losses.max():.3g}, diverged {int((~alive).sum())}")
        if step % experiment.eval_every == 0 or step == steps:
            with torch.no_grad():
                evaluation = task.evaluate(params)
                log.record(step, evaluation)
                embedded = task.embed(params)
                if embedded is not None:
                    embeddings.append((step, embedded.float().cpu()))
            prune = on_eval(step, evaluation) if on_eval else None
            if prune is not None:
                pruned |= prune.to(device) & alive
                alive &= ~pruned
        if step == steps:
            break

        masks = {name: alive for name in task.params}
        if trained is params:
            masks["logit_scale"] = alive & temperature.learnable
        optimizer.step(trained, grads, masks)
        temperature.clamp_()
        bar.update()
        if checkpoint and experiment.checkpoint_every and (step + 1) % experiment.checkpoint_every == 0:
            state = {
                "done": False,
                "step": step + 1,
                "params": {n: p.cpu() for n, p in params.items()},
                "optimizer": optimizer.state_dict(),
                "alive": alive.cpu(),
                "diverged_step": diverged_step.cpu(),
                "pruned": pruned.cpu(),
                "log": log,
                "embeddings": embeddings,
                "window_loss": window_loss.cpu(),
                "window_steps": window_steps,
            }
            results.atomic_write(checkpoint, lambda tmp, state=state: torch.save(state, tmp))
    bar.close()

    output = {
        "alive": alive.cpu(),
        "diverged_step": diverged_step.cpu(),
        "pruned": pruned.cpu(),
        "log": log,
        "embeddings": embeddings,
        "params": {n: p.cpu() for n, p in params.items()},
    }
    if checkpoint:
        results.atomic_write(checkpoint, lambda tmp: torch.save({"done": True, "output": output}, tmp))
    return output


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
        metric_frames.append(output["log"].frame(ids))
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
) -> tuple[Path, dict[str, pd.DataFrame]]:
    """Train every member of ``experiment`` and write its run directory.

    With ``run_dir`` given (``--resume``), continue that run from its checkpoints. ``rows`` trains
    these members instead of the grid (a search's trials). ``on_eval(chunk, step, evaluation)`` is
    ``train_population``'s pruning hook, given the rows of the population it evaluated.
    """
    device = resolve_device(experiment.device)
    rows = config.members(experiment) if rows is None else rows
    if run_dir is None:
        run_dir = results.new_run_dir(name, root)
        results.write_text(run_dir / "config.toml", config.dumps(experiment))
        results.write_json(run_dir / "env.json", results.environment(device))
    outputs = []
    for i, chunk in enumerate(chunks(experiment, rows)):
        checkpoint = run_dir / "checkpoints" / f"chunk-{i}.pt"
        hook = None if on_eval is None else functools.partial(on_eval, chunk)
        outputs.append(train_population(experiment, chunk, device, checkpoint, progress, hook))
    out = tables(rows, outputs)
    for table_name, df in out.items():
        results.write_table(df, run_dir / table_name, csv=table_name == "members")
    return run_dir, out
