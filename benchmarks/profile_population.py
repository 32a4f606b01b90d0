"""Where one ``train_population`` call of the quadrants benchmark spends its time, at any K and variant.

``bench.py``'s phase timers (set-up, the step, evaluation, …) around one warmed-up call, then ``torch.profiler``'s
aten ops by self CPU time over another. Usage (from a checkout, 1 thread):

    PYTHONPATH=. python benchmarks/profile_population.py --k 1000 --steps 200 [--variant '["compile=true"]']
"""

from __future__ import annotations

import argparse
import json
import time

import bench
import torch

from tau_lab import config, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1000, help="members, a multiple of 5 (default 1000)")
    parser.add_argument("--steps", type=int, default=200, help="steps of the call (default 200, as bench.py)")
    parser.add_argument("--variant", type=json.loads, default=[], help="engine config overrides as a JSON list")
    parser.add_argument("--top", type=int, default=15, help="aten ops listed (default 15)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiment = bench.load(args.steps, args.k // 5, extra=tuple(args.variant))
    rows = config.members(experiment)
    device = torch.device("cpu")
    engine.train_population(experiment, rows, device)  # warm-up (and compilation)
    if experiment.compile:  # the timers' float totals would become guards of the compiled block: a recompile a call
        start = time.perf_counter()
        engine.train_population(experiment, rows, device)
        print(f"K = {args.k}, {args.steps} steps, {args.variant}: {time.perf_counter() - start:.3f} s (no phases)")
    else:
        with bench.phase_timers() as totals:
            start = time.perf_counter()
            engine.train_population(experiment, rows, device)
            seconds = time.perf_counter() - start
        print(f"K = {args.k}, {args.steps} steps, {args.variant}: {seconds:.3f} s")
        for phase, t in [*totals.items(), (bench.LOOP, seconds - sum(totals.values()))]:
            print(f"  {phase:20s} {t:8.3f} s  {t / seconds:6.1%}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        engine.train_population(experiment, rows, device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
