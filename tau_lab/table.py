"""The softmax table of the quadrants study's blog post: the softmax probabilities and the
cross-entropy of given logits at each τ."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from tau_lab.checks import check_positive
from tau_lab.errors import UserError


def softmax_table(logits: Sequence[float], taus: Sequence[float], target: int | None = None) -> pd.DataFrame:
    """One row per τ: the scaled logits ``z/τ``, ``p = softmax(z/τ)`` and, given a target,
    ``CE = −log p[target] = logsumexp(z/τ) − z_target/τ`` (float64, log-sum-exp).

    Columns: ``tau``, ``z0/tau …``, ``p0 …``, and ``cross_entropy`` when ``target`` is given.
    """
    if len(logits) < 2:
        raise UserError(f"logits = {list(logits)} is not allowed: give at least two values")
    check_positive("tau", taus)
    if target is not None and not 0 <= target < len(logits):
        raise UserError(f"target = {target} is not allowed: it must index the logits, 0..{len(logits) - 1}")
    z = torch.tensor(logits, dtype=torch.float64)
    rows = []
    for tau in taus:
        scaled = z / tau
        logp = torch.log_softmax(scaled, dim=0)
        row = {"tau": tau} | {f"z{i}/tau": v for i, v in enumerate(scaled.tolist())}
        row |= {f"p{i}": v for i, v in enumerate(logp.exp().tolist())}
        if target is not None:
            row["cross_entropy"] = -logp[target].item()
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table, numbers to four significant digits."""
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"
