"""The cost of ``--tensorboard``: the quadrants study with and without the TensorBoard sink.

Both variants run ``engine.run_sweep`` on ``experiments/quadrants.toml`` (50 members) on the CPU into a
temporary directory, interleaved ``--repeats`` times; each figure is the smallest of its repeats. Reported:
wall seconds (``common.best_of``) and CPU seconds of the process, all threads (``time.process_time``: less
disturbed by other processes on a shared machine), their ratios and differences (opening 50 writers
included), and the number of steps at which metrics were recorded (logging and evaluation steps).

Usage: ``python benchmarks/bench_tensorboard.py [--quick] [--steps N] [--log-every N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import interleaved, machine

from tau_lab import config, engine, monitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 steps, one round: a smoke test")
    parser.add_argument("--steps", type=int, default=10_000, help="training steps (default: the study's 10,000)")
    parser.add_argument("--log-every", type=int, default=100, help="steps between logged metrics (the study's 100)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny tensors: 1 is fastest)")
    args = parser.parse_args()
    steps, repeats = (200, 1) if args.quick else (args.steps, args.repeats)
    torch.set_num_threads(args.threads)
    overrides = ['device="cpu"', f"steps={steps}", f"log_every={args.log_every}"]
    experiment, _ = config.load_experiment("quadrants", overrides)
    rows = config.members(experiment)

    cpu: dict[str, list[float]] = {"off": [], "on": []}

    def sweep(tensorboard: bool) -> None:
        start = time.process_time()
        with tempfile.TemporaryDirectory() as tmp:
            sink = monitor.TensorBoardSink(Path(tmp) / "tb", rows) if tensorboard else None
            engine.run_sweep(experiment, "quadrants", root=Path(tmp), sink=sink)
        cpu["on" if tensorboard else "off"].append(time.process_time() - start)

    wall = interleaved({"off": lambda: sweep(False), "on": lambda: sweep(True)}, repeats)
    seconds = {name: min(times) for name, times in wall.items()}
    cpu_seconds = {name: min(times) for name, times in cpu.items()}
    logged = len({*range(0, steps + 1, args.log_every), *range(0, steps + 1, experiment.eval_every), steps})
    figures = {
        "members": len(rows),
        "steps": steps,
        "log_every": args.log_every,
        "records": logged,
        "seconds_without": round(seconds["off"], 3),
        "seconds_with": round(seconds["on"], 3),
        "ratio": round(seconds["on"] / seconds["off"], 3),
        "added_seconds": round(seconds["on"] - seconds["off"], 3),
        "cpu_seconds_without": round(cpu_seconds["off"], 3),
        "cpu_seconds_with": round(cpu_seconds["on"], 3),
        "cpu_ratio": round(cpu_seconds["on"] / cpu_seconds["off"], 3),
        "cpu_added_seconds": round(cpu_seconds["on"] - cpu_seconds["off"], 3),
        "machine": machine(),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
