"""The contrastive studies' populations against a sequential per-member loop, in one process, on the CPU.

For ``digits_simclr`` (39 members) and ``digits_clip`` (72 members), with their real grids and models:

- **population**: ``engine.train_population(experiment, rows, cpu)``, all members in lockstep;
- **sequential**: ``train_reference(experiment, member)`` (an ``nn.Module``, ``torch.optim``, one Python step
  at a time) for members spread over the grid, one after another; members are independent, so its
  member-steps per second hold for the whole grid.

Both are timed as the *marginal* cost of steps: a run of ``long`` steps minus a run of ``short`` steps, so the
set-up and the evaluations at the first and last step, the same in both runs, cancel. Each figure is the best
of ``--repeats`` rounds (other processes can only add time). Then one population step is split into its
phases (the batch, ``task.step``: forward and backward, the optimizer) to show where the time goes.

``--engine`` adds the engine's variants, each a population's marginal member-steps/s against the sequential
loop: ``block_steps = 1`` (one Python step at a time), the default block, and ``compile = true`` (warm: its
compilation is in a run before the timed ones).

``--compute`` asks how far the population step is from the arithmetic's own cost on this CPU: the step's
FLOPs counted from the shapes (``step_flops``: the towers' matrix products forward and backward, the B × B
similarities), checked against the products recorded while one ``task.step`` runs; the same products
replayed alone as ``torch.bmm`` (``[K, m, k] @ [K, k, n]``: the roofline of a population whose step were
its matrix products and nothing else) and as one member's ``torch.mm``; and the population step itself. All in
CPU time of this thread (one torch thread: other jobs on a shared machine barely change it), medians. The
ceiling it prints is the sequential loop's time per member-step over the bmm roofline's: no population on
this CPU, whatever its engine, is faster than the sequential loop by more than that.

``--device cuda`` runs the populations (and the engine's variants) on a GPU, timed in wall time; the sequential
loop stays on the CPU, the baseline every ratio is against.

Usage: ``python benchmarks/bench_contrastive.py [--quick] [--threads N] [--repeats R] [--engine] [--compute]
[--device cuda]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from common import machine, spread
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from tau_lab import config, engine
from tau_lab.data import captions
from tau_lab.optim import build_optimizer
from tau_lab.tasks import TASKS, clip, simclr
from tau_lab.temperature import Temperature

aten = torch.ops.aten

CPU = torch.device("cpu")
STUDIES: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "digits_simclr": simclr.train_reference,
    "digits_clip": clip.train_reference,
}


def load(name: str, steps: int, device: str = "cpu", overrides: tuple[str, ...] = ()) -> config.Experiment:
    experiment, _ = config.load_experiment(name, [f"steps={steps}", f'device="{device}"', *overrides])
    return experiment


def best_seconds(runners: dict[str, Callable[[], Any]], repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    """The shortest of ``repeats`` interleaved rounds of every runner, in seconds of ``clock``."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = clock()
            run()
            times[name].append(clock() - start)
    return {name: min(ts) for name, ts in times.items()}


def marginal_rates(
    runs: dict[str, Callable[[int], Any]], members: dict[str, int], short: int, long: int, repeats: int, clock: Any
) -> dict[str, float]:
    """Member-steps per second of the ``long − short`` steps that each run has over itself, rounds interleaved."""
    runners = {f"{name} {n}": (lambda run=run, n=n: run(n)) for name, run in runs.items() for n in (short, long)}
    best = best_seconds(runners, repeats, clock)
    return {name: members[name] * (long - short) / (best[f"{name} {long}"] - best[f"{name} {short}"]) for name in runs}


