"""1 against 2 (or more) torch intra-op threads for the digits populations: which default should a sweep use?

For ``digits_simclr`` (its 39 members), ``digits_clip`` (72) and ``digits_kd`` (its 30 fixed-T students,
seed 0), one process steps each population as the engine does (the batch, ``task.step``: forward and
backward, the optimizer, the temperature), switching ``torch.set_num_threads`` between the thread counts at
every step. The median step is reported, as ms per population step and member-steps/s, with each thread
count's speed over the first. (Logging and evaluation, every ``log_every`` / ``eval_every`` steps, are left out.)

Usage: ``python benchmarks/bench_threads.py [--quick] [--threads 1,2] [--steps N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import machine

from tau_lab import config
from tau_lab.optim import build_optimizer
from tau_lab.tasks import TASKS
from tau_lab.temperature import Temperature

CPU = torch.device("cpu")
STUDIES = {
    "digits_simclr": [],
    "digits_clip": [],
    "digits_kd": ['sweep.tau_mode=["fixed"]', "sweep.labeled_fraction=[1.0]", "sweep.seeds=[0]"],
}


def load(name: str, steps: int) -> config.Experiment:
    experiment, _ = config.load_experiment(name, [f"steps={steps}", 'device="cpu"', *STUDIES[name]])
    return experiment


def bench(name: str, threads: list[int], steps: int) -> dict[str, Any]:
    """Median seconds of one population step (batch, forward and backward, optimizer) at each thread count.

    The steps alternate between the thread counts (step i runs at ``threads[i % len(threads)]``), so a spell
    of load from other processes falls on every count alike; the median over steps ignores the spikes.
    """
    experiment = load(name, len(threads) + steps)
    rows = config.members(experiment)
    task = TASKS[experiment.task](experiment, rows, CPU)
    t = experiment.temperature
    temperature = Temperature(
        [r["tau_init"] for r in rows], [r["tau_mode"] for r in rows], t.tau_min, t.tau_max, t.period
    )
    params = {**task.params, "logit_scale": temperature.logit_scale.data}
    optimizer = build_optimizer(experiment.optimizer, params, rows)
    masks = dict.fromkeys(task.params, torch.ones(len(rows), dtype=torch.bool)) | {"logit_scale": temperature.learnable}
    per_step: dict[int, list[float]] = {n: [] for n in threads}
    for step in range(len(threads) + steps):
        n = threads[step % len(threads)]
        torch.set_num_threads(n)
        start = time.perf_counter()
        tau = temperature(step).detach()
        out = task.step(task.params, tau, task.batch(step))
        grads = {**out.grads, "logit_scale": temperature.logit_scale_grad(tau, out.grad_tau, step)}
        optimizer.step(params, grads, masks)
        temperature.clamp_()
        if step >= len(threads):  # the first step at each count warms up
            per_step[n].append(time.perf_counter() - start)
    torch.set_num_threads(threads[0])
    return {
        "members": len(rows),
        "seconds_per_step": {n: statistics.median(t) for n, t in per_step.items()},
        "seconds_per_step_all": per_step,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, one round: a smoke test")
    parser.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    parser.add_argument("--steps", type=int, help="timed steps per thread count (default 20; --quick 3)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    args = parser.parse_args(argv)
    threads = [int(n) for n in args.threads.split(",")]
    steps = args.steps or (3 if args.quick else 20)
    res: dict[str, Any] = {"machine": machine(), "steps": steps, "studies": {}}
    for name in STUDIES:
        print(f"[threads] {name}: {steps} steps at each of {threads} threads", file=sys.stderr, flush=True)
        res["studies"][name] = bench(name, threads, steps * len(threads))
    res["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    m = res["machine"]
    print(f"\n== torch threads: digits populations, median of {steps} alternating steps per thread count ==")
    print(f"  machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), torch {m['torch']}")
    print(f"  load average at start {m['load_average_start']}, at end {m['load_average_end']}")
    header = f"{'study':<15}{'members':>8}{'threads':>8}{'ms/step':>10}{'member-steps/s':>16}{'vs 1st':>8}"
    print(header)
    print("-" * len(header))
    for name, r in res["studies"].items():
        first = r["seconds_per_step"][threads[0]]
        for n, s in r["seconds_per_step"].items():
            print(f"{name:<15}{r['members']:>8}{n:>8}{s * 1e3:>10.1f}{r['members'] / s:>16,.0f}{first / s:>7.2f}x")
    print("  (vs 1st: the speed over the first thread count; > 1 is faster)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
