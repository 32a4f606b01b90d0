"""``make bench`` (search): N = 64 trials batched K = 16 to a population against K = 1.

K = 1 is Optuna's own loop: one trial trained at a time. Both run ``tau-lab search`` end to end
(``search.run``: journal storage, one run directory per batch, trials table) on
``experiments/quadrants_search.toml``, on the CPU, with the same sampler (TPE, constant liar) and
the same sampler seeds, into a temporary directory. Pruning is off by default (``--pruner``): a
pruned member still costs its population a slot, while a pruned trial of K = 1 stops early, so
pruning would mix two effects.

Reported per K: wall time, trials per minute, and the best objective among the first 16, 32 and
64 trials (in trial order), as the mean over ``--seeds`` sampler seeds. The yardstick for K = 16's
best is the seed-to-seed spread (min..max) of K = 1's best after 64 trials.

Usage: ``python benchmarks/bench_search.py [--quick] [--seeds S] [--steps N] [--pruner P] [--json PATH]``.
A full run (3 seeds, 500 steps) takes about 10 minutes on a 2-core CPU, almost all of it K = 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from tau_lab import search
from tau_lab.search import PrunerName

N_TRIALS = 64
BATCH_SIZES = (1, 16)
CHECKPOINTS = (16, 32, 64)  # best objective after this many trials


def run_one(root: Path, batch_size: int, seed: int, steps: int | None, pruner: PrunerName) -> dict[str, Any]:
    """One search of N trials; its wall time and best objective after each checkpoint."""
    overrides = ['device="cpu"', *([f"steps={steps}"] if steps else [])]
    spec = search.load(
        "quadrants_search", overrides, n_trials=N_TRIALS, batch_size=batch_size, pruner=pruner, seed=seed, root=root
    )
    start = time.perf_counter()
    study = search.run(spec)
    seconds = time.perf_counter() - start
    pick = max if spec.settings.direction == "maximize" else min
    completed = [(t.number, t.value) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = {f"best_{n}": pick(value for number, value in completed if number < n) for n in CHECKPOINTS}
    return {
        "batch_size": batch_size,
        "seed": seed,
        "seconds": seconds,
        "trials_per_minute": 60 * N_TRIALS / seconds,
        **best,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """The mean over seeds of every figure, per batch size."""
    figures = ["seconds", "trials_per_minute", *(f"best_{n}" for n in CHECKPOINTS)]
    return {k: {f: statistics.fmean(r[f] for r in runs if r["batch_size"] == k) for f in figures} for k in BATCH_SIZES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 50 steps per trial: a smoke test")
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds per batch size (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per trial (default: the file's)")
    parser.add_argument("--pruner", type=PrunerName, default=PrunerName.none, help="median, hyperband or none")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny tensors: 1 is fastest)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    seeds, steps = (1, 50) if args.quick else (args.seeds, args.steps)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for k in BATCH_SIZES:  # interleaved, so that a slow spell of the machine hits both
                runs.append(run_one(Path(tmp) / f"k{k}-seed{seed}", k, seed, steps, args.pruner))
                r = runs[-1]
                print(f"K = {k:2d}, seed {seed}: {r['seconds']:6.1f} s, best after 64: {r['best_64']:.4f}", flush=True)

    means = summarize(runs)
    print(f"\nN = {N_TRIALS} trials of quadrants_search, TPE (constant liar), {seeds} seed(s), pruner {args.pruner}")
    print(f"{'K':>3} {'wall s':>8} {'trials/min':>11} " + " ".join(f"{f'best@{n}':>9}" for n in CHECKPOINTS))
    for k, m in means.items():
        best = " ".join(f"{m[f'best_{n}']:9.4f}" for n in CHECKPOINTS)
        print(f"{k:3d} {m['seconds']:8.1f} {m['trials_per_minute']:11.1f} {best}")
    speedup = means[16]["trials_per_minute"] / means[1]["trials_per_minute"]
    print(f"K = 16 runs {speedup:.1f}x the trials per minute of K = 1 (target >= 5x)")
    if seeds > 1:
        one = [r["best_64"] for r in runs if r["batch_size"] == 1]
        within = min(one) <= means[16]["best_64"] <= max(one)
        print(
            f"K = 16's best after 64, {means[16]['best_64']:.6f}, is {'within' if within else 'outside'} "
            f"K = 1's seed-to-seed spread {min(one):.6f}..{max(one):.6f}"  # 6 places: at 4 a miss read as equal
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "means": means, "speedup": speedup}, indent=2) + "\n")


if __name__ == "__main__":
    main()
