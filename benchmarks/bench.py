"""``make bench``: tau-lab's engine against the seed's sequential loop and its peers, on the quadrants task.

Everything is measured in this one process and run; every ratio is against figures measured here. Nothing is
hard-coded but the step counts, the grids and issue 11's targets (printed beside the measured ratios).

- **throughput** (member-steps/s) at K ∈ {5, 100, 1000} members (the seed's five fixed τ × K/5 seeds), each
  variant timed in interleaved rounds, the median reported:
  - **seed loop** (baseline): ``quadrants.train_reference`` once per member, one after another (an
    ``nn.Module``, ``torch.optim``, one Python step at a time), on 5 members spread over the grid; members are
    independent, so its rate holds for any K;
  - **engine** variants: ``train_population(experiment, rows)`` with config overrides (``--variant``, e.g.
    ``[]``, ``["compile=true"]``, ``["block_steps=64"]``); a variant whose overrides this tau-lab does not
    accept is skipped with a message;
  - **torch.func** peers (``peers.TorchFunc``): ``vmap(grad_and_value(loss))`` + SGD per step, eager and
    under ``torch.compile``;
  - **JAX** anchor (``peers.Jax``): ``jit(scan(vmap(value_and_grad(loss))))``, skipped with a message when JAX
    is not installed. Before timing, the peers' losses are checked against ``train_reference``'s.
- **end to end**: ``tau-lab sweep quadrants`` as a whole process (start-up, imports, set-up, training,
  evaluations, checkpoints, tables) against ``benchmarks/seed_loop.py``, the seed's loop as a whole process,
  on the same members × steps.
- **where the time goes** at K = 5: a per-phase breakdown of one eager engine call and ``torch.profiler``'s
  aten ops by self CPU time.

Usage: ``python benchmarks/bench.py [--quick] [--ks 5,100,1000] [--device cpu|cuda] [--markdown PATH]
[--json PATH] [--threads N] [--variant JSON ...]``. ``--quick`` is a smoke test of every path (< 2 min).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import peers
import torch
from common import interleaved, machine, spread, timed

from tau_lab import config, engine, metrics
from tau_lab.errors import UserError
from tau_lab.optim import Optimizer
from tau_lab.tasks.quadrants import Quadrants, train_reference
from tau_lab.temperature import Temperature

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parent.parent
SEED_TAUS = "[0.99, 0.5, 0.05, 0.01, 0.001]"  # the quadrants study's five temperatures
WARMUP_STEPS = 20
SUBSET = 5  # members the seed loop runs at every K
# Engine variants as config overrides: blocks of 64 steps (the default) or one step at a time, eager or compiled;
# the quadrants step's closed-form gradients (the default) or the generic functional population's
# (``model.gradients = "autograd"``: torch.func over the nn.Module, as every module task computes them).
AUTOGRAD = 'model.gradients="autograd"'
VARIANTS = (
    ["block_steps=1"],
    [],
    ["compile=true"],
    [AUTOGRAD, "block_steps=1"],
    [AUTOGRAD],
    [AUTOGRAD, "compile=true"],
)
# Steps per K: (engine and peers, seed loop per member). K = 1000 and more stay short: a round must stay cheap.
STEPS = {5: (2000, 1000), 100: (1000, 300), 1000: (200, 100), 10000: (50, 20)}
QUICK_STEPS = {5: (100, 30), 100: (50, 20), 1000: (20, 10), 10000: (10, 5)}
CHECK_STEPS, CHECK_RTOL = 20, 1e-4  # the peers' losses against train_reference's, before timing
# Issue 11's targets: the engine's member-steps/s over JAX's, and over the seed loop's, per K.
TARGET_VS_JAX = {5: 0.5, 100: 0.7, 1000: 0.7}
TARGET_VS_LOOP = {5: 150.0}
TARGET_END_TO_END = 30.0


# ----------------------------------------------------------------------------- set-up


def load(
    steps: int, seeds: int = 1, modes: str = '["fixed"]', extra: tuple[str, ...] = (), device: str = "cpu"
) -> config.Experiment:
    """The quadrants experiment with ``steps``, the seed's five τ, ``seeds`` seeds, ``modes``, on ``device``."""
    overrides = [
        f"steps={steps}",
        f"sweep.tau={SEED_TAUS}",
        f"sweep.tau_mode={modes}",
        f"sweep.seeds=[{', '.join(str(s) for s in range(seeds))}]",
        f'device="{device}"',
        *extra,
    ]
    experiment, _ = config.load_experiment("quadrants", overrides)
    return experiment


