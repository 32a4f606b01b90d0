"""The generic module task (``torch.func``: ``vmap`` of ``functional_call`` over stacked weights) against a
per-member loop of the same ``nn.Module``, on the CPU, in one process.

1. **pairs heads** (``task = "pairs"``: Linear 64→128→32 and 32→128→32, clip loss, batch 256, K members).
   Until this benchmark the pairs task had a hand-batched step (``baddbmm`` per layer); measured against the
   vmapped module it was 1.03–1.05× (K = 8, 39; docs/benchmarks.md), so the task now runs on the module task.
2. **small CNN** (``examples/digits_cnn.py``, batch 64 of 16×16 pairs, K members).

The baseline is each member's module stepped alone, one after another (the loop a researcher writes without
tau-lab). Each figure is the forward + backward of a step (the optimizer is the same code either way), timed
over ``--steps`` steps after a warm-up, best of ``--repeats`` interleaved rounds, printed as member-steps per
second and as a ratio against the baseline measured in the same run.

Usage: ``python benchmarks/bench_module.py [--quick] [--threads N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import best_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/ as a package-free import

from tau_lab import config, losses
from tau_lab.tasks import TASKS

CPU = torch.device("cpu")


def stepper(task: object, steps: int) -> Callable[[], None]:
    tau = torch.full((len(task.seed_row),), 0.1)  # type: ignore[attr-defined]
    batches = [task.batch(s) for s in range(steps)]  # type: ignore[attr-defined]

    def run() -> None:
        for batch in batches:
            task.step(task.params, tau, batch)  # type: ignore[attr-defined]

    return run


def against_loop(experiment: config.Experiment, steps: int, repeats: int) -> dict[str, float]:
    """Member-steps per second of a per-member loop and of the vmapped population, on the same batches."""
    rows = config.members(experiment)
    task = TASKS[experiment.task](experiment, rows, CPU)
    nets = [task.reference_module(r["seed"]) for r in rows]
    batches = [task.batch(s) for s in range(steps)]

    def loop() -> None:
        for a, b in batches:
            for k, net in enumerate(nets):
                u, v = net(a[k], b[k])
                losses.clip_loss(u, v, 0.1).backward()

    runs = {"per-member loop": loop, "module task (vmap)": stepper(task, steps)}
    for run in runs.values():
        run()  # warm-up
    return {name: len(rows) * steps / s for name, s in best_of(runs, repeats).items()}


def pairs(members: int, steps: int, tmp: Path) -> config.Experiment:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2000, 64)).astype(np.float32), rng.standard_normal((2000, 32)).astype(np.float32)
    np.savez(tmp / "pairs.npz", a=a, b=b)
    raw = {
        "task": "pairs",
        "steps": steps,
        "data": {"path": str(tmp / "pairs.npz"), "batch_size": 256, "standardize": False},
        "model": {"loss": "clip", "hidden": 128, "dim": 32},
        "sweep": {"tau": [0.1], "tau_mode": ["fixed"], "seeds": list(range(members))},
    }
    return config.validate(raw, "pairs")


def cnn(members: int, steps: int) -> config.Experiment:
    raw = {
        "task": "module",
        "steps": steps,
        "data": {"factory": "examples.digits_cnn:data", "kwargs": {"pairs": 600, "size": 16}, "batch_size": 64},
        "model": {"factory": "examples.digits_cnn:model", "kwargs": {"dim": 32}, "loss": "clip"},
        "sweep": {"tau": [0.1], "tau_mode": ["fixed"], "seeds": list(range(members))},
    }
    return config.validate(raw, "digits_cnn")


def report(title: str, rates: dict[str, float]) -> None:
    base = next(iter(rates.values()))
    print(f"\n{title}")
    for name, rate in rates.items():
        print(f"  {name:<26} {rate:>10.0f} member-steps/s   {rate / base:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: few steps, one round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, repeats = (2, 1) if args.quick else (20, args.repeats)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (8, 39):
            report(f"pairs heads, K = {k}, batch 256", against_loop(pairs(k, steps, Path(tmp)), steps, repeats))
    for k in (3, 9):
        report(f"small CNN (examples/digits_cnn.py), K = {k}, batch 64", against_loop(cnn(k, steps), steps, repeats))


if __name__ == "__main__":
    main()
