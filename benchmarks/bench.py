"""``make bench``: the population engine against seed 001's sequential loop, on the quadrants task.

Everything is measured in this one process, on the CPU, in this run; every ratio is against the
baseline measured here. Nothing is hard-coded but the step counts and the grids.

- **baseline**: ``train_reference(exp, member)`` once per member, one after another (seed 001's
  ``nn.Module`` + ``torch.optim.SGD`` loop, one Python step at a time).
- **population**: ``train_population(exp, rows, cpu)``, eager, and with ``--set compile=true``
  (first call, i.e. compile + run, and warm calls reported separately).

Sections: throughput (member-steps/s) for K = 5 (the seed's five fixed τ) and K = 100 (five τ ×
20 seeds); the seed's full study end to end (``run_sweep``, 10 members × 10,000 steps) against
the baseline's time for the same members and steps; where the population step's time goes (a
per-phase breakdown and the top torch ops by self CPU time).

Usage: ``python benchmarks/bench.py [--quick] [--json PATH] [--threads N] [--no-compile]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from tau_lab import config, engine, metrics
from tau_lab.optim import Optimizer
from tau_lab.tasks.quadrants import Quadrants, train_reference
from tau_lab.temperature import Temperature

CPU = torch.device("cpu")
SEED_TAUS = "[0.99, 0.5, 0.05, 0.01, 0.001]"  # seed 001's five temperatures
WARMUP_STEPS = 20


# ----------------------------------------------------------------------------- set-up


def load(steps: int, seeds: int = 1, modes: str = '["fixed"]', extra: tuple[str, ...] = ()) -> config.Experiment:
    """The quadrants experiment with ``steps``, the seed's five τ, ``seeds`` seeds, ``modes``; on the CPU."""
    overrides = [
        f"steps={steps}",
        f"sweep.tau={SEED_TAUS}",
        f"sweep.tau_mode={modes}",
        f"sweep.seeds=[{', '.join(str(s) for s in range(seeds))}]",
        'device="cpu"',
        *extra,
    ]
    experiment, _ = config.load_experiment("quadrants", overrides)
    return experiment


def with_steps(experiment: config.Experiment, steps: int) -> config.Experiment:
    return experiment.model_copy(update={"steps": steps})


