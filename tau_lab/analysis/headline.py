"""The tasks' headline metrics: the one list that the terminal summary (``cli.summary_columns``), the
report's findings (``findings``) and the figures (``figures.vs_tau``) read.

A headline metric is a column of the members table that answers a task's question (how good is the
representation, the retrieval, the student), as against the geometry every contrastive task also measures.
"""

from __future__ import annotations

from typing import NamedTuple


class Headline(NamedTuple):
    """One headline metric."""

    column: str  # of the members table
    name: str  # what it is, in words (findings, panel titles)
    how: str  # how to read it (a panel's subtitle)
    tasks: tuple[str, ...]  # the tasks that measure it
    lower: bool = False  # lower is better


HEADLINES = [
    Headline("probe_accuracy", "linear-probe accuracy", "test split, encoder output h, higher = better", ("simclr",)),
    Headline("knn_accuracy", "k-NN accuracy", "test split, encoder output h, higher = better", ("simclr",)),
    Headline("zero_shot_ensemble", "zero-shot accuracy (prompt ensemble)", "test split, higher = better", ("clip",)),
    Headline("zero_shot_single", "zero-shot accuracy (one prompt)", "test split, higher = better", ("clip",)),
    Headline("recall_i2t", "recall@1 image → text", "test split, higher = better", ("clip",)),
    Headline("recall_t2i", "recall@1 text → image", "test split, higher = better", ("clip",)),
    Headline("recall_a2b", "recall@1 a → b", "test pairs, higher = better", ("pairs", "module")),
    Headline("recall_b2a", "recall@1 b → a", "test pairs, higher = better", ("pairs", "module")),
    Headline("accuracy", "student test accuracy", "at T = 1, higher = better", ("distill",)),
    Headline("agreement", "agreement with the teacher", "test split, arg-max, higher = better", ("distill",)),
    Headline("ece", "expected calibration error", "test split, at T = 1, lower = better", ("distill",), lower=True),
]


def headlines(task: str | None = None) -> list[Headline]:
    """The headline metrics of ``task`` (every task's with ``None``), in the order of ``HEADLINES``."""
    return [h for h in HEADLINES if task is None or task in h.tasks]