class Stepper:
    """A population stepped as the engine's eager step does it: ``task.step``, then the optimizer on the
    parameters and the learnable τ."""

    def __init__(self, name: str, steps: int) -> None:
        experiment = load(name, steps)
        self.experiment, self.rows = experiment, config.members(experiment)
        self.task = TASKS[experiment.task](experiment, self.rows, CPU)
        t = experiment.temperature
        modes = [r["tau_mode"] for r in self.rows]
        self.temperature = Temperature([r["tau_init"] for r in self.rows], modes, t.tau_min, t.tau_max, t.period)
        self.params = {**self.task.params, "logit_scale": self.temperature.logit_scale.data}
        self.optimizer = build_optimizer(experiment.optimizer, self.params, self.rows)
        everyone = torch.ones(len(self.rows), dtype=torch.bool)
        self.masks = dict.fromkeys(self.task.params, everyone) | {"logit_scale": self.temperature.learnable}

    def update(self, tau: Tensor, out: Any, step: int) -> None:
        grads = {**out.grads, "logit_scale": self.temperature.logit_scale_grad(tau, out.grad_tau, step)}
        self.optimizer.step(self.params, grads, self.masks)
        self.temperature.clamp_()


def phases(name: str, steps: int) -> dict[str, float]:
    """Milliseconds per population step in the batch, ``task.step`` and the optimizer, as the engine runs them."""
    population = Stepper(name, steps)
    task = population.task
    spent = {"batch": 0.0, "task.step (forward + backward)": 0.0, "optimizer": 0.0}
    for step in range(steps):
        start = time.perf_counter()
        batch = task.batch(step)
        after_batch = time.perf_counter()
        tau = population.temperature(step).detach()
        out = task.step(task.params, tau, batch)
        after_step = time.perf_counter()
        population.update(tau, out, step)
        end = time.perf_counter()
        if step:  # the first step warms up
            spent["batch"] += after_batch - start
            spent["task.step (forward + backward)"] += after_step - after_batch
            spent["optimizer"] += end - after_step
    return {phase: 1000 * seconds / (steps - 1) for phase, seconds in spent.items()}


def _tower(rows: int, layers: list[tuple[int, int]]) -> int:
    """FLOPs of a stack of linear layers ``[rows, in] → [rows, out]`` trained by backprop: each layer's forward
    ``x Wᵀ`` (``2 · rows · in · out``), its weight's gradient (the same again) and its input's gradient (the same,
    but for the first layer, whose input is data)."""
    products = [2 * rows * n_in * n_out for n_in, n_out in layers]
    return 3 * sum(products) - products[0]


def step_flops(experiment: config.Experiment) -> int:
    """FLOPs (a multiply-add counts 2) of one member's training step, from the shapes; bias additions,
    activations, normalisations and the softmax are left out (elementwise, a few per element).

    - ``digits_simclr``: ``2B`` views through ``64 → hidden → features → features → projection``; the
      similarities ``ẑ ẑᵀ`` ``[2B, 2B]`` forward and both operands' gradients: ``3 · 2 (2B)² D``.
    - ``digits_clip``: ``B`` images through ``64 → hidden → width → embed_dim``, ``B`` bags of ``V`` words through
      ``V → width → embed_dim``; ``û v̂ᵀ`` ``[B, B]`` forward and both gradients, and the hardness metrics'
      own ``û v̂ᵀ`` (out of the graph): ``4 · 2 B² D``.
    """
    m, b = experiment.model, experiment.data.batch_size
    if experiment.task == "simclr":
        n = 2 * b
        encoder = [(simclr.PIXELS, m.hidden), (m.hidden, m.features)]
        head = [(m.features, m.features), (m.features, m.projection)]
        return _tower(n, encoder + head) + 3 * 2 * n * n * m.projection
    vocab = len(captions.Vocabulary())
    image = _tower(b, [(clip.PIXELS, m.hidden), (m.hidden, m.width), (m.width, m.embed_dim)])
    text = _tower(b, [(vocab, m.width), (m.width, m.embed_dim)])
    return image + text + 4 * 2 * b * b * m.embed_dim


class MatmulShapes(TorchDispatchMode):
    """Records ``(batch, m, k, n)`` of every matrix product run under it, forward and backward."""

    PRODUCTS = (aten.mm, aten.addmm, aten.bmm, aten.baddbmm)

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int, int, int]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func.overloadpacket in self.PRODUCTS:
            a, b = args[-2], args[-1]  # addmm and baddbmm: (bias, a, b)
            self.shapes.append((a.shape[0] if a.ndim == 3 else 1, a.shape[-2], a.shape[-1], b.shape[-1]))
        return func(*args, **(kwargs or {}))


