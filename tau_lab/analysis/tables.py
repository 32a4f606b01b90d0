"""Members tables reduced over seeds, and paired comparisons between settings.

A members table has one row per member: ``member``, ``tau_mode``, ``tau_init``, the task's own grid
axes, ``seed``, ``status``, ``diverged_step``, then the final value of every metric (the layout
``config.members`` and ``engine.tables`` write). Members that share a seed share their initial
weights and data order, so two settings are compared seed by seed: a paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

BOOKKEEPING = ("member", "seed", "status", "diverged_step", "run", "series", "_mode_rank")
AXIS_NAMES = {  # grid axis: how a title counts its values ("2 α", "3 labelled fractions")
    "tau_mode": "τ modes",
    "tau_init": "initial τ",
    "alpha": "α",
    "t2_scaling": "T² settings",
    "labeled_fraction": "labelled fractions",
    "caption_noise": "caption-noise levels",
    "tau_lr": "τ learning rates",
    "tau_weight_decay": "τ weight decays",
    "lr": "learning rates",
    "batch_size": "batch sizes",
    "objective": "losses",
}


def finished(members: pd.DataFrame) -> pd.DataFrame:
    """The members that trained to the end (``status == "ok"``): diverged and pruned ones stopped early."""
    return members[members["status"] == "ok"]


def over_seeds(members: pd.DataFrame, by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean and sd over seeds of ``columns`` per ``by`` (finished members only).

    One row per group: the ``by`` columns, ``{c}_mean`` and ``{c}_sd`` (sample sd, ddof = 1; NaN for
    one seed) for each column, and ``seeds``, the number of finished members in the group.
    """
    groups = finished(members).groupby(list(by), sort=True)
    out = groups[list(columns)].agg(["mean", "std"])
    out.columns = [f"{c}_{'sd' if s == 'std' else s}" for c, s in out.columns]
    return out.assign(seeds=groups.size()).reset_index()


def grid_axes(members: pd.DataFrame) -> list[str]:
    """The task's own grid axes: the columns between ``tau_init`` and ``seed``, as the engine lays them out."""
    columns = list(members.columns)
    if "tau_init" not in columns or "seed" not in columns:
        return []
    start, end = columns.index("tau_init") + 1, columns.index("seed")
    return [c for c in columns[start:end] if c not in BOOKKEEPING]


def pooled(members: pd.DataFrame, by: Sequence[str]) -> dict[str, int]:
    """What one group of ``by`` pools: ``{"seed": 3, "alpha": 3, ...}``, the number of distinct values of
    ``seed`` and of each grid axis not in ``by`` that vary in the table (axes with one value pool nothing)."""
    axes = ["seed", *(a for a in ["tau_mode", "tau_init", *grid_axes(members)] if a not in by)]
    return {a: int(members[a].nunique()) for a in axes if a in members.columns and members[a].nunique() > 1}


