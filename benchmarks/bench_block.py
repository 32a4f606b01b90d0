"""Blocks of steps: the engine's member-steps/s by ``block_steps``, eager and compiled, on the quadrants task.

Every variant is a whole ``train_population`` (its logging every ``log_every`` steps, evaluations and
checkpoints included) of the quadrants study's five fixed τ, K = 5 (one seed) and K = 100 (20 seeds),
measured in this one process: interleaved rounds, the median of each variant's CPU time (``process_time``,
one thread: other processes on the machine then add little), ratios against ``block_steps = 1`` eager.
The compiled variants share one compiled block (``torch.compile`` of ``torch``'s ``scan``, whatever the
length); its compile time is the first compiled run's wall time minus a warm run's (inductor compiles in
worker processes; a warm inductor cache, ``/tmp/torchinductor_$USER``, shortens it).

Usage: ``python benchmarks/bench_block.py [--steps N] [--rounds R] [--members 5 100] [--no-compile] [--quick]``
(``--quick``: 200 steps, one round, K = 5: a smoke test, as ``make bench BENCH_ARGS=--quick`` passes it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from tau_lab import config, engine

CPU = torch.device("cpu")
SEED_TAUS = "[0.99, 0.5, 0.05, 0.01, 0.001]"  # the quadrants study's five temperatures
EAGER = (1, 32, 64, 128)
COMPILED = (32, 64, 128)


def population(members: int, steps: int, block_steps: int, compile: bool) -> Callable[[], object]:
    """One whole training of ``members`` quadrants members (five τ per seed) as a runner."""
    seeds = ", ".join(str(s) for s in range(max(1, members // 5)))
    overrides = [
        f"steps={steps}",
        f"sweep.tau={SEED_TAUS}",
        "sweep.tau_mode=['fixed']",
        f"sweep.seeds=[{seeds}]",
        'device="cpu"',
        f"block_steps={block_steps}",
        f"compile={str(compile).lower()}",
    ]
    experiment, _ = config.load_experiment("quadrants", overrides)
    rows = config.members(experiment)
    return lambda: engine.train_population(experiment, rows, CPU)


def cpu_seconds(run: Callable[[], object], clock: Callable[[], float] = time.process_time) -> float:
    start = clock()
    run()
    return clock() - start


def measure(members: int, steps: int, rounds: int, compile: bool) -> list[tuple[str, float, float, str]]:
    """``(variant, member-steps/s, ratio to block_steps = 1 eager, note)`` per variant."""
    runners = {f"eager, block_steps={n}": population(members, steps, n, False) for n in EAGER}
    notes = dict.fromkeys(runners, "")
    if compile:
        first = population(members, steps, COMPILED[0], True)
        cold = cpu_seconds(first, time.perf_counter)
        warm = cpu_seconds(first, time.perf_counter)
        for n in COMPILED:
            runners[f"compiled, block_steps={n}"] = population(members, steps, n, True)
            notes[f"compiled, block_steps={n}"] = ""
        notes[f"compiled, block_steps={COMPILED[0]}"] = f"compile {cold - warm:.0f} s"
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():  # warm-up: a compiled block of a new length, the allocator
        run()
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(cpu_seconds(run))
    base = statistics.median(times[f"eager, block_steps={EAGER[0]}"])
    return [
        (name, members * steps / statistics.median(t), base / statistics.median(t), notes[name])
        for name, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--members", type=int, nargs="+", default=[5, 100])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="200 steps, one round, K = 5")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.members = 200, 1, [5]
    torch.set_num_threads(1)
    print(f"quadrants, {args.steps} steps, medians of {args.rounds} interleaved rounds, torch {torch.__version__}")
    print("| K | variant | member-steps/s | × block_steps=1 eager | note |")
    print("|---|---|---|---|---|")
    for k in args.members:
        for name, rate, ratio, note in measure(k, args.steps, args.rounds, not args.no_compile):
            print(f"| {k} | {name} | {rate:,.0f} | {ratio:.2f} | {note} |", flush=True)


if __name__ == "__main__":
    main()