def spread(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` members spread over the grid (different seeds and τ), for the baseline's subset."""
    if n >= len(rows):
        return rows
    stride = len(rows) // n + 1
    return [rows[(i * stride) % len(rows)] for i in range(n)]


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------- measurements


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(times: list[float], members: int, steps: int) -> dict[str, Any]:
    """Median seconds of the repeats and the member-steps per second it gives."""
    seconds = statistics.median(times)
    return {
        "members": members,
        "steps": steps,
        "seconds": seconds,
        "seconds_all": times,
        "member_steps_per_s": members * steps / seconds,
    }


def bench_baseline(experiment: config.Experiment, rows: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Seed 001's sequential loop: ``train_reference`` for each member in turn; median of ``repeats`` passes."""
    train_reference(with_steps(experiment, WARMUP_STEPS), rows[0])
    times = [timed(lambda: [train_reference(experiment, row) for row in rows]) for _ in range(repeats)]
    return summary(times, len(rows), experiment.steps)


def bench_population(experiment: config.Experiment, rows: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """The population engine, one ``train_population`` call per repeat (task set-up, logging and
    evaluation included, as a sweep runs it); warmed up first (a short call)."""
    engine.train_population(with_steps(experiment, WARMUP_STEPS), rows, CPU)
    times = [timed(lambda: engine.train_population(experiment, rows, CPU)) for _ in range(repeats)]
    return summary(times, len(rows), experiment.steps)


def bench_compiled(experiment: config.Experiment, rows: list[dict[str, Any]], repeats: int) -> dict[str, Any]:
    """``compile = true``: the first call (compile + ``steps`` steps), then warm calls (Dynamo's cache hit)."""
    compiled = experiment.model_copy(update={"compile": True})
    first = timed(lambda: engine.train_population(compiled, rows, CPU))
    times = [timed(lambda: engine.train_population(compiled, rows, CPU)) for _ in range(repeats)]
    out = summary(times, len(rows), experiment.steps)
    out["first_call_seconds"] = first
    out["compile_seconds"] = first - out["seconds"]  # first call minus a warm call of the same steps
    return out


def bench_study(steps: int) -> dict[str, Any]:
    """Seed 001's full study end to end: ``run_sweep`` (as ``tau-lab sweep quadrants``) into a temp dir."""
    experiment, _ = config.load_experiment("quadrants", ['device="cpu"', f"steps={steps}"])
    rows = config.members(experiment)
    with tempfile.TemporaryDirectory() as root:
        seconds = timed(lambda: engine.run_sweep(experiment, "quadrants", root=Path(root)))
    return {"members": len(rows), "steps": steps, "seconds": seconds, "member_steps_per_s": len(rows) * steps / seconds}


# ----------------------------------------------------------------------------- where the time goes

# What the engine's loop calls, by phase; everything else in the call is the loop itself.
PHASES: dict[str, list[tuple[Any, str]]] = {
    "set-up (task data, initial weights)": [(Quadrants, "__init__")],
    "task.batch (gather the step's points)": [(Quadrants, "batch")],
    "temperature τ(step)": [(Temperature, "forward")],
    "task.step (loss + closed-form grads)": [(Quadrants, "step")],
    "optimizer.step": [(Optimizer, "step")],
    "temperature.clamp_": [(Temperature, "clamp_")],
    "logging (metrics, MetricLog.record)": [
        (metrics, "grad_norm"),
        (metrics, "effective_negatives"),
        (engine.MetricLog, "record"),
    ],
    "evaluation (evaluate, embed)": [(Quadrants, "evaluate"), (Quadrants, "embed")],
}
LOOP = "engine loop (finite checks, alive mask, loss window, Python)"


@contextlib.contextmanager
def phase_timers() -> Iterator[dict[str, float]]:
    """Wrap the functions of ``PHASES`` with ``perf_counter`` timers (outermost call only, so that
    nested calls, e.g. ``evaluate`` → ``embed``, are not counted twice). The library is not changed:
    the wrappers are removed on exit."""
    totals = dict.fromkeys(PHASES, 0.0)
    active = [False]

    def wrap(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed_fn(*args: Any, **kwargs: Any) -> Any:
            if active[0]:
                return fn(*args, **kwargs)
            active[0] = True
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[phase] += time.perf_counter() - start
                active[0] = False

        return timed_fn

    with contextlib.ExitStack() as stack:
        for phase, targets in PHASES.items():
            for owner, name in targets:
                stack.enter_context(mock.patch.object(owner, name, wrap(phase, getattr(owner, name))))
        yield totals


def bench_phases(experiment: config.Experiment, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-phase wall time of one eager ``train_population`` call."""
    engine.train_population(with_steps(experiment, WARMUP_STEPS), rows, CPU)
    with phase_timers() as totals:
        total = timed(lambda: engine.train_population(experiment, rows, CPU))
    phases = {**totals, LOOP: total - sum(totals.values())}
    return {"members": len(rows), "steps": experiment.steps, "seconds": total, "phases": phases}


def bench_profile(experiment: config.Experiment, rows: list[dict[str, Any]], top: int) -> dict[str, Any]:
    """``torch.profiler`` over one eager ``train_population`` call: the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    engine.train_population(with_steps(experiment, WARMUP_STEPS), rows, CPU)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = timed(lambda: engine.train_population(experiment, rows, CPU))
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total_self = sum(e.self_cpu_time_total for e in events)
    calls = sum(e.count for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_us": e.self_cpu_time_total,
            "share": e.self_cpu_time_total / total_self,
        }
        for e in events[:top]
    ]
    return {
        "members": len(rows),
        "steps": experiment.steps,
        "seconds_profiled": seconds,
        "aten_self_cpu_us": total_self,
        "aten_calls": calls,
        "top_ops": ops,
    }


# ----------------------------------------------------------------------------- report


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def print_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> None:
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=True))

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def report(res: dict[str, Any]) -> None:
    m, s = res["machine"], res["settings"]
    print("tau-lab benchmark: quadrants task, CPU, one process")
    print(f"  machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), {m['platform']}")
    print(f"  python {m['python']}, torch {m['torch']}, torch threads = {m['torch_threads']}")
    print(f"  load average at start {m['load_average_start']}, at end {m['load_average_end']}")
    print(
        f"  steps: population {s['population_steps']}, baseline {s['baseline_steps']} per member; "
        f"median of {s['repeats']} repeats; warm-up {WARMUP_STEPS} steps before each measurement"
    )
    print(f"  torch.compile inductor cache: {s['compile_cache']}")

    print("\n== Throughput: member-steps per second (higher is better) ==")
    rows = []
    for k, entry in res["throughput"].items():
        base = entry["baseline"]["member_steps_per_s"]
        variants = [("baseline: sequential train_reference", entry["baseline"])]
        variants.append(("population, eager", entry["population"]))
        if "compiled" in entry:
            variants.append(("population, compile=true (warm)", entry["compiled"]))
        for name, r in variants:
            rows.append(
                [
                    k,
                    name,
                    str(r["members"]),
                    str(r["steps"]),
                    f"{r['seconds']:.2f}",
                    fmt_rate(r["member_steps_per_s"]),
                    f"{r['member_steps_per_s'] / base:.1f}x",
                ]
            )
    print_table(["K", "variant", "members run", "steps", "seconds", "member-steps/s", "vs baseline"], rows, "llrrrrr")
    for k, entry in res["throughput"].items():
        b = entry["baseline"]
        if b["members"] < int(k):
            print(
                f"  K={k}: the baseline ran {b['members']} of the {k} members (spread over seeds and τ); members "
                f"are independent, so its rate is extrapolated linearly: {k} members × {s['population_steps']} "
                f"steps would take {int(k) * s['population_steps'] / b['member_steps_per_s']:.0f} s sequentially."
            )

    compiled = {k: e["compiled"] for k, e in res["throughput"].items() if "compiled" in e}
    if compiled:
        print("\n== torch.compile (compile=true): first call vs warm ==")
        print_table(
            ["K", "first call (s)", "warm call (s)", "compile overhead (s)", "steps"],
            [
                [
                    k,
                    f"{c['first_call_seconds']:.2f}",
                    f"{c['seconds']:.2f}",
                    f"{c['compile_seconds']:.2f}",
                    str(c["steps"]),
                ]
                for k, c in compiled.items()
            ],
        )
        print("  compile overhead = first call − median warm call of the same steps (K changes shapes: a new graph).")

    st = res["study"]
    pop, base = st["population"], st["baseline"]
    estimate = st["baseline_seconds_for_study"]
    print(f"\n== Seed 001's full study: {pop['members']} members (5 τ × fixed/learnable), {pop['steps']:,} steps ==")
    how = "measured" if base["steps"] == pop["steps"] else "estimated"
    print_table(
        ["variant", "wall (s)", "member-steps/s", "vs baseline"],
        [
            [f"baseline, sequential ({how})", f"{estimate:.1f}", fmt_rate(base["member_steps_per_s"]), "1.0x"],
            [
                "population: run_sweep end to end",
                f"{pop['seconds']:.1f}",
                fmt_rate(pop["member_steps_per_s"]),
                f"{estimate / pop['seconds']:.1f}x",
            ],
        ],
    )
    print(
        f"  baseline: train_reference on the same {base['members']} members × {base['steps']:,} steps "
        f"({base['seconds']:.1f} s), {'' if how == 'measured' else 'extrapolated linearly to '}"
        f"{pop['steps']:,} steps per member."
    )
    print(
        "  run_sweep includes set-up, logging, evaluation, checkpoints and writing the tables "
        "(not the interpreter's start-up and imports)."
    )

    for k, ph in res["phases"].items():
        print(f"\n== Where the time goes: population K={k}, eager, {ph['steps']:,} steps, {ph['seconds']:.2f} s ==")
        print_table(
            ["phase", "seconds", "µs/step", "share"],
            [
                [name, f"{sec:.3f}", f"{sec / ph['steps'] * 1e6:.1f}", f"{sec / ph['seconds']:.0%}"]
                for name, sec in sorted(ph["phases"].items(), key=lambda kv: -kv[1])
            ],
        )

    pr = res["profile"]
    print(f"\n== torch.profiler: population K={pr['members']}, eager, {pr['steps']} steps: top aten ops by self CPU ==")
    print(
        f"  {pr['aten_calls'] / pr['steps']:.0f} aten op calls per step; aten self CPU "
        f"{pr['aten_self_cpu_us'] / pr['steps']:.0f} µs/step (under the profiler, which adds overhead per op; "
        f"profiled wall {pr['seconds_profiled'] / pr['steps'] * 1e6:.0f} µs/step)"
    )
    print_table(
        ["op", "calls/step", "self µs/step", "share"],
        [
            [o["op"], f"{o['calls'] / pr['steps']:.1f}", f"{o['self_cpu_us'] / pr['steps']:.1f}", f"{o['share']:.0%}"]
            for o in pr["top_ops"]
        ],
    )
    print(
        "\nNote: wall-clock timings on a shared machine; other processes may run concurrently, so figures can be "
        "noisy (see the load averages above and seconds_all in the JSON)."
    )


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test of every path")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--population-steps", type=int, help="steps of the population runs (default 2000)")
    parser.add_argument("--baseline-steps", type=int, help="steps per member of the baseline (default 1000)")
    parser.add_argument("--study-steps", type=int, help="steps of the seed's full study (default 10000)")
    parser.add_argument(
        "--study-baseline-steps", type=int, help="baseline steps per study member (default: --baseline-steps)"
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement, median reported (default 3)")
    parser.add_argument("--subset", type=int, default=5, help="members the K=100 baseline runs (default 5)")
    parser.add_argument("--profile-steps", type=int, help="steps of the torch.profiler run (default 200)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile=true measurements")
    parser.add_argument(
        "--warm-compile-cache",
        action="store_true",
        help="use inductor's usual on-disk cache (default in --quick) instead of a fresh one (cold compile)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    pop_steps = args.population_steps or (100 if quick else 2000)
    base_steps = args.baseline_steps or (50 if quick else 1000)
    study_steps = args.study_steps or (300 if quick else 10_000)
    study_base_steps = args.study_baseline_steps or base_steps
    repeats = args.repeats or (1 if quick else 3)
    profile_steps = args.profile_steps or (50 if quick else 200)

    torch.set_num_threads(args.threads)
    fresh_cache = None
    if not (quick or args.warm_compile_cache or args.no_compile or "TORCHINDUCTOR_CACHE_DIR" in os.environ):
        fresh_cache = tempfile.TemporaryDirectory(prefix="tau-lab-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh_cache.name
    res: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "population_steps": pop_steps,
            "baseline_steps": base_steps,
            "study_steps": study_steps,
            "study_baseline_steps": study_base_steps,
            "repeats": repeats,
            "baseline_subset_k100": args.subset,
            "profile_steps": profile_steps,
            "quick": quick,
            "compile_cache": "skipped"
            if args.no_compile
            else ("fresh (cold compile)" if fresh_cache else "inductor's usual cache (may be warm)"),
        },
        "throughput": {},
        "phases": {},
    }

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    for k, seeds in (("5", 1), ("100", 20)):
        experiment = load(pop_steps, seeds)
        rows = config.members(experiment)
        assert len(rows) == int(k), (k, len(rows))
        subset = rows if seeds == 1 else spread(rows, args.subset)
        entry: dict[str, Any] = {}
        say(f"K={k}: baseline, {len(subset)} members × {base_steps} steps × {repeats}")
        entry["baseline"] = bench_baseline(with_steps(experiment, base_steps), subset, repeats)
        say(f"K={k}: population eager, {pop_steps} steps × {repeats}")
        entry["population"] = bench_population(experiment, rows, repeats)
        if not args.no_compile:
            say(f"K={k}: population compile=true, first call + {repeats} warm")
            entry["compiled"] = bench_compiled(experiment, rows, repeats)
        res["throughput"][k] = entry
        say(f"K={k}: per-phase breakdown, {pop_steps} steps")
        res["phases"][k] = bench_phases(experiment, rows)

    study_exp, _ = config.load_experiment("quadrants", ['device="cpu"', f"steps={study_base_steps}"])
    study_rows = config.members(study_exp)
    say(f"study: baseline, {len(study_rows)} members × {study_base_steps} steps")
    study_base = bench_baseline(study_exp, study_rows, 1)
    say(f"study: run_sweep, {len(study_rows)} members × {study_steps} steps")
    study_pop = bench_study(study_steps)
    res["study"] = {
        "baseline": study_base,
        "population": study_pop,
        # members are independent: the sequential loop's time for the study's members × steps
        "baseline_seconds_for_study": study_pop["members"] * study_steps / study_base["member_steps_per_s"],
    }

    say(f"profile: K=5, {profile_steps} steps")
    profile_exp = load(profile_steps, 1)
    res["profile"] = bench_profile(profile_exp, config.members(profile_exp), top=15)
    res["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    report(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    if fresh_cache:
        fresh_cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
