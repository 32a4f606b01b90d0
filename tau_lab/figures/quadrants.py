"""The quadrants study's figure: the embedded points before and after training, a panel per member."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tau_lab.figures import FigureSpec, style
from tau_lab.figures.runs import Runs
from tau_lab.temperature import MODES, SCHEDULES

QUADRANTS = ["I (+, +)", "II (−, +)", "III (−, −)", "IV (+, −)"]  # point i lies in quadrant i // n


def _quadrant_rows(members: pd.DataFrame) -> list[pd.DataFrame]:
    """Rows of the quadrants figure: fixed, learnable, then every schedule together; τ from high to low."""
    rows = []
    for group in [["fixed"], ["learnable"], list(SCHEDULES), sorted(set(members["tau_mode"]) - set(MODES))]:
        part = members[members["tau_mode"].isin(group)]
        if not part.empty:
            rows.append(part.sort_values(["_mode_rank", "tau_init"], ascending=[True, False]))
    return rows


def _panel_title(member: pd.Series) -> str:
    mode, start, end = member["tau_mode"], member["tau_init"], member.get("tau", member["tau_init"])
    text = f"fixed\nτ = {start:g}" if mode == "fixed" else f"{mode}\nτ {start:g} → {style.tau_text(end)}"
    return text + (" (diverged)" if member["status"] != "ok" else "")


def _draw_points(ax: Any, frame: pd.DataFrame, colours: list[Any]) -> None:
    ax.axhline(0, color="0.6", lw=0.8, zorder=0)
    ax.axvline(0, color="0.6", lw=0.8, zorder=0)
    sns.scatterplot(
        frame,
        x="e0",
        y="e1",
        hue="quadrant",
        hue_order=QUADRANTS,
        palette=colours,
        s=14,
        linewidth=0,
        legend=False,
        ax=ax,
    )
    ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), xticks=[-1, 0, 1], yticks=[-1, 0, 1], xlabel="", ylabel="")
    ax.set_aspect("equal")


def quadrants(runs: Runs, run: str) -> Figure | None:
    """The quadrants study's figure for one run: the embedded points before training and after it, a panel
    per τ, a row per mode.

    Drawn for the first seed. Members of one seed share their initial encoder, so the "before" panel is
    drawn once and repeated only where a row starts from a different embedding.
    """
    cfg, emb = runs.configs.get(run), runs.embeddings.get(run)
    if cfg is None or emb is None or cfg.get("task") != "quadrants" or emb.empty:
        return None
    members = runs.members[runs.members["run"] == run]
    seed = members["seed"].min()
    members = members[members["seed"] == seed]
    emb = emb[emb["member"].isin(members["member"])].copy()
    per_quadrant = cfg.get("data", {}).get("points_per_quadrant", 25)
    emb["quadrant"] = [QUADRANTS[min(q, 3)] for q in emb["point"] // per_quadrant]
    first, last = emb["step"].min(), emb["step"].max()
    rows = _quadrant_rows(members)
    ncols = 1 + max(len(r) for r in rows)
    size = min(2.0, 13.0 / ncols, 6.6 / len(rows))
    fig, axes = style.figure(size * ncols + 0.4, size * len(rows) + 1.1, nrows=len(rows), ncols=ncols)
    colours = list(style.palette(QUADRANTS).values())
    shown = None
    for r, row in enumerate(rows):
        start = emb[(emb["member"] == row["member"].iloc[0]) & (emb["step"] == first)].sort_values("point")
        start_xy = start[["e0", "e1"]].to_numpy()
        if shown is not None and np.array_equal(start_xy, shown, equal_nan=True):
            axes[r, 0].axis("off")
            axes[r, 0].text(0.5, 0.5, "same start\nas above", ha="center", va="center", color="0.4", fontsize="small")
        else:
            _draw_points(axes[r, 0], start, colours)
            axes[r, 0].set_title(f"before\n(step {first})")
            shown = start_xy
        for c, (_, member) in enumerate(row.iterrows(), start=1):
            after = emb[(emb["member"] == member["member"]) & (emb["step"] == last)]
            _draw_points(axes[r, c], after, colours)
            axes[r, c].set_title(_panel_title(member))
            # every panel has the seed's limits: tick labels on the outer panels only, so titles have room
            axes[r, c].tick_params(labelbottom=r == len(rows) - 1, labelleft=c == 1)
        for c in range(1 + len(row), ncols):
            axes[r, c].axis("off")
    handles = [Line2D([], [], marker="o", ls="", color=col, label=q) for q, col in zip(QUADRANTS, colours, strict=True)]
    fig.legend(handles=handles, title="quadrant of the input point", loc="outside lower center", ncols=4, frameon=False)
    seeds = runs.members.loc[runs.members["run"] == run, "seed"].nunique()
    which = f"seed {seed}" + (f" of {seeds}" if seeds > 1 else "")
    fig.suptitle(f"{runs.study}: embeddings of the input points before and after {last} steps ({which})")
    return fig


FIGURES = [
    FigureSpec(
        "quadrants",
        "The embedded points before and after training, a panel per τ and a row per τ mode (the first seed).",
        ("quadrants",),
        quadrants,
        per_run=True,
    ),
]
