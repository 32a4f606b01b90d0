"""How the number of negatives moves the best τ: CLIP on the digits at a global batch of 64 to 512, the
larger batches split over 2 and 4 processes with gathered negatives (``torchrun``, gloo on the CPU).

1. **The study**: ``tau-lab sweep digits_clip_negatives --set data.batch_size=B`` for B = 64 and 128 in one
   process, 256 under ``torchrun --nproc-per-node 2`` and 512 under ``--nproc-per-node 4`` (128 pairs per
   process), each with ``OMP_NUM_THREADS=1`` per process. Per batch, every τ against the best one on the
   headline metric, paired by seed (``analysis.compare_to_best``: mean paired difference and its 95 %
   t-interval; "not distinguishable" when it covers 0).
2. **The cost of the gather**: per training step (the step's batch, ``task.step``: forward, gather, backward,
   the all-reduce of loss and gradients) at a global batch of 128·P on P = 1, 2, 4 processes, and at 512 on
   each; and the collectives alone (the two gathers forward and backward and the gradients' all-reduce, at
   the step's shapes). Best of ``--repeats`` rounds of ``--time-steps`` steps; every process's time is
   measured and the slowest reported (the processes wait for each other at every collective).

Usage: ``python benchmarks/gathered_negatives.py [--out DIR] [--json PATH] [--steps N] [--quick]``; the study
takes about 5 minutes on a 2-core CPU. Internally the script reruns itself under torchrun with ``--time B``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STUDY = "digits_clip_negatives"
RUNS = [(64, 1), (128, 1), (256, 2), (512, 4)]  # (global batch, processes)
TIMINGS = [(128, 1), (256, 2), (512, 4), (512, 1), (512, 2)]
METRICS = ("zero_shot_single", "zero_shot_ensemble")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, args: list[str]) -> list[str]:
    """``python ARGS`` (``-m module ...`` or ``script ...``) in one process, or under torchrun on a free port."""
    if processes == 1:
        return [sys.executable, *args]
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    return [*run, "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *args]


def run_study(out: Path, steps: int | None) -> list[dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for batch, processes in RUNS:
        args = ["-m", "tau_lab", "sweep", STUDY, "--set", f"data.batch_size={batch}", "--quiet", "--results", str(out)]
        if steps is not None:
            args += ["--steps", str(steps)]
        before = set((out / STUDY).glob("*")) if (out / STUDY).exists() else set()
        start = time.perf_counter()
        subprocess.run(launch(processes, args), check=True, env=env, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        (run_dir,) = set((out / STUDY).glob("*")) - before
        runs.append({"batch": batch, "processes": processes, "seconds": seconds, "run_dir": str(run_dir)})
        print(f"batch {batch} on {processes} process(es): {seconds:.0f} s, {run_dir}", file=sys.stderr)
    return runs


def best_tau(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch and metric, every τ against the best, paired by seed; with the mean effective negatives and
    false-negative mass of the last logging step (the hardness the loss saw)."""
    import pandas as pd

    from tau_lab.analysis import compare_to_best

    rows = []
    for run in runs:
        members = pd.read_parquet(Path(run["run_dir"]) / "members.parquet")
        hardness = members.groupby("tau_init")[["effective_negatives", "false_negative_mass"]].mean()
        for metric in METRICS:
            table = compare_to_best(members, metric, ["tau_init"], lower_is_better=False).join(hardness, on="tau_init")
            for r in table.to_dict("records"):
                rows.append({"batch": run["batch"], "processes": run["processes"], "metric": metric, **r})
    return rows


