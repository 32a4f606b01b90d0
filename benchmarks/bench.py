"""``make bench``: the population engine against the quadrants study's sequential loop, on the quadrants task.

Everything is measured in this one process, on the CPU, in this run; every ratio is against the
baseline measured here. Nothing is hard-coded but the step counts and the grids.

- **baseline**: ``train_reference(exp, member)`` once per member, one after another (the blog post's
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
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from common import interleaved, machine, spread, timed

from tau_lab import config, engine, metrics
from tau_lab.optim import Optimizer
from tau_lab.tasks.quadrants import Quadrants, train_reference
from tau_lab.temperature import Temperature

CPU = torch.device("cpu")
SEED_TAUS = "[0.99, 0.5, 0.05, 0.01, 0.001]"  # the quadrants study's five temperatures
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


# ----------------------------------------------------------------------------- measurements


def summary(times: list[float], members: int, steps: int) -> dict[str, Any]:
    """The best (shortest) of the repeats, and the member-steps per second it gives: other processes
    on the machine can only add time, so the minimum is the least noisy estimate."""
    seconds = min(times)
    return {
        "members": members,
        "steps": steps,
        "seconds": seconds,
        "seconds_all": times,
        "member_steps_per_s": members * steps / seconds,
    }


def baseline_runner(experiment: config.Experiment, rows: list[dict[str, Any]]) -> Callable[[], Any]:
    """The quadrants study's sequential loop: ``train_reference`` for each member in turn (warmed up first)."""
    train_reference(with_steps(experiment, WARMUP_STEPS), rows[0])
    return lambda: [train_reference(experiment, row) for row in rows]


def population_runner(experiment: config.Experiment, rows: list[dict[str, Any]]) -> Callable[[], Any]:
    """The population engine, one ``train_population`` call (task set-up, logging and evaluation
    included, as a sweep runs it); warmed up first with a short call (with ``compile``, the first
    call, compile included, is the warm-up)."""
    engine.train_population(with_steps(experiment, WARMUP_STEPS), rows, CPU)
    return lambda: engine.train_population(experiment, rows, CPU)


def first_call(experiment: config.Experiment, rows: list[dict[str, Any]]) -> float:
    """Seconds of a ``train_population`` call with ``compile = true`` on a cold Dynamo cache for these shapes."""
    return timed(lambda: engine.train_population(experiment, rows, CPU))


def study_runner(experiment: config.Experiment) -> Callable[[], Any]:
    """The quadrants study end to end: ``run_sweep`` (as ``tau-lab sweep quadrants``) into a temp dir."""

    def run() -> None:
        with tempfile.TemporaryDirectory() as root:
            engine.run_sweep(experiment, "quadrants", root=Path(root))

    return run


# ----------------------------------------------------------------------------- where the time goes

# What the engine's loop calls, by phase; the rest of the call is the loop itself (``LOOP``).
PHASES: dict[str, tuple[str, list[tuple[Any, str]]]] = {
    "set-up": ("task data, index streams, initial weights", [(Quadrants, "__init__")]),
    "task.batch": ("gather the step's points", [(Quadrants, "batch")]),
    "temperature(step)": ("τ per member", [(Temperature, "forward")]),
    "task.step": ("loss and closed-form gradients", [(Quadrants, "step")]),
    "optimizer.step": ("masked SGD update", [(Optimizer, "step")]),
    "temperature.clamp_": ("clamp learnable τ", [(Temperature, "clamp_")]),
    "logging": (
        "metrics, MetricLog.record (every log_every)",
        [(metrics, "grad_norm"), (metrics, "effective_negatives"), (engine.MetricLog, "record")],
    ),
    "evaluation": ("evaluate, embed (every eval_every)", [(Quadrants, "evaluate"), (Quadrants, "embed")]),
}
LOOP = "engine loop"
LOOP_NOTE = "finite checks, alive mask, loss window, Python"
NOT_PER_STEP = ("set-up", "evaluation")  # once, or every eval_every steps: left out of the per-step op table


