"""The contrastive studies' populations against a sequential per-member loop, in one process, on the CPU.

For ``digits_simclr`` (39 members) and ``digits_clip`` (72 members), with their real grids and models:

- **population**: ``engine.train_population(experiment, rows, cpu)``, all members in lockstep;
- **sequential**: ``train_reference(experiment, member)`` (an ``nn.Module``, ``torch.optim``, one Python step
  at a time) for members spread over the grid, one after another; members are independent, so its
  member-steps per second hold for the whole grid.

Both are timed as the *marginal* cost of steps: a run of ``long`` steps minus a run of ``short`` steps, so the
set-up and the evaluations at the first and last step, the same in both runs, cancel. Each figure is the best
of ``--repeats`` rounds (other processes can only add time). Then one population step is split into its
phases (the batch, ``task.step``: forward and backward, the optimizer) to show where the time goes.

Usage: ``python benchmarks/bench_contrastive.py [--quick] [--threads N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from common import best_of, spread

from tau_lab import config, engine
from tau_lab.optim import build_optimizer
from tau_lab.tasks import TASKS, clip, simclr
from tau_lab.temperature import Temperature

CPU = torch.device("cpu")
STUDIES: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "digits_simclr": simclr.train_reference,
    "digits_clip": clip.train_reference,
}


def load(name: str, steps: int) -> config.Experiment:
    experiment, _ = config.load_experiment(name, [f"steps={steps}", 'device="cpu"'])
    return experiment


def marginal_rate(run: Callable[[int], Any], members: int, short: int, long: int, repeats: int) -> float:
    """Member-steps per second of the ``long − short`` steps that one run has over the other."""
    best = best_of({"long": lambda: run(long), "short": lambda: run(short)}, repeats)
    seconds = best["long"] - best["short"]
    return members * (long - short) / seconds


def phases(name: str, steps: int) -> dict[str, float]:
    """Milliseconds per population step in the batch, ``task.step`` and the optimizer, as the engine runs them."""
    experiment = load(name, steps)
    rows = config.members(experiment)
    task = TASKS[experiment.task](experiment, rows, CPU)
    t = experiment.temperature
    modes = [r["tau_mode"] for r in rows]
    temperature = Temperature([r["tau_init"] for r in rows], modes, t.tau_min, t.tau_max, t.period)
    params = {**task.params, "logit_scale": temperature.logit_scale.data}
    optimizer = build_optimizer(experiment.optimizer, params, rows)
    masks = dict.fromkeys(task.params, torch.ones(len(rows), dtype=torch.bool)) | {"logit_scale": temperature.learnable}
    spent = {"batch": 0.0, "task.step (forward + backward)": 0.0, "optimizer": 0.0}
    for step in range(steps):
        start = time.perf_counter()
        batch = task.batch(step)
        after_batch = time.perf_counter()
        tau = temperature(step).detach()
        out = task.step(task.params, tau, batch)
        after_step = time.perf_counter()
        grads = {**out.grads, "logit_scale": temperature.logit_scale_grad(tau, out.grad_tau, step)}
        optimizer.step(params, grads, masks)
        temperature.clamp_()
        end = time.perf_counter()
        if step:  # the first step warms up
            spent["batch"] += after_batch - start
            spent["task.step (forward + backward)"] += after_step - after_batch
            spent["optimizer"] += end - after_step
    return {phase: 1000 * seconds / (steps - 1) for phase, seconds in spent.items()}


def bench(name: str, short: int, long: int, sequential_members: int, repeats: int) -> dict[str, Any]:
    rows = config.members(load(name, short))
    subset = spread(rows, sequential_members)
    reference = STUDIES[name]
    engine.train_population(load(name, 2), rows, CPU)  # warm-up

    def population(steps: int) -> None:
        engine.train_population(load(name, steps), rows, CPU)

    def sequential(steps: int) -> None:
        for row in subset:
            reference(load(name, steps), row)

    return {
        "study": name,
        "members": len(rows),
        "population": marginal_rate(population, len(rows), short, long, repeats),
        "sequential": marginal_rate(sequential, len(subset), short, long, repeats),
        "sequential_members": len(subset),
        "phases": phases(name, min(long, 20)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and members: a smoke test")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per measurement; the best is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    short, long, sequential_members = (2, 6, 2) if args.quick else (10, 110, 6)
    repeats = 1 if args.quick else args.repeats
    results = [bench(name, short, long, sequential_members, repeats) for name in STUDIES]

    print(f"\nmember-steps per second, steps {short}..{long} (marginal), {args.threads} thread(s), best of {repeats}")
    header = f"{'study':<15}{'members':>9}{'population':>13}{'sequential':>13}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        speedup = r["population"] / r["sequential"]
        print(f"{r['study']:<15}{r['members']:>9}{r['population']:>13.0f}{r['sequential']:>13.0f}{speedup:>9.1f}×")
    print(f"(sequential: {results[0]['sequential_members']} members spread over each grid, one after another)")
    print("\nwhere a population step goes, ms")
    for r in results:
        parts = ", ".join(f"{phase} {ms:.1f}" for phase, ms in r["phases"].items())
        print(f"{r['study']:<15}{parts}")


if __name__ == "__main__":
    main()
