"""The contrastive populations' step at several commits, in one run: which change cost what, in ms per step.

Each revision is exported (``git archive``) to a temporary folder and timed in child processes whose
``PYTHONPATH`` is that folder, so every revision runs its own ``tau_lab`` with this interpreter; ``.`` is the
working tree as it is. For ``digits_clip`` and ``digits_simclr`` (their real grids) two measures:

- **phases**: a population stepped as ``bench_contrastive.py``'s phases do (``task.batch``, ``task.step``,
  the optimizer's ``step``), the median over ``--steps`` steps of each phase (the first two warm up);
- **engine**: ``engine.train_population``'s marginal cost per step, steps ``4 … 34`` (a run of 34 steps minus
  a run of 4, the shorter of two runs each), so the engine's own path (the blocks of ``block_steps``, where
  the revision has them) is in it. Its evaluations at the first and last step cancel in the difference; their
  pair metrics (``metrics.uniformity``, ``tolerance``) take seconds per call, so the child replaces them by
  zeros to keep a run short.

Every time is CPU time of the child (``time.thread_time`` / ``process_time``, one torch thread): on a shared
machine, other jobs change it far less than wall time. Rounds interleave the revisions (odd rounds in reverse
order), and the figures are medians over rounds. ``REV:key=value`` times a revision with ``--set`` overrides
(``.:block_steps=1``).

Usage: ``python benchmarks/bench_commits.py REV [REV ...] [--rounds 3] [--steps 30] [--no-engine]``, e.g.
``python benchmarks/bench_commits.py af229de 332bc8c .``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STUDIES = ("digits_clip", "digits_simclr")
ROOT = Path(__file__).resolve().parent.parent


def child_phases(study: str, steps: int, overrides: list[str]) -> dict[str, float]:
    """Median CPU ms of ``task.batch``, ``task.step`` and the optimizer per population step."""
    import torch

    from tau_lab import config
    from tau_lab.optim import build_optimizer
    from tau_lab.tasks import TASKS
    from tau_lab.temperature import Temperature

    cpu = torch.device("cpu")
    experiment, _ = config.load_experiment(study, [f"steps={steps}", 'device="cpu"', *overrides])
    rows = config.members(experiment)
    task = TASKS[experiment.task](experiment, rows, cpu)
    t = experiment.temperature
    modes = [r["tau_mode"] for r in rows]
    temperature = Temperature([r["tau_init"] for r in rows], modes, t.tau_min, t.tau_max, t.period)
    params = {**task.params, "logit_scale": temperature.logit_scale.data}
    optimizer = build_optimizer(experiment.optimizer, params, rows)
    everyone = torch.ones(len(rows), dtype=torch.bool)
    masks = dict.fromkeys(task.params, everyone) | {"logit_scale": temperature.learnable}
    spent: dict[str, list[float]] = {"batch": [], "task.step": [], "optimizer": []}
    for step in range(steps):
        start = time.thread_time()
        batch = task.batch(step)
        after_batch = time.thread_time()
        tau = temperature(step).detach()
        out = task.step(task.params, tau, batch)
        after_step = time.thread_time()
        grads = {**out.grads, "logit_scale": temperature.logit_scale_grad(tau, out.grad_tau, step)}
        optimizer.step(params, grads, masks)
        temperature.clamp_()
        end = time.thread_time()
        if step >= 2:
            spent["batch"].append(after_batch - start)
            spent["task.step"].append(after_step - after_batch)
            spent["optimizer"].append(end - after_step)
    return {phase: 1000 * statistics.median(times) for phase, times in spent.items()}


def child_engine(study: str, overrides: list[str], short: int = 4, long: int = 34) -> dict[str, float]:
    """CPU ms per step of ``train_population``, marginal over steps ``short … long``."""
    import torch

    from tau_lab import config, engine, metrics

    # the evaluations at the first and last step cancel in the difference; their pair metrics take seconds
    metrics.uniformity = lambda x, t=2.0: x.new_zeros(x.shape[:-2])
    metrics.tolerance = lambda x, labels: x.new_zeros(x.shape[:-2])
    cpu = torch.device("cpu")

    def experiment(steps: int) -> Any:
        return config.load_experiment(study, [f"steps={steps}", 'device="cpu"', *overrides])[0]

    rows = config.members(experiment(short))
    engine.train_population(experiment(2), rows, cpu)  # warm-up
    best = {}
    for steps in (short, long, short, long):
        start = time.process_time()
        engine.train_population(experiment(steps), rows, cpu)
        best[steps] = min(best.get(steps, float("inf")), time.process_time() - start)
    return {"engine": 1000 * (best[long] - best[short]) / (long - short)}


def export(rev: str, into: Path) -> Path:
    """The revision's files in a folder of ``into`` (``.``: this working tree itself)."""
    if rev == ".":
        return ROOT
    folder = into / rev.replace("/", "_")
    if not folder.exists():
        folder.mkdir()
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_child(tree: Path, mode: str, study: str, steps: int, overrides: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    command = [sys.executable, __file__, "--child", mode, study, str(steps), *overrides]
    out = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{tree} {mode} {study}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        import torch

        torch.set_num_threads(1)
        mode, study, steps, overrides = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
        print(json.dumps(child_phases(study, steps, overrides) if mode == "phases" else child_engine(study, overrides)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs="+", help="git revisions, '.' for the working tree; REV:key=value adds --set")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them")
    parser.add_argument("--steps", type=int, default=30, help="population steps of the phases measure")
    parser.add_argument("--no-engine", action="store_true", help="the phases measure only")
    args = parser.parse_args()
    modes = ("phases",) if args.no_engine else ("phases", "engine")
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    print(f"load average at the start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {spec: export(spec.split(":")[0], Path(tmp)) for spec in args.revs}
        for r in range(args.rounds):
            for spec in args.revs if r % 2 == 0 else args.revs[::-1]:
                overrides = spec.split(":")[1:]
                for study in STUDIES:
                    figures: dict[str, float] = {}
                    for mode in modes:
                        figures |= run_child(trees[spec], mode, study, args.steps, overrides)
                    results.setdefault((study, spec), []).append(figures)
                    shown = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
                    print(f"round {r} {spec} {study}: {shown} (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\nCPU ms per population step, medians over {args.rounds} rounds (load at the end {os.getloadavg()})")
    for study in STUDIES:
        for spec in args.revs:
            runs = results[(study, spec)]
            columns = ", ".join(f"{k} {statistics.median(run[k] for run in runs):.1f}" for k in runs[0])
            print(f"{study:<15}{spec:<24}{columns}")


if __name__ == "__main__":
    main()
