"""What the benchmarks share: the sequential loop's subset of members, the machine, interleaved timing.

Imported as ``common`` (the benchmarks run as scripts, ``python benchmarks/bench.py``, which puts this
directory first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch


def spread(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` members spread evenly over the grid (modes, τ and seeds), for the sequential loop's subset."""
    return rows[:: max(1, len(rows) // n)][:n]


def machine() -> dict[str, Any]:
    """The CPU, its usable cores, the versions and the load when the measurement starts."""
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


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each runner, ``repeats`` rounds of all of them in turn: a spell of load from other
    processes then falls on every variant alike, not on one."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(timed(run))
    return times


def best_of(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The shortest of ``repeats`` interleaved rounds of every runner, in seconds: other processes can
    only add time, so the minimum is the least noisy estimate."""
    return {name: min(times) for name, times in interleaved(runners, repeats).items()}
