"""Where one ``train_population`` call of the quadrants benchmark spends its time, at any K and variant.

``bench.py``'s phase timers (set-up, the step, evaluation, …) around one warmed-up call, then ``torch.profiler``'s
aten ops by self CPU time over another. Under ``compile = true`` timers inside a compiled call would become its guards
(a recompile a call), so only the parts around it are timed: the compiled calls (a logging step and the block after
it, or a block), their stacked inputs, the logging and the evaluations (median of 7 calls). On a GPU
(``--device cuda``) the timers synchronise, and the profiler also lists the GPU's kernels by their time on the
device, with the kernels the call launched per step (a compiled block's CUDA graph replays its kernels one after
another). Usage (from a checkout, 1 thread):

    PYTHONPATH=. python benchmarks/profile_population.py --k 1000 --steps 200 [--variant '["compile=true"]']
        [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import bench
import torch

from tau_lab import config, engine


@contextlib.contextmanager
def around_the_blocks(device: torch.device) -> Iterator[dict[str, float]]:
    """Timers on what runs outside a compiled call: the calls themselves, ``Training.inputs``, ``_log`` and
    ``_evaluate``; seconds summed into the dict yielded (on a GPU, each part waits for its kernels)."""
    totals = dict.fromkeys(["compiled calls", "Training.inputs", "_log", "_evaluate"], 0.0)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                totals[part] += time.perf_counter() - start

        return run

    make_calls = engine._calls

    def timed_calls(*args: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
        interval, block = make_calls(*args)
        return timed("compiled calls", interval), timed("compiled calls", block)

    with (
        mock.patch.object(engine, "_calls", timed_calls),
        mock.patch.object(engine.Training, "inputs", timed("Training.inputs", engine.Training.inputs)),
        mock.patch.object(engine, "_log", timed("_log", engine._log)),
        mock.patch.object(engine, "_evaluate", timed("_evaluate", engine._evaluate)),
    ):
        yield totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=1000, help="members, a multiple of 5 (default 1000)")
    parser.add_argument("--steps", type=int, default=200, help="steps of the call (default 200, as bench.py)")
    parser.add_argument("--variant", type=json.loads, default=[], help="engine config overrides as a JSON list")
    parser.add_argument("--top", type=int, default=15, help="aten ops listed (default 15)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the population's device")
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiment = bench.load(args.steps, args.k // 5, extra=tuple(args.variant), device=args.device)
    rows = config.members(experiment)
    device = torch.device(args.device)
    engine.train_population(experiment, rows, device)  # warm-up (and compilation)
    if experiment.compile:
        calls = []
        with around_the_blocks(device) as totals:
            for _ in range(7):
                start = time.perf_counter()
                engine.train_population(experiment, rows, device)
                calls.append((time.perf_counter() - start, dict(totals)))
                totals.update(dict.fromkeys(totals, 0.0))
        seconds, parts = sorted(calls, key=lambda call: call[0])[3]
        print(f"K = {args.k}, {args.steps} steps, {args.variant}: {seconds:.4f} s (the median of 7 calls)")
        other = ("the rest: set-up, state updates, output", seconds - sum(parts.values()))
        for part, t in [*parts.items(), other]:
            print(f"  {part:66s} {t * 1e3:8.1f} ms  {t / seconds:6.1%}")
    else:
        with bench.phase_timers() as totals:
            start = time.perf_counter()
            engine.train_population(experiment, rows, device)
            seconds = time.perf_counter() - start
        print(f"K = {args.k}, {args.steps} steps, {args.variant}: {seconds:.3f} s")
        for phase, t in [*totals.items(), (bench.LOOP, seconds - sum(totals.values()))]:
            print(f"  {phase:20s} {t:8.3f} s  {t / seconds:6.1%}")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        engine.train_population(experiment, rows, device)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    if device.type == "cuda":
        print_kernels(prof, args.steps, args.top)


def print_kernels(prof: torch.profiler.profile, steps: int, top: int) -> None:
    """The GPU's kernels of one call: how many, their device time, per step, and the longest by total time."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time_total for e in kernels)
    print(
        f"GPU kernels of the call: {len(kernels)} ({len(kernels) / steps:.1f} a step), {total_us / 1e3:.2f} ms on "
        f"the device ({total_us / steps:.1f} us a step, {total_us / max(1, len(kernels)):.2f} us a kernel)"
    )
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time_total)
    print(f"{'calls':>7} {'a step':>7} {'us total':>10} {'us each':>8}  kernel")
    for name, times in sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]:
        per_step, total = len(times) / steps, sum(times)
        print(f"{len(times):>7} {per_step:>7.2f} {total:>10.1f} {total / len(times):>8.2f}  {name[:90]}")


if __name__ == "__main__":
    main()
