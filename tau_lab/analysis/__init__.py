"""Pure DataFrame → DataFrame analysis of run tables: no torch, no tasks.

``tables``: ``over_seeds`` (mean ± sd over seeds), paired comparisons between settings, curve shapes;
``distill``: the tables that answer a distillation study; ``findings``: the report's sentences.
"""

from __future__ import annotations

import pandas as pd

from tau_lab.analysis import distill, findings, objectives
from tau_lab.analysis.tables import compare_to_best, over_seeds, paired_difference, paired_interval, pooled

__all__ = [
    "compare_to_best",
    "distill",
    "findings",
    "objectives",
    "over_seeds",
    "paired_difference",
    "paired_interval",
    "pooled",
    "summary_tables",
]

SUMMARY_TABLES = {
    "distill": distill.summary_tables,
    "clip": objectives.summary_tables,
}  # task: its own tables, printed by `tau-lab sweep`


def summary_tables(task: str, members: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The task's own summary tables of a members table, by title (``{}`` for a task without any)."""
    tables = SUMMARY_TABLES.get(task)
    return {} if tables is None else tables(members)
