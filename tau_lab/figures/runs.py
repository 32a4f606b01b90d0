"""Run directories' tables, read once for all figures (``load_runs``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tau_lab import results
from tau_lab.analysis.tables import grid_axes
from tau_lab.errors import UserError
from tau_lab.temperature import MODES


@dataclass
class Runs:
    """One or more run directories' tables, concatenated with a ``run`` column.

    ``series`` names what a line or marker stands for: the τ mode, or ``run: mode`` when several
    runs are compared, so members of different runs never merge into one line.
    """

    dirs: list[Path]
    members: pd.DataFrame
    metrics: pd.DataFrame | None
    embeddings: dict[str, pd.DataFrame] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    axes: dict[str, list[str]] = field(default_factory=dict)  # each run's own grid axes (``grid_axes``)

    @property
    def study(self) -> str:
        """The experiment names (a run dir's parent folder), for titles."""
        names = list(dict.fromkeys(d.resolve().parent.name for d in self.dirs))
        return " vs ".join(names)

    @property
    def tasks(self) -> set[str] | None:
        """The tasks recorded in the runs' ``config.toml``; ``None`` when a run has none (a hand-made table)."""
        if len(self.configs) < len(self.dirs) or any("task" not in c for c in self.configs.values()):
            return None
        return {c["task"] for c in self.configs.values()}

    @property
    def series_order(self) -> list[str]:
        return list(dict.fromkeys(self.members.sort_values(["run", "_mode_rank"])["series"]))


def _run_labels(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.resolve().parent.name}/{d.name}" for d in dirs]


def load_runs(run_dirs: list[Path]) -> Runs:
    """Read the tables of ``run_dirs``; ``UserError`` (one line) for a non-run directory.

    ``members`` gains ``run`` (the run's label), ``series`` (what a line stands for) and ``_mode_rank``;
    ``metrics`` (long: member, step, metric, value) gains the member's run, τ, seed and series.
    """
    if not run_dirs:
        raise UserError("no run directory given: pass at least one results/<experiment>/<run-id>")
    members, metrics, embeddings, configs, axes = [], [], {}, {}, {}
    for run_dir, label in zip(run_dirs, _run_labels(run_dirs), strict=True):
        m = results.read_table(run_dir, "members").assign(run=label)
        members.append(m)
        axes[label] = grid_axes(m)  # before the concatenation, which puts another run's axes at the end
        if (run_dir / "metrics.parquet").is_file() or (run_dir / "metrics").is_dir():
            metrics.append(results.read_metrics(run_dir).assign(run=label))  # a running run's parts too
        if (run_dir / "embeddings.parquet").is_file():
            embeddings[label] = results.read_table(run_dir, "embeddings")
        if (run_dir / "config.toml").is_file():
            configs[label] = tomllib.loads((run_dir / "config.toml").read_text())
    many = len(run_dirs) > 1
    members_df = pd.concat(members, ignore_index=True)
    members_df["_mode_rank"] = members_df["tau_mode"].map({m: i for i, m in enumerate(MODES)}).fillna(len(MODES))
    members_df["series"] = (members_df["run"] + ": " if many else "") + members_df["tau_mode"].astype(str)
    metrics_df = None
    if metrics:
        keys = ["run", "member", "tau_mode", "tau_init", "seed", "series"]
        metrics_df = pd.concat(metrics, ignore_index=True).merge(members_df[keys], on=["run", "member"])
    return Runs(list(run_dirs), members_df, metrics_df, embeddings, configs, axes)