def paired_interval(a: pd.Series, b: pd.Series, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of the paired differences ``a − b`` over the seeds both have, and its t-interval.

    ``a`` and ``b`` are indexed by seed. With ``d_s = a_s − b_s`` over the n shared seeds:
    ``mean ± t_{(1+level)/2, n−1} · sd(d) / √n`` (sd with ddof = 1). Returns ``(mean, low, high, n)``;
    low and high are NaN when n < 2 (no interval is possible from one pair).
    """
    from scipy import stats  # scipy is slow to import: only when an interval is computed

    d = (a - b.reindex(a.index)).dropna()
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def compare_to_best(
    members: pd.DataFrame, metric: str, by: Sequence[str], lower_is_better: bool, level: float = 0.95
) -> pd.DataFrame:
    """Every setting (a group of ``by``) against the best one (best mean of ``metric``), paired by seed.

    One row per setting, best first then by mean: ``by``, ``mean``, ``sd``, ``seeds``, ``best`` (bool),
    and for the others ``delta``, ``low``, ``high``, ``pairs``: the mean paired difference best − other
    over the seeds both finished and its ``level`` t-interval (``paired_interval``), and
    ``distinguishable``: the interval excludes 0 (NA when fewer than two pairs give no interval).
    Finished members with a finite value only.
    """
    by = list(by)
    ok = finished(members)
    ok = ok[np.isfinite(ok[metric].astype(float))]
    table = over_seeds(ok, by, [metric]).rename(columns={f"{metric}_mean": "mean", f"{metric}_sd": "sd"})
    if table.empty:
        return table.assign(best=pd.Series(dtype=bool))
    table = table.sort_values("mean", ascending=lower_is_better, kind="stable").reset_index(drop=True)
    table["best"] = table.index == 0
    per_seed = ok.groupby([*by, "seed"])[metric].mean()  # one value per setting and seed
    key = tuple(table.loc[0, by])
    best = per_seed.xs(key, level=by) if len(by) > 1 else per_seed.xs(key[0], level=by[0])
    rows = []
    for i in range(len(table)):
        if i == 0:
            rows.append((math.nan, math.nan, math.nan, 0))
            continue
        other_key = tuple(table.loc[i, by])
        other = per_seed.xs(other_key, level=by) if len(by) > 1 else per_seed.xs(other_key[0], level=by[0])
        rows.append(paired_interval(best, other, level))
    table[["delta", "low", "high", "pairs"]] = pd.DataFrame(rows, index=table.index)
    table["pairs"] = table["pairs"].astype(int)
    covers = (table["low"] <= 0) & (table["high"] >= 0)
    table["distinguishable"] = pd.array(
        [pd.NA if (b or np.isnan(lo)) else not c for b, lo, c in zip(table["best"], table["low"], covers, strict=True)],
        dtype="boolean",
    )
    return table


def held_out_advantage(
    members: pd.DataFrame, metric: str, by: Sequence[str], lower_is_better: bool, level: float = 0.95
) -> tuple[float, float, float, int]:
    """How far the best setting leads on a seed it was not chosen on: leave one seed out.

    ``compare_to_best`` picks the best on the same seeds that then measure its lead, so its Δ leans in the
    best's favour (the winner's curse). Here, for each seed ``s`` in turn, the best and the runner-up are
    the settings with the best and second-best mean over the other seeds, and
    ``d_s = m_s(best₋ₛ) − m_s(runner-up₋ₛ)`` (sign flipped when lower is better, so ``d_s > 0`` means the
    choice held on ``s``). Returns ``paired_interval``'s ``(mean, low, high, n)`` of the ``d_s``, over the
    seeds every setting finished; NaNs and ``n = 0`` with fewer than 3 such seeds or 2 settings.
    """
    ok = finished(members)
    ok = ok[np.isfinite(ok[metric].astype(float))]
    grid = ok.groupby([*by, "seed"])[metric].mean().unstack("seed").dropna(axis=1)  # [settings, seeds]
    if grid.shape[0] < 2 or grid.shape[1] < 3:
        return math.nan, math.nan, math.nan, 0
    sign = -1.0 if lower_is_better else 1.0
    chosen, runner_up = {}, {}
    for seed in grid.columns:
        rest = (sign * grid.drop(columns=seed)).mean(axis=1).sort_values(ascending=False, kind="stable")
        chosen[seed], runner_up[seed] = (sign * grid.loc[rest.index[i], seed] for i in (0, 1))
    return paired_interval(pd.Series(chosen), pd.Series(runner_up), level)


def paired_difference(
    members: pd.DataFrame, axis: str, a: object, b: object, by: Sequence[str], metric: str, level: float = 0.95
) -> pd.DataFrame:
    """``metric`` at ``axis = a`` minus ``metric`` at ``axis = b``, per group of ``by``, paired by seed.

    One row per group of ``by`` that has both: ``by``, ``a`` and ``b`` (the means over seeds), ``delta``,
    ``low``, ``high``, ``pairs`` (``paired_interval`` of the per-seed values, a − b) and ``distinguishable``
    (the interval excludes 0; NA when fewer than two pairs give no interval). Finished members with a finite
    value only; a group's members of one seed are averaged (axes not in ``by`` are pooled).
    """
    by = list(by)
    ok = finished(members)
    ok = ok[np.isfinite(ok[metric].astype(float))]
    per_seed = ok.groupby([axis, *by, "seed"])[metric].mean()
    rows = []
    groups = per_seed.index.droplevel([axis, "seed"]).unique() if by else [()]
    for key in groups:
        key = key if isinstance(key, tuple) else (key,)
        try:
            side_a, side_b = (per_seed.xs((side, *key), level=[axis, *by]) for side in (a, b))
        except KeyError:  # the group lacks one side
            continue
        delta, low, high, pairs = paired_interval(side_a, side_b, level)
        covers = low <= 0 <= high
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                str(a): side_a.mean(),
                str(b): side_b.mean(),
                "delta": delta,
                "low": low,
                "high": high,
                "pairs": pairs,
                "distinguishable": pd.NA if np.isnan(low) else not covers,
            }
        )
    table = pd.DataFrame(rows, columns=[*by, str(a), str(b), "delta", "low", "high", "pairs", "distinguishable"])
    table["distinguishable"] = table["distinguishable"].astype("boolean")
    return table.sort_values(by, kind="stable", ignore_index=True) if by else table


def shape(means: pd.Series) -> dict[str, object]:
    """The shape of a curve ``means`` indexed by τ (sorted ascending): its ends, its minimum and maximum
    and whether each is interior (strictly inside the τ range), and whether it is monotone.

    Returns ``{"low_tau", "low", "high_tau", "high", "min_tau", "min", "max_tau", "max",
    "interior_min", "interior_max", "monotone"}``: low/high are the values at the smallest/largest τ.
    """
    means = means.sort_index()
    diffs = np.diff(means.to_numpy())
    i_min, i_max, last = int(np.argmin(means.to_numpy())), int(np.argmax(means.to_numpy())), len(means) - 1
    return {
        "low_tau": means.index[0],
        "low": float(means.iloc[0]),
        "high_tau": means.index[-1],
        "high": float(means.iloc[-1]),
        "min_tau": means.index[i_min],
        "min": float(means.iloc[i_min]),
        "max_tau": means.index[i_max],
        "max": float(means.iloc[i_max]),
        "interior_min": 0 < i_min < last,
        "interior_max": 0 < i_max < last,
        "monotone": bool((diffs >= 0).all() or (diffs <= 0).all()),
    }