def with_steps(experiment: config.Experiment, steps: int) -> config.Experiment:
    return experiment.model_copy(update={"steps": steps})


# ----------------------------------------------------------------------------- measurements


def summary(times: list[float], members: int, steps: int, first: float | None = None) -> dict[str, Any]:
    """The median of the interleaved rounds and the member-steps per second it gives."""
    seconds = statistics.median(times)
    return {
        "members": members,
        "steps": steps,
        "seconds": seconds,
        "seconds_all": times,
        "member_steps_per_s": members * steps / seconds,
        "first_call_seconds": first,
    }


def baseline_runner(experiment: config.Experiment, rows: list[dict[str, Any]]) -> Callable[[], Any]:
    """The seed's sequential loop: ``train_reference`` for each member in turn (warmed up first)."""
    train_reference(with_steps(experiment, WARMUP_STEPS), rows[0])
    return lambda: [train_reference(experiment, row) for row in rows]


def engine_runner(experiment: config.Experiment, rows: list[dict[str, Any]]) -> tuple[Callable[[], Any], float]:
    """The engine, one ``train_population`` call (task set-up, logging and evaluation included, as a sweep
    runs it), and the seconds of its first call (with ``compile``, compilation included)."""
    device = engine.resolve_device(experiment.device)
    run = functools.partial(engine.train_population, experiment, rows, device)
    return run, timed(run)


def check_peer(name: str, losses: np.ndarray, reference: np.ndarray) -> float:
    """The largest relative difference of a peer's losses ``[steps, K]`` from ``train_reference``'s; stops
    the benchmark when it exceeds ``CHECK_RTOL``: a peer that trains another model is no peer."""
    worst = float(np.max(np.abs(losses - reference) / np.maximum(np.abs(reference), 1.0)))
    print(f"  check: {name} losses of {CHECK_STEPS} steps vs train_reference: max relative difference {worst:.1e}")
    if not worst <= CHECK_RTOL:
        raise SystemExit(f"{name} does not compute tau-lab's loss (max relative difference {worst:.1e})")
    return worst


def check_peers(device: torch.device, use_jax: bool) -> dict[str, float]:
    """The peers' per-step losses on the seed's five members against each member trained alone."""
    experiment = load(CHECK_STEPS)
    rows = config.members(experiment)
    reference = np.array([train_reference(experiment, r).losses for r in rows]).T  # [steps, K]
    out = {}
    for compiled in (False, True):
        name = "torch.func" + (" + compile" if compiled else "")
        losses = peers.TorchFunc(experiment, rows, device, compiled).run().cpu().numpy()
        out[name] = check_peer(name, losses, reference)
    if use_jax:
        out["jax"] = check_peer("jax", peers.Jax(experiment, rows).run(), reference)
    return out


