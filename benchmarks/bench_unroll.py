"""Unrolling the compiled block's ``scan`` on the CPU: u steps per iteration of its loop, measured (issue 11, K = 5).

torch's ``scan`` runs its loop on the host, with a few ops of its own per iteration (two ``aten::item``). Running u
steps per iteration divides that by u, at the cost of a u times larger body to compile. This times a whole
``train_population`` of the quadrants benchmark (5 members, 2000 steps, ``compile = true``) with ``Training.scan``
replaced by an unrolled one, each u in its own process, the block compiled per length (``dynamic=False``: with
dynamic lengths inductor fails on the symbolic size of the ``[n/u, u, ...]`` reshape). The engine keeps u = 1
(docs/benchmarks.md). Usage (from a checkout, 1 thread):

    PYTHONPATH=. python benchmarks/bench_unroll.py [--unroll 1,4,8] [--calls 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from typing import Any

import bench
import torch
import torch.utils._pytree as pytree
from torch._higher_order_ops.scan import scan

from tau_lab import config, engine


def unrolled_scan(u: int) -> Any:
    """``Training.scan`` with u steps per iteration; the last ``n mod u`` steps in a second ``scan``."""

    def run(self: engine.Training, c: engine.Carry, xs: engine.StepInputs) -> engine.Carry:
        leaves, spec = pytree.tree_flatten(c)
        leaves = [t.clone() for t in leaves]  # as Training.scan: the initial carry may alias no input of scan
        step, given = self.flat_step(spec), engine._given(xs)
        n = len(xs.step)
        m = n // u * u

        def body(leaves: list[torch.Tensor], g: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
            for j in range(u):
                leaves = step(leaves, pytree.tree_map(lambda t, j=j: t[j], g))
            return [t.clone() for t in leaves], g["step"][0].clone()

        def body_1(leaves: list[torch.Tensor], g: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
            return [t.clone() for t in step(leaves, g)], g["step"].clone()

        if m:
            stacked = pytree.tree_map(lambda t: t[:m].reshape(m // u, u, *t.shape[1:]), given)
            leaves, _ = scan(body, leaves, stacked)
        if n > m:
            leaves, _ = scan(body_1, leaves, pytree.tree_map(lambda t: t[m:], given))
        return pytree.tree_unflatten(leaves, spec)

    return run


def child(u: int, calls: int) -> None:
    """One u: the first call (compilation included), then ``calls`` timed calls; prints one line."""
    torch.set_num_threads(1)
    torch._dynamo.config.cache_size_limit = 64  # one graph per block length
    engine.Training.scan = unrolled_scan(u)

    def static_lengths(training: engine.Training) -> Any:
        return lambda c, xs: engine._compile(engine._scan, dynamic=False, whole=True)(training, c, xs)

    engine._compiled_scan = static_lengths
    experiment = bench.load(2000, 1, extra=("compile=true",))
    rows = config.members(experiment)
    start = time.perf_counter()
    engine.train_population(experiment, rows, torch.device("cpu"))
    first = time.perf_counter() - start
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.train_population(experiment, rows, torch.device("cpu"))
        times.append(time.perf_counter() - start)
    ms = [t * 1e3 for t in times]
    print(f"{u:>3} {statistics.median(ms):12.1f} {min(ms):8.1f} {max(ms):8.1f} {first:10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unroll", default="1,4,8", help="the u to measure (default 1,4,8)")
    parser.add_argument("--calls", type=int, default=7, help="timed calls per u; the median is reported")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.calls)
    print("quadrants, 5 members, 2000 steps, compile = true, 1 thread; one process per u")
    print(f"{'u':>3} {'median ms':>12} {'min':>8} {'max':>8} {'first s':>10}", flush=True)
    for u in (int(u) for u in args.unroll.split(",")):
        subprocess.run([sys.executable, __file__, "--child", str(u), "--calls", str(args.calls)], check=True)


if __name__ == "__main__":
    main()