def gap_growth(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per metric and τ: how the gap to the smallest batch's best τ changes from the smallest batch to the
    largest, paired by seed (the runs share each seed's initial weights and batch stream):
    ``d_s = [m(τ*) − m(τ)]_{B max} − [m(τ*) − m(τ)]_{B min}``, its mean and 95 % t-interval."""
    import pandas as pd

    from tau_lab.analysis import compare_to_best, paired_interval

    first, last = (pd.read_parquet(Path(runs[i]["run_dir"]) / "members.parquet") for i in (0, -1))
    rows = []
    for metric in METRICS:
        best = compare_to_best(first, metric, ["tau_init"], lower_is_better=False).loc[0, "tau_init"]
        gaps = []
        for members in (first, last):
            table = members[members["status"] == "ok"].pivot_table(index="seed", columns="tau_init", values=metric)
            gaps.append(-table.sub(table[best], axis=0))  # m(τ*) − m(τ), per seed
        for tau in sorted(set(first["tau_init"]) - {best}):
            small, large = (g[tau] for g in gaps)
            mean, low, high, n = paired_interval(large, small)
            rows.append({"metric": metric, "best_tau": best, "tau_init": tau, "gap_small": small.mean()})
            rows[-1] |= {"gap_large": large.mean(), "change": mean, "low": low, "high": high, "pairs": n}
    return rows


def latest_runs(out: Path) -> list[dict[str, Any]]:
    """The newest run of each of the study's batches under ``out`` (``--analyse``)."""
    import tomllib

    runs = {}
    for run_dir in sorted((out / STUDY).glob("*")):
        batch = tomllib.loads((run_dir / "config.toml").read_text())["data"]["batch_size"]
        processes = json.loads((run_dir / "env.json").read_text()).get("processes", 1)
        runs[batch] = {"batch": batch, "processes": processes, "seconds": None, "run_dir": str(run_dir)}
    return [runs[b] for b in sorted(runs)]


def time_steps(batch: int, steps: int, repeats: int) -> None:
    """Under torchrun (or alone): seconds per training step and per step's collectives, the slowest process's
    best round; printed as one JSON line by process 0."""
    import torch
    import torch.distributed as dist

    from tau_lab import config, distributed
    from tau_lab.tasks import TASKS
    from tau_lab.tasks.base import StepResult

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    experiment, _ = config.load_experiment(STUDY, [f"data.batch_size={batch}"])
    with distributed.init_from_env(experiment, cpu):
        rows = config.members(experiment)
        task = TASKS["clip"](experiment, rows, cpu)
        tau = torch.tensor([r["tau_init"] for r in rows])
        b, k, d = task.rows.stop - task.rows.start, len(rows), experiment.model.embed_dim
        features = [torch.randn(k, b, d, requires_grad=True) for _ in range(2)]

        def step(i: int) -> None:
            task.step(task.params, tau, task.batch(i))

        def collectives(i: int) -> None:
            gathered = [distributed.gather(x, 1) for x in features]
            torch.autograd.grad(sum(g.sum() for g in gathered), features)
            grads = {n: torch.zeros_like(p) for n, p in task.params.items()}
            distributed.average(StepResult(torch.zeros(k), grads, torch.zeros(k)))

        out = {"batch": batch, "processes": distributed.world()[1], "members": k}
        for name, fn in (("step", step), ("collectives", collectives)):
            for i in range(3):  # warm-up
                fn(i)
            rounds = []
            for _ in range(repeats):
                if distributed.world()[1] > 1:
                    dist.barrier()
                start = time.perf_counter()
                for i in range(steps):
                    fn(i)
                rounds.append((time.perf_counter() - start) / steps)
            best = torch.tensor(min(rounds))
            if distributed.world()[1] > 1:
                dist.all_reduce(best, op=dist.ReduceOp.MAX)
            out[f"{name}_ms"] = round(1000 * float(best), 2)
        if distributed.is_main():
            print(json.dumps(out), flush=True)


def run_timings(steps: int, repeats: int) -> list[dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(Path(__file__).resolve())
    out = []
    for batch, processes in TIMINGS:
        args = [script, "--time", str(batch), "--time-steps", str(steps), "--repeats", str(repeats)]
        result = subprocess.run(launch(processes, args), check=True, env=env, capture_output=True, text=True)
        line = [x for x in result.stdout.splitlines() if x.startswith("{")][-1]
        out.append(json.loads(line))
        print(line, file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="results directory of the sweeps (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here too")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the study's 300)")
    parser.add_argument("--time", type=int, default=None, help=argparse.SUPPRESS)  # internal: time one batch
    parser.add_argument("--time-steps", type=int, default=20, help="steps per timing round")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (the best is kept)")
    parser.add_argument("--analyse", action="store_true", help="no training: analyse the newest runs in --out")
    parser.add_argument("--quick", action="store_true", help="10 training steps, 3 timed steps, 1 round: a smoke test")
    args = parser.parse_args()
    if args.time is not None:
        time_steps(args.time, args.time_steps, args.repeats)
        return
    if args.quick:
        args.steps, args.time_steps, args.repeats = 10, 3, 1
    if args.analyse:
        if args.out is None:
            parser.error("--analyse reads the runs in --out DIR")
        runs, timings = latest_runs(args.out), []
        comparisons, gaps = best_tau(runs), gap_growth(runs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            runs = run_study(args.out or Path(tmp), args.steps)
            comparisons, gaps = best_tau(runs), gap_growth(runs)
        timings = run_timings(args.time_steps, args.repeats)
    print("\n| batch | processes | metric | τ | mean ± sd | best − this [95 % CI] | verdict | eff. neg. | FN mass |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in comparisons:
        diff = "best" if r["best"] else f"{r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"
        verdict = "" if r["best"] else ("yes" if r["distinguishable"] else "not distinguishable")
        mean = f"{r['mean']:.3f} ± {r['sd']:.3f}"
        hard = f"{r['effective_negatives']:.1f} | {r['false_negative_mass']:.2f}"
        setting = f"{r['batch']} | {r['processes']} | {r['metric']} | {r['tau_init']}"
        print(f"| {setting} | {mean} | {diff} | {verdict} | {hard} |")
    first, last = runs[0]["batch"], runs[-1]["batch"]
    print(f"\n| metric | τ* (best at {first}) | τ | gap at {first} | gap at {last} | change [95 % CI] | verdict |")
    print("|---|---|---|---|---|---|---|")
    for g in gaps:
        covers = g["low"] <= 0 <= g["high"]
        verdict = "not distinguishable" if covers else ("grows" if g["change"] > 0 else "shrinks")
        change = f"{g['change']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"
        print(
            f"| {g['metric']} | {g['best_tau']} | {g['tau_init']} | {g['gap_small']:+.3f} | {g['gap_large']:+.3f} | "
            f"{change} | {verdict} |"
        )
    print("\n| global batch | processes | ms per step | of which collectives (ms) |\n|---|---|---|---|")
    for t in timings:
        print(f"| {t['batch']} | {t['processes']} | {t['step_ms']} | {t['collectives_ms']} |")
    for r in runs if timings else ():
        print(f"sweep at batch {r['batch']} on {r['processes']} process(es): {r['seconds']:.0f} s")
    if args.json:
        clean = [{k: (None if v is None or v != v else v) for k, v in r.items()} for r in comparisons]
        args.json.write_text(
            json.dumps({"runs": runs, "best_tau": clean, "gaps": gaps, "timings": timings}, indent=2, default=str)
        )


if __name__ == "__main__":
    main()