def bench_k(k: int, steps: tuple[int, int], args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Every variant at K members: interleaved rounds, medians."""
    pop_steps, base_steps = steps
    experiment = load(pop_steps, k // 5, device=args.device)
    rows = config.members(experiment)
    device = engine.resolve_device(experiment.device)
    subset = spread(rows, SUBSET)
    runners: dict[str, Callable[[], Any]] = {"seed loop": baseline_runner(load(base_steps, k // 5), subset)}
    first: dict[str, float | None] = {"seed loop": None}
    kinds = {"seed loop": "baseline"}
    for overrides in args.variants:
        name = f"engine {json.dumps(overrides)}"
        try:
            variant = load(pop_steps, k // 5, extra=tuple(overrides), device=args.device)
        except UserError as err:
            args.skipped.setdefault(name, str(err))
            continue
        say(f"K={k}: {name}: first call ({pop_steps} steps)")
        try:
            runners[name], first[name] = engine_runner(variant, rows)
        except Exception as err:  # one variant that fails on this machine: the others are still measured
            args.skipped[f"K={k} {name}"] = f"failed: {type(err).__name__}: {str(err)[:300]}"
            say(f"K={k}: {name} failed: {type(err).__name__}: {err}")
            continue
        kinds[name] = "engine"
    if not args.no_torch_func:
        for compiled in (False, True):
            name = "torch.func vmap" + (" + compile" if compiled else "")
            peer = peers.TorchFunc(experiment, rows, device, compiled)
            say(f"K={k}: {name}: first call ({pop_steps} steps)")
            runners[name], first[name] = peer.run, timed(peer.run)
            kinds[name] = "peer"
    if args.jax:
        anchor = peers.Jax(experiment, rows)
        name = f"jax vmap + scan + jit ({anchor.device})"
        say(f"K={k}: {name}: first call, compile included ({pop_steps} steps)")
        runners[name], first[name] = anchor.run, timed(anchor.run)
        kinds[name] = "jax"
    say(f"K={k}: {args.repeats} interleaved rounds of {', '.join(runners)}")
    times = interleaved(runners, args.repeats)
    out = {}
    for name, t in times.items():
        members, n = (len(subset), base_steps) if name == "seed loop" else (len(rows), pop_steps)
        out[name] = summary(t, members, n, first[name]) | {"kind": kinds[name]}
    return out


def end_to_end(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """``tau-lab sweep quadrants`` and ``seed_loop.py`` as whole processes, same members × steps, wall-clock,
    interleaved rounds, medians. Both import this checkout's tau_lab (``PYTHONPATH``) with the same
    environment."""
    overrides = [f"sweep.seeds=[{', '.join(map(str, range(args.e2e_seeds)))}]", 'device="cpu"']
    if args.e2e_steps:
        overrides.append(f"steps={args.e2e_steps}")
    experiment, _ = config.load_experiment("quadrants", overrides)
    sets = [arg for o in overrides for arg in ("--set", o)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    scratch = tempfile.TemporaryDirectory(prefix="tau-lab-bench-e2e-")

    def process(command: list[str]) -> Callable[[], None]:
        def run() -> None:
            subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)

        return run

    commands = {
        "tau-lab sweep quadrants": [
            sys.executable,
            "-m",
            "tau_lab",
            "sweep",
            "quadrants",
            *sets,
            "--results",
            scratch.name,
        ],
        "seed loop (benchmarks/seed_loop.py)": [
            sys.executable,
            str(ROOT / "benchmarks" / "seed_loop.py"),
            scratch.name,
            *sets,
        ],
    }
    members = len(config.members(experiment))
    say(f"end to end: {args.e2e_repeats} rounds of {members} members × {experiment.steps} steps, each as a process")
    times = interleaved({name: process(c) for name, c in commands.items()}, args.e2e_repeats)
    scratch.cleanup()
    return {
        "members": members,
        "steps": experiment.steps,
        "commands": {name: " ".join(c) for name, c in commands.items()},
        "seconds": {name: statistics.median(t) for name, t in times.items()},
        "seconds_all": times,
        "torch_threads_env": env.get("OMP_NUM_THREADS"),
    }


# ----------------------------------------------------------------------------- where the time goes

# What the engine's loop calls, by phase; the rest of the call is the loop itself (``LOOP``).
PHASES: dict[str, tuple[str, list[tuple[Any, str]]]] = {
    "set-up": ("task data, index streams, initial weights", [(Quadrants, "__init__")]),
    "task.batch": ("gather the step's points", [(Quadrants, "batch")]),
    "temperature(step)": ("τ per member", [(Temperature, "forward"), (Temperature, "tau")]),
    "task.step": ("loss and gradients", [(Quadrants, "step"), (Quadrants, "autograd_step")]),
    "optimizer.step": ("masked SGD update", [(Optimizer, "step"), (Optimizer, "update")]),
    "temperature.clamp_": ("clamp learnable τ", [(Temperature, "clamp_"), (Temperature, "clamp")]),
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


def table_lines(
    headers: list[str], rows: list[list[str]], align: str | None = None, markdown: bool = False
) -> list[str]:
    """A plain-text table (columns padded) or a markdown one."""
    align = align or "l" + "r" * (len(headers) - 1)
    if markdown:
        rule = ["---:" if a == "r" else "---" for a in align]
        return ["| " + " | ".join(cells) + " |" for cells in (headers, rule, *rows)]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align, strict=True))

    return [line(headers), "  ".join("-" * w for w in widths), *map(line, rows)]


def print_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> None:
    print("\n".join(table_lines(headers, rows, align)))


def round_ratios(r: dict[str, Any], other: dict[str, Any] | None) -> str:
    """The lowest and highest ratio of ``r``'s rate to ``other``'s within one interleaved round: the spread
    that other processes put on the median ratio."""
    if other is None:
        return ""
    ratios = [
        (r["members"] * r["steps"] / a) / (other["members"] * other["steps"] / b)
        for a, b in zip(r["seconds_all"], other["seconds_all"], strict=True)
    ]
    return f"{min(ratios):.3g}–{max(ratios):.3g}"


def throughput_table(res: dict[str, Any], markdown: bool = False) -> list[str]:
    """One row per K and variant: median seconds, member-steps/s, its ratio to the seed loop and to JAX (the
    ratio of the medians, and the range of the per-round ratios)."""
    rows = []
    for k, entry in res["throughput"].items():
        base = entry["seed loop"]["member_steps_per_s"]
        jax_row = next((r for r in entry.values() if r["kind"] == "jax"), None)
        anchor = None if jax_row is None else jax_row["member_steps_per_s"]
        for name, r in entry.items():
            rate = r["member_steps_per_s"]
            first = r["first_call_seconds"]
            rows.append(
                [
                    k,
                    name,
                    str(r["members"]),
                    str(r["steps"]),
                    f"{r['seconds']:.3f}",
                    "" if first is None else f"{first:.2f}",
                    fmt_rate(rate),
                    f"{rate / base:.1f}x",
                    round_ratios(r, entry["seed loop"]),
                    "" if anchor is None else f"{rate / anchor:.3f}x",
                    round_ratios(r, jax_row),
                ]
            )
    headers = ["K", "variant", "members run", "steps", "median s", "first call s", "member-steps/s"]
    headers += ["vs loop", "(rounds)", "vs JAX", "(rounds)"]
    return table_lines(headers, rows, "llrrrrrrrrr", markdown)


def targets_table(res: dict[str, Any], markdown: bool = False) -> list[str]:
    """Issue 11's targets beside the engine variants' measured ratios."""
    rows = []
    for k, entry in res["throughput"].items():
        base = entry["seed loop"]["member_steps_per_s"]
        anchor = next((r["member_steps_per_s"] for r in entry.values() if r["kind"] == "jax"), None)
        for name, r in entry.items():
            if r["kind"] != "engine":
                continue
            rate = r["member_steps_per_s"]
            if int(k) in TARGET_VS_LOOP:
                goal = TARGET_VS_LOOP[int(k)]
                rows.append(
                    [
                        k,
                        name,
                        f"≥ {goal:g}x the seed loop",
                        f"{rate / base:.1f}x",
                        "yes" if rate / base >= goal else "no",
                    ]
                )
            if int(k) in TARGET_VS_JAX:
                goal = TARGET_VS_JAX[int(k)]
                measured = "no JAX" if anchor is None else f"{rate / anchor:.3f}x"
                met = "?" if anchor is None else ("yes" if rate / anchor >= goal else "no")
                rows.append([k, name, f"≥ {goal:g}x JAX", measured, met])
    e2e = res.get("end_to_end")
    if e2e:
        ratio = e2e["seconds"]["seed loop (benchmarks/seed_loop.py)"] / e2e["seconds"]["tau-lab sweep quadrants"]
        what = f"sweep, {e2e['members']} members × {e2e['steps']} steps"
        rows.append(
            [
                "",
                what,
                f"≥ {TARGET_END_TO_END:g}x the seed loop",
                f"{ratio:.1f}x",
                "yes" if ratio >= TARGET_END_TO_END else "no",
            ]
        )
    return table_lines(["K", "variant", "issue 11 target", "measured", "met"], rows, "lllrl", markdown)


def end_to_end_table(e2e: dict[str, Any], markdown: bool = False) -> list[str]:
    base = e2e["seconds"]["seed loop (benchmarks/seed_loop.py)"]
    rows = [
        [name, f"{s:.1f}", fmt_rate(e2e["members"] * e2e["steps"] / s), f"{base / s:.1f}x"]
        for name, s in e2e["seconds"].items()
    ]
    return table_lines(["process", "wall s (median)", "member-steps/s", "vs seed loop"], rows, "lrrr", markdown)


def header_lines(res: dict[str, Any]) -> list[str]:
    m, s = res["machine"], res["settings"]
    return [
        f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), {m['platform']}",
        f"python {m['python']}, torch {m['torch']}, torch threads = {m['torch_threads']}, jax {s['jax']}, "
        f"device {s['device']}{' (' + s['cuda_device'] + ')' if s['cuda_device'] else ''}",
        f"load average at start {m['load_average_start']}, at end {m['load_average_end']}",
        f"{s['repeats']} interleaved rounds per K, medians; steps per K (engine and peers, seed loop): {s['steps']}; "
        f"seed loop on {SUBSET} members spread over the grid (members are independent)",
        f"command: {s['command']}",
    ]


def report(res: dict[str, Any]) -> None:
    print("tau-lab benchmark: the quadrants task")
    print("\n".join("  " + line for line in header_lines(res)))
    for name, why in res["skipped"].items():
        print(f"  skipped {name}: {why}")
    print("\n== Throughput: member-steps per second (higher is better) ==")
    print("\n".join(throughput_table(res)))
    print("  first call: the warm-up call of the same steps (compilation included for compiled variants)")
    print(
        "  engine rows are whole train_population calls (task set-up, logging every log_every steps, evaluations "
        "at the first and last step); the peers only train"
    )
    if "end_to_end" in res:
        e2e = res["end_to_end"]
        print(f"\n== End to end: whole processes, {e2e['members']} members × {e2e['steps']:,} steps ==")
        print("\n".join(end_to_end_table(e2e)))
        for name, command in e2e["commands"].items():
            print(f"  {name}: {command}")
    print("\n== Issue 11's targets ==")
    print("\n".join(targets_table(res)))
    if "phases" in res:
        report_phases(res)
    print(
        "\nNote: wall-clock timings; other processes on the machine add time and noise (see the load averages "
        "above and seconds_all in the JSON)."
    )


def report_phases(res: dict[str, Any]) -> None:
    ph = res["phases"]
    print(f"\n== Where the time goes: engine K={ph['members']}, eager, {ph['steps']:,} steps, {ph['seconds']:.2f} s ==")
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
    print(f"\n== torch.profiler: engine K={pr['members']}, eager, {n} steps (aten ops, self CPU time) ==")
    print(
        f"  profiled wall {pr['seconds_profiled'] / n * 1e6:.0f} µs/step (the profiler adds a cost per op, "
        "so compare shares and op counts, not absolute times)"
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


def write_markdown(res: dict[str, Any], path: Path) -> None:
    """The run as one markdown file: the machine, the throughput table, end to end and the targets."""
    lines = ["# tau-lab benchmark: the quadrants task", "", *("- " + line for line in header_lines(res))]
    lines += [f"- skipped {name}: {why}" for name, why in res["skipped"].items()]
    lines += ["", "## Throughput (member-steps/s)", "", *throughput_table(res, markdown=True)]
    if "end_to_end" in res:
        lines += ["", "## End to end (whole processes)", "", *end_to_end_table(res["end_to_end"], markdown=True)]
    lines += ["", "## Issue 11's targets", "", *targets_table(res, markdown=True), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"\nmarkdown written to {path}")


def write_json(res: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny step counts, one round: a smoke test (< 2 min)")
    parser.add_argument("--ks", default="5,100,1000", help="population sizes, multiples of 5 (default 5,100,1000)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="engine and torch.func device")
    parser.add_argument(
        "--variant",
        dest="variants",
        action="append",
        type=json.loads,
        help='engine config overrides as a JSON list, repeatable (default: ["block_steps=1"], [], ["compile=true"], '
        'and the three with model.gradients="autograd")',
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds, the median reported (default 5; --quick 1)")
    parser.add_argument("--population-steps", type=int, help="steps of the engine and peers at every K")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX anchor")
    parser.add_argument("--no-torch-func", action="store_true", help="skip the torch.func peers")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the whole-process comparison")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-phase breakdown and the profiler")
    parser.add_argument(
        "--e2e-steps", type=int, help="steps of the end-to-end runs (default: the study's; --quick 300)"
    )
    parser.add_argument("--e2e-seeds", type=int, default=1, help="seeds of the end-to-end runs (default 1: 10 members)")
    parser.add_argument("--e2e-repeats", type=int, help="rounds of the end-to-end processes (default 2; --quick 1)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    parser.add_argument("--markdown", type=Path, help="also write the tables as markdown to this path")
    args = parser.parse_args(argv)
    args.ks = [int(k) for k in args.ks.split(",")]
    if any(k % 5 or k <= 0 for k in args.ks):
        parser.error(f"--ks {args.ks}: each K must be a positive multiple of 5 (five τ × K/5 seeds)")
    args.variants = [list(v) for v in VARIANTS] if args.variants is None else args.variants
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.e2e_repeats = args.e2e_repeats or (1 if args.quick else 2)
    args.e2e_steps = args.e2e_steps or (300 if args.quick else None)
    args.skipped = {}
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the end-to-end processes: the same thread count
    table = QUICK_STEPS if args.quick else STEPS
    steps = {k: (args.population_steps or table.get(k, (50, 20))[0], table.get(k, (50, 20))[1]) for k in args.ks}
    missing = None if args.no_jax else peers.jax_missing()
    args.jax = not args.no_jax and missing is None
    if missing:
        args.skipped["jax"] = missing
    device = engine.resolve_device(args.device)
    res: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "steps": {str(k): v for k, v in steps.items()},
            "repeats": args.repeats,
            "quick": args.quick,
            "device": str(device),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "jax": None if not args.jax else __import__("jax").__version__,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "skipped": args.skipped,
        "throughput": {},
    }

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    if not args.no_torch_func or args.jax:
        say(f"checking the peers against train_reference ({CHECK_STEPS} steps, K=5)")
        res["checks"] = check_peers(device, args.jax)
    for k in args.ks:
        res["throughput"][str(k)] = bench_k(k, steps[k], args, say)
        if args.json:  # kept as each K ends: a run stopped at a time limit still leaves what it measured
            write_json(res, args.json)
    for name, why in args.skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    if not args.no_end_to_end:
        res["end_to_end"] = end_to_end(args, say)
    if not args.no_profile:
        pop_steps = steps.get(5, STEPS[5])[0]
        say(f"per-phase breakdown and profile: K=5, eager, {pop_steps} steps")
        experiment = load(pop_steps)
        rows = config.members(experiment)
        res["phases"] = bench_phases(experiment, rows)
        profile_exp = load(min(pop_steps, 200))
        res["profile"] = bench_profile(profile_exp, config.members(profile_exp), top=15)
    res["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    report(res)
    if args.markdown:
        write_markdown(res, args.markdown)
    if args.json:
        write_json(res, args.json)
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