def cpu_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median CPU milliseconds of this thread over ``repeats`` calls of ``fn`` (after one call to warm up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return 1000 * statistics.median(times)


def products_ms(shapes: list[tuple[int, int, int, int]], members: int, repeats: int) -> tuple[float, float]:
    """The recorded products replayed alone, ms: as ``torch.bmm`` of the population's shapes, and as ``torch.mm``
    of one member's (``[m, k] @ [k, n]``, each product of the population divided over its ``members``)."""
    bmm = mm = 0.0
    for (batch, m, k, n), count in Counter(shapes).items():
        a, b = torch.randn(batch, m, k), torch.randn(batch, k, n)
        bmm += count * cpu_ms(lambda a=a, b=b: torch.bmm(a, b), repeats)
        a1, b1 = a[0].contiguous(), b[0].contiguous()
        per_member = batch // members if batch >= members else 1
        mm += count * per_member * cpu_ms(lambda a1=a1, b1=b1: torch.mm(a1, b1), repeats)
    return bmm, mm


def compute_bound(name: str, steps: int, repeats: int) -> dict[str, Any]:
    """The population step against its own arithmetic: FLOPs, the step's and the products' CPU ms."""
    population = Stepper(name, steps)
    task, k = population.task, len(population.rows)
    batches = [task.batch(s) for s in range(steps)]
    tau = population.temperature(0).detach()
    recorder = MatmulShapes()
    with recorder:
        task.step(task.params, tau, batches[0])
    calls = iter(range(10**9))

    def step() -> None:  # the batches are drawn beforehand: the step alone, forward, backward and optimizer
        i = next(calls)
        population.update(tau, task.step(task.params, tau, batches[i % steps]), i)

    bmm_ms, mm_ms = products_ms(recorder.shapes, k, repeats)
    return {
        "members": k,
        "flops": k * step_flops(population.experiment),
        "recorded_flops": sum(2 * b * m * kk * n for b, m, kk, n in recorder.shapes),
        "step_ms": cpu_ms(step, repeats),
        "bmm_ms": bmm_ms,
        "mm_ms": mm_ms,
    }


ENGINE_VARIANTS = {"block_steps=1": ["block_steps=1"], "default": [], "compile=true": ["compile=true"]}


def engine_runs(name: str, rows: list[dict[str, Any]], device: str) -> dict[str, Callable[[int], Any]]:
    """A whole ``train_population`` of ``steps`` steps per engine variant, each run once to warm up (the
    compiled block compiles there)."""
    runs = {}
    for label, overrides in ENGINE_VARIANTS.items():

        def run(steps: int, overrides: list[str] = overrides) -> None:
            engine.train_population(load(name, steps, device, tuple(overrides)), rows, torch.device(device))

        run(2)
        runs[f"engine {label}"] = run
    return runs


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def bench(name: str, short: int, long: int, sequential_members: int, repeats: int, args: Any) -> dict[str, Any]:
    rows = config.members(load(name, short))
    subset = spread(rows, sequential_members)
    reference = STUDIES[name]

    def population(steps: int) -> None:  # its output is copied to the CPU: on a GPU, the call waits for it
        engine.train_population(load(name, steps, args.device), rows, torch.device(args.device))

    def sequential(steps: int) -> None:
        for row in subset:
            reference(load(name, steps), row)

    population(2)  # warm-up
    runs = engine_runs(name, rows, args.device) if args.engine else {"population": population}
    members = dict.fromkeys(runs, len(rows)) | {"sequential": len(subset)}
    rates = marginal_rates(runs | {"sequential": sequential}, members, short, long, repeats, CLOCKS[args.clock])
    return {
        "study": name,
        "members": len(rows),
        "population": rates.get("population", rates.get("engine default")),
        "sequential": rates["sequential"],
        "rates": rates,
        "sequential_members": len(subset),
        "phases": phases(name, min(long, 20)) if args.device == "cpu" else None,
        "compute": compute_bound(name, 8, 20 if args.quick else 60) if args.compute else None,
    }


def print_compute(results: list[dict[str, Any]]) -> None:
    """The compute-bound table: GFLOP/s of the step and of its products alone, and the speed-up ceiling."""
    print("\ncompute bound: CPU ms of this thread, medians; GFLOP/s = the step's FLOPs (from the shapes) / time")
    header = (
        f"{'study':<15}{'K':>4}{'GFLOP/step':>11}{'recorded':>10}{'step ms':>9}{'GFLOP/s':>9}{'bmm ms':>8}"
        f"{'GFLOP/s':>9}{'step/bmm':>9}{'mm ms/mbr':>10}{'GFLOP/s':>9}{'seq ms/mbr':>11}{'ceiling':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        c = r["compute"]
        k, gflop = c["members"], c["flops"] / 1e9
        sequential_ms = 1000 / r["sequential"]  # per member-step, the loop's marginal rate
        ceiling = sequential_ms / (c["bmm_ms"] / k)
        print(
            f"{r['study']:<15}{k:>4}{gflop:>11.3f}{c['recorded_flops'] / 1e9:>10.3f}{c['step_ms']:>9.1f}"
            f"{gflop / c['step_ms'] * 1e3:>9.1f}{c['bmm_ms']:>8.1f}{gflop / c['bmm_ms'] * 1e3:>9.1f}"
            f"{c['step_ms'] / c['bmm_ms']:>8.2f}×{c['mm_ms']:>10.3f}{gflop / k / c['mm_ms'] * 1e3:>9.1f}"
            f"{sequential_ms:>11.2f}{ceiling:>8.2f}×"
        )
    print(
        "(bmm: the step's recorded matrix products replayed alone as torch.bmm of the population's shapes; mm: "
        "one member's\n products as torch.mm; seq ms/mbr: the sequential loop per member-step; ceiling: seq ms/mbr "
        "over bmm ms / K,\n the speed-up over the loop of a population whose step cost its batched products only)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and members: a smoke test")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per measurement; the best is kept")
    parser.add_argument("--engine", action="store_true", help="the engine's variants: block_steps=1, default, compile")
    parser.add_argument("--compute", action="store_true", help="FLOPs and GFLOP/s against a bmm of the same shapes")
    parser.add_argument(
        "--clock", choices=tuple(CLOCKS), default="cpu", help="cpu: this process's CPU time (default); wall"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="the populations' device (cuda: wall time)"
    )
    args = parser.parse_args()
    if args.device == "cuda":
        args.clock = "wall"  # a GPU's work is not this process's CPU time
        if args.compute:
            parser.error("--compute measures the CPU: run it without --device cuda")
    torch.set_num_threads(args.threads)
    print(machine())
    short, long, sequential_members = (2, 6, 2) if args.quick else (10, 110, 6)
    repeats = 1 if args.quick else args.repeats
    results = [bench(name, short, long, sequential_members, repeats, args) for name in STUDIES]

    print(
        f"\nmember-steps per second, steps {short}..{long} (marginal), {args.threads} thread(s), best of {repeats} "
        f"({args.clock} time), populations on {args.device}"
    )
    for r in results:
        for run, rate in r["rates"].items():
            print(f"{r['study']:<15}{r['members']:>4} {run:<22}{rate:>9.0f}{rate / r['sequential']:>8.2f}×")
    spread_over = results[0]["sequential_members"]
    print(f"(× the sequential loop: {spread_over} members spread over each grid, one after another)")
    print("\nwhere a population step goes, ms (wall)")
    for r in results if args.device == "cpu" else ():
        parts = ", ".join(f"{phase} {ms:.1f}" for phase, ms in r["phases"].items())
        print(f"{r['study']:<15}{parts}")
    if args.compute:
        print_compute(results)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