@contextlib.contextmanager
def phase_timers(ranges: bool = False) -> Iterator[dict[str, float]]:
    """Wrap the functions of ``PHASES`` with ``perf_counter`` timers (and, with ``ranges``, in
    ``torch.profiler.record_function`` ranges named after the phase). Only the outermost call is
    counted, so that nested calls (``evaluate`` → ``embed``) are not counted twice. The library's
    files are not changed: the wrappers are removed on exit."""
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
                with torch.profiler.record_function(phase) if ranges else contextlib.nullcontext():
                    return fn(*args, **kwargs)
            finally:
                totals[phase] += time.perf_counter() - start
                active[0] = False

        return timed_fn

    with contextlib.ExitStack() as stack:
        for phase, (_, targets) in PHASES.items():
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
    """``torch.profiler`` over one eager ``train_population`` call, phases marked with ranges.

    Each aten op's self CPU time is charged to its outermost phase (``LOOP`` when none). Returns
    the self CPU time and op calls per phase, and the top (phase, op) pairs of the per-step phases.
    """
    engine.train_population(with_steps(experiment, WARMUP_STEPS), rows, CPU)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, phase_timers(ranges=True):
        seconds = timed(lambda: engine.train_population(experiment, rows, CPU))

    def phase_of(event: Any) -> str:
        phase, parent = LOOP, event.cpu_parent
        while parent is not None:
            if parent.name in PHASES:
                phase = parent.name
            parent = parent.cpu_parent
        return phase

    per_phase: dict[str, dict[str, float]] = {}
    per_op: dict[tuple[str, str], dict[str, float]] = {}
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        phase = phase_of(event)
        for key, table in ((phase, per_phase), ((phase, event.name), per_op)):
            entry = table.setdefault(key, {"calls": 0, "self_cpu_us": 0.0})
            entry["calls"] += 1
            entry["self_cpu_us"] += event.self_cpu_time_total
    step_total = sum(v["self_cpu_us"] for k, v in per_phase.items() if k not in NOT_PER_STEP)
    ops = sorted(
        ({"phase": p, "op": op, **v} for (p, op), v in per_op.items() if p not in NOT_PER_STEP),
        key=lambda o: -o["self_cpu_us"],
    )[:top]
    for o in ops:
        o["share"] = o["self_cpu_us"] / step_total
    return {
        "members": len(rows),
        "steps": experiment.steps,
        "seconds_profiled": seconds,
        "phases": dict(sorted(per_phase.items(), key=lambda kv: -kv[1]["self_cpu_us"])),
        "per_step_self_cpu_us": step_total,
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
        f"best of {s['repeats']} interleaved rounds; warm-up {WARMUP_STEPS} steps before each measurement"
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
        print("  compile overhead = first call − best warm call of the same steps (K changes shapes: a new graph).")

    st = res["study"]
    pop, base = st["population"], st["baseline"]
    estimate = st["baseline_seconds_for_study"]
    print(f"\n== The quadrants study: {pop['members']} members (5 τ × fixed/learnable), {pop['steps']:,} steps ==")
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
        notes = {name: note for name, (note, _) in PHASES.items()} | {LOOP: LOOP_NOTE}
        print_table(
            ["phase", "what", "seconds", "µs/step", "share"],
            [
                [name, notes[name], f"{sec:.3f}", f"{sec / ph['steps'] * 1e6:.1f}", f"{sec / ph['seconds']:.0%}"]
                for name, sec in sorted(ph["phases"].items(), key=lambda kv: -kv[1])
            ],
            "llrrr",
        )

    pr = res["profile"]
    n = pr["steps"]
    print(f"\n== torch.profiler: population K={pr['members']}, eager, {n} steps (aten ops, self CPU time) ==")
    print(
        f"  profiled wall {pr['seconds_profiled'] / n * 1e6:.0f} µs/step (the profiler adds a cost per op, "
        "so compare shares and op counts, not absolute times)"
    )
    print_table(
        ["phase", "op calls/step", "self µs/step"],
        [[p, f"{v['calls'] / n:.1f}", f"{v['self_cpu_us'] / n:.1f}"] for p, v in pr["phases"].items()],
    )
    per_step_calls = sum(v["calls"] for p, v in pr["phases"].items() if p not in NOT_PER_STEP)
    print(
        f"  per-step phases (all but {', '.join(NOT_PER_STEP)}): {per_step_calls / n:.0f} aten op calls/step, "
        f"{pr['per_step_self_cpu_us'] / n:.0f} µs/step of aten self CPU time; their top ops:"
    )
    print_table(
        ["phase", "op", "calls/step", "self µs/step", "share"],
        [
            [o["phase"], o["op"], f"{o['calls'] / n:.1f}", f"{o['self_cpu_us'] / n:.1f}", f"{o['share']:.0%}"]
            for o in pr["top_ops"]
        ],
        "llrrr",
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
    parser.add_argument("--repeats", type=int, help="timed rounds per measurement, best reported (default 3)")
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
        baseline_exp = with_steps(experiment, base_steps)
        compiled_exp = experiment.model_copy(update={"compile": True})
        runners = {"baseline": baseline_runner(baseline_exp, subset), "population": population_runner(experiment, rows)}
        if not args.no_compile:
            say(f"K={k}: compile=true, first call ({pop_steps} steps)")
            first = first_call(compiled_exp, rows)
            runners["compiled"] = population_runner(compiled_exp, rows)
        say(
            f"K={k}: {repeats} rounds of baseline ({len(subset)} members × {base_steps} steps), "
            f"population ({pop_steps} steps){'' if args.no_compile else ', compiled (warm)'}"
        )
        times = interleaved(runners, repeats)
        entry = {
            "baseline": summary(times["baseline"], len(subset), base_steps),
            "population": summary(times["population"], len(rows), pop_steps),
        }
        if not args.no_compile:
            entry["compiled"] = summary(times["compiled"], len(rows), pop_steps)
            entry["compiled"]["first_call_seconds"] = first
            entry["compiled"]["compile_seconds"] = first - entry["compiled"]["seconds"]
        res["throughput"][k] = entry
        say(f"K={k}: per-phase breakdown, {pop_steps} steps")
        res["phases"][k] = bench_phases(experiment, rows)

    study_exp, _ = config.load_experiment("quadrants", ['device="cpu"', f"steps={study_steps}"])
    study_rows = config.members(study_exp)
    say(
        f"study: {repeats} rounds of baseline ({len(study_rows)} members × {study_base_steps} steps), "
        f"run_sweep ({study_steps} steps)"
    )
    times = interleaved(
        {
            "baseline": baseline_runner(with_steps(study_exp, study_base_steps), study_rows),
            "run_sweep": study_runner(study_exp),
        },
        repeats,
    )
    study_base = summary(times["baseline"], len(study_rows), study_base_steps)
    study_pop = summary(times["run_sweep"], len(study_rows), study_steps)
    res["study"] = {
        "baseline": study_base,
        "population": study_pop,
        # members are independent: the sequential loop's time for the study's members × steps
        "baseline_seconds_for_study": len(study_rows) * study_steps / study_base["member_steps_per_s"],
    }

    say(f"profile: K=5, {profile_steps} steps")
    profile_exp = load(profile_steps, 1)
    res["profile"] = bench_profile(profile_exp, config.members(profile_exp), top=20)
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
