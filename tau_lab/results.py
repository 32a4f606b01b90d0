"""Run directories and their tables; every write is atomic (temporary file, then rename).

``results/<experiment>/<run-id>/`` holds ``config.toml``, ``env.json``, ``members.parquet`` +
``members.csv``, ``metrics.parquet`` (long: member, step, metric, value), ``embeddings.parquet``
and ``checkpoints/``. The run id sorts by time: ``YYYYmmdd-HHMMSS-xxxx``.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import tau_lab

RESULTS_DIR = Path("results")


def new_run_dir(experiment: str, root: Path = RESULTS_DIR) -> Path:
    run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
    path = root / experiment / run_id
    path.mkdir(parents=True)
    return path


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_table(df: pd.DataFrame, path: Path, csv: bool = False) -> None:
    """``path.parquet`` (and ``path.csv`` when asked) from ``df``."""
    atomic_write(path.with_suffix(".parquet"), lambda tmp: df.to_parquet(tmp, index=False))
    if csv:
        atomic_write(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))


def read_table(run_dir: Path, name: str) -> pd.DataFrame:
    path = run_dir / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a tau-lab run directory: {path.name} is missing")
    return pd.read_parquet(path)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(tau_lab.__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a run: versions, device, git commit, the command line."""
    return {
        "tau_lab": tau_lab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git_commit": _git_commit(),
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """The long metrics table (member, step, metric, value) of a run, finished or still training.

    A finished run has ``metrics.parquet``; a running (or interrupted) one has the parts its populations
    append at every checkpoint and evaluation, ``metrics/chunk-{i}-{until:08d}.parquet``, read here in the
    finished table's row order (a part written after the last checkpoint of a killed run is included).
    """
    from tau_lab.errors import UserError  # here, not at the top: this function is appended to the module

    path = run_dir / "metrics.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    parts = sorted((run_dir / "metrics").glob("chunk-*.parquet"))
    if not parts:
        raise UserError(f"{run_dir}: no metrics yet: neither metrics.parquet nor parts in metrics/ (is it a run?)")
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return frame.sort_values(["member", "step", "metric"], kind="stable", ignore_index=True)
