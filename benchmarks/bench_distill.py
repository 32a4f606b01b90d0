"""The distillation population against a user's per-student loop, on the digits (issue 5's benchmark).

Everything is measured in this one process, on the CPU, in this run:

- **population**: ``train_population`` on the 30 students of ``digits_kd`` (T ∈ {1, 2, 4, 8, 16} ×
  α ∈ {0, 0.5, 0.9} × T² on/off, fixed T, every image labelled) × ``--seeds`` seeds, as one batched
  computation; the teacher runs once per step on each seed's batch. Set-up, logging (with the
  per-part gradient diagnostics) and evaluation are included, as a sweep runs them.
- **sequential**: ``tau_lab.tasks.distill.train_reference`` once per student, one after another:
  an ``nn.Module`` student, ``torch.optim.AdamW`` and the teacher recomputed on every batch, as a
  user's loop does. It runs a spread ``--subset`` of the members and is extrapolated linearly
  (members are independent).

Each runner is warmed up, then timed in interleaved rounds (``--repeats``); the best round is
reported, since other processes can only add time. Figures: member-steps per second and the
population's speed-up over the sequential loop.

Usage: ``python benchmarks/bench_distill.py [--quick] [--json PATH] [--threads N] [--seeds S]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import best_of, machine, spread

from tau_lab import config, engine
from tau_lab.tasks.distill import train_reference
from tau_lab.teacher import load_teacher

CPU = torch.device("cpu")
WARMUP_STEPS = 10


def experiment(steps: int, seeds: int) -> config.Experiment:
    """``digits_kd``'s 30 fixed-T students per seed, all images labelled, on the CPU."""
    overrides = [
        f"steps={steps}",
        'sweep.tau_mode=["fixed"]',
        "sweep.labeled_fraction=[1.0]",
        f"sweep.seeds=[{', '.join(str(s) for s in range(seeds))}]",
        'device="cpu"',
    ]
    spec, _ = config.load_experiment("digits_kd", overrides)
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the 30 students (K = 30 × seeds)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each runner")
    parser.add_argument("--subset", type=int, default=6, help="members the sequential loop runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny tensors: 1)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.subset, args.repeats = 30, 2, 1
    torch.set_num_threads(args.threads)

    spec = experiment(args.steps, args.seeds)
    rows = config.members(spec)
    subset = spread(rows, args.subset)
    data = spec.data
    load_teacher(spec.model.teacher, data.test_fraction, data.split_seed, data.validation_fraction)  # cached first
    warm = spec.model_copy(update={"steps": WARMUP_STEPS})
    engine.train_population(warm, rows, CPU)
    train_reference(warm, subset[0])

    seconds = best_of(
        {
            "population": lambda: engine.train_population(spec, rows, CPU),
            "sequential": lambda: [train_reference(spec, row) for row in subset],
        },
        args.repeats,
    )
    rate = {
        "population": len(rows) * args.steps / seconds["population"],
        "sequential": len(subset) * args.steps / seconds["sequential"],
    }
    figures = {
        "members": len(rows),
        "steps": args.steps,
        "sequential_subset": len(subset),
        "seconds": seconds,
        "member_steps_per_s": rate,
        "speedup": rate["population"] / rate["sequential"],
        "machine": machine(),
    }
    print(f"distillation, {len(rows)} students (30 settings × {args.seeds} seeds), {args.steps} steps, CPU")
    print(f"{'':<12}{'member-steps/s':>16}{'seconds':>10}")
    for name in ("sequential", "population"):
        members = len(rows) if name == "population" else len(subset)
        print(f"{name:<12}{rate[name]:>16,.0f}{seconds[name]:>10.2f}  ({members} members)")
    print(f"speed-up of the population: {figures['speedup']:.1f}x (target ≥ 10x)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
