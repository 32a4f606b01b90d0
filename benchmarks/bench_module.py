"""The generic module task (``torch.func``: ``vmap`` of ``functional_call`` over stacked weights) against
the hand-batched pairs task and against a per-member loop, on the CPU, in one process.

1. **pairs heads** (Linear 64→128→32 and 32→128→32, clip loss, batch 256, K members): the hand-written
   batched step of ``task = "pairs"`` (``baddbmm`` per layer) against the same ``Heads`` module run by
   ``task = "module"``. This decides whether the hand-batched step earns its code.
2. **small CNN** (``examples/digits_cnn.py``, batch 64 of 16×16 pairs, K members): the module population
   against the same ``nn.Module`` stepped once per member (the loop a researcher writes without tau-lab).

Each figure is the forward + backward of ``task.step`` (the part that differs; the optimizer is the same
code either way), timed over ``--steps`` steps after a warm-up, best of ``--repeats`` interleaved rounds,
printed as member-steps per second and as a ratio against the baseline measured in the same run.

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

from tau_lab import config
from tau_lab.tasks.module import ModuleTask, build_module
from tau_lab.tasks.pairs import Heads, PairsTask

CPU = torch.device("cpu")
PAIRS = {"a": None, "b": None}  # the arrays of the pairs workload, shared by both tasks


class TwoHeads(Heads):
    """The pairs task's ``Heads`` as a module with ``forward(a, b)``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(a), self.b(b)


def heads() -> torch.nn.Module:
    return TwoHeads(64, 32, 128, 32)


def pairs_data() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(PAIRS["a"]), torch.from_numpy(PAIRS["b"])


def stepper(task: object, steps: int) -> Callable[[], None]:
    tau = torch.full((len(task.seed_row),), 0.1)  # type: ignore[attr-defined]
    batches = [task.batch(s) for s in range(steps)]  # type: ignore[attr-defined]

    def run() -> None:
        for batch in batches:
            task.step(task.params, tau, batch)  # type: ignore[attr-defined]

    return run


def pairs_case(members: int, steps: int, repeats: int, tmp: Path) -> dict[str, float]:
    rng = np.random.default_rng(0)
    PAIRS["a"] = rng.standard_normal((2000, 64)).astype(np.float32)
    PAIRS["b"] = rng.standard_normal((2000, 32)).astype(np.float32)
    np.savez(tmp / "pairs.npz", a=PAIRS["a"], b=PAIRS["b"])
    grid = {"tau": [0.1], "tau_mode": ["fixed"], "seeds": list(range(members))}
    common = {"steps": steps, "sweep": grid}
    hand = config.validate(
        {
            "task": "pairs",
            **common,
            "data": {"path": str(tmp / "pairs.npz"), "batch_size": 256, "standardize": False},
            "model": {"loss": "clip", "hidden": 128, "dim": 32},
        },
        "pairs",
    )
    generic = config.validate(
        {
            "task": "module",
            **common,
            "data": {"factory": "__main__:pairs_data", "batch_size": 256},
            "model": {"factory": "__main__:heads", "loss": "clip"},
        },
        "module",
    )
    rows = config.members(hand)
    hand_task, module_task = PairsTask(hand, rows, CPU), ModuleTask(generic, rows, CPU)
    runs = {"hand-batched pairs step": stepper(hand_task, steps), "module task (vmap)": stepper(module_task, steps)}
    for run in runs.values():
        run()  # warm-up
    return {name: members * steps / s for name, s in best_of(runs, repeats).items()}


def cnn_case(members: int, steps: int, repeats: int) -> dict[str, float]:
    raw = {
        "task": "module",
        "steps": steps,
        "data": {"factory": "examples.digits_cnn:data", "kwargs": {"pairs": 600, "size": 16}, "batch_size": 64},
        "model": {"factory": "examples.digits_cnn:model", "kwargs": {"dim": 32}, "loss": "clip"},
        "sweep": {"tau": [0.1], "tau_mode": ["fixed"], "seeds": list(range(members))},
    }
    experiment = config.validate(raw, "digits_cnn")
    rows = config.members(experiment)
    task = ModuleTask(experiment, rows, CPU)
    nets = [build_module(experiment.model, r["seed"]) for r in rows]
    batches = [task.batch(s) for s in range(steps)]
    from tau_lab import losses

    def loop() -> None:
        for a, b in batches:
            for k, net in enumerate(nets):
                u, v = net(a[k], b[k])
                losses.clip_loss(u, v, 0.1).backward()

    runs = {"per-member loop": loop, "module task (vmap)": stepper(task, steps)}
    for run in runs.values():
        run()
    return {name: members * steps / s for name, s in best_of(runs, repeats).items()}


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
            report(f"pairs heads, K = {k}, batch 256", pairs_case(k, steps, repeats, Path(tmp)))
    for k in (3, 9):
        report(f"small CNN (examples/digits_cnn.py), K = {k}, batch 64", cnn_case(k, max(2, steps // 2), repeats))


if __name__ == "__main__":
    main()
