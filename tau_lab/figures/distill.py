"""Distillation: student accuracy over T × α, and the soft term's gradient against T."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

from tau_lab.analysis import distill, over_seeds
from tau_lab.figures import FigureSpec, style
from tau_lab.figures.runs import Runs

DISTILL_GRADIENTS = {  # members-table column: (axis label, what the gradient is taken with respect to)
    "grad_soft_params_init": ("‖∇θ‖ at init", "parameters"),
    "grad_soft_logits_init": ("‖∇z‖ at init", "logits"),
}


def distill_accuracy(runs: Runs) -> Figure | None:
    """Student accuracy over T × α for fixed-T members, mean over seeds, annotated; the best cell outlined.

    A panel per T² setting (columns) and per run and labelled fraction (rows), one colour scale for all.
    """
    if not {"accuracy", "alpha", "t2_scaling", "labeled_fraction"} <= set(runs.members.columns):
        return None
    fixed = runs.members[runs.members["tau_mode"] == "fixed"]
    table = over_seeds(fixed, ["run", "labeled_fraction", "t2_scaling", "alpha", "tau_init"], ["accuracy"])
    if table.empty:
        return None
    rows = list(table[["run", "labeled_fraction"]].drop_duplicates().itertuples(index=False, name=None))
    t2s = sorted(table["t2_scaling"].unique(), reverse=True)
    n_t, n_a = table["tau_init"].nunique(), table["alpha"].nunique()
    width, height = 0.75 * n_t + 1.2, 0.5 * n_a + 1.0
    fig, axes = style.figure(width * len(t2s) + 1.4, height * len(rows) + 0.9, nrows=len(rows), ncols=len(t2s))
    norm = Normalize(table["accuracy_mean"].min(), table["accuracy_mean"].max())
    many = len(runs.dirs) > 1
    for r, (run, fraction) in enumerate(rows):
        for c, t2 in enumerate(t2s):
            ax = axes[r, c]
            part = table[(table["run"] == run) & (table["labeled_fraction"] == fraction) & (table["t2_scaling"] == t2)]
            if part.empty:
                ax.axis("off")
                continue
            grid = part.pivot(index="alpha", columns="tau_init", values="accuracy_mean").sort_index(ascending=False)
            sns.heatmap(
                grid,
                annot=True,
                fmt=".3f",
                cmap="cividis",
                norm=norm,
                cbar=False,
                linewidths=0.5,
                annot_kws={"fontsize": "small"},
                xticklabels=[f"{t:g}" for t in grid.columns],
                yticklabels=[f"{a:g}" for a in grid.index],
                ax=ax,
            )
            i, j = np.unravel_index(np.nanargmax(grid.to_numpy()), grid.shape)
            # vermillion: visible on both ends of cividis, dark blue and yellow
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor=sns.color_palette("colorblind")[3], lw=3))
            where = f"{run}, " if many else ""
            ax.set(
                xlabel="distillation temperature T" if r == len(rows) - 1 else "",
                ylabel="α (weight of the soft term)" if c == 0 else "",
            )
            ax.set_title(f"{where}labelled fraction {fraction:g}, {style.t2_text(t2)}")
            ax.tick_params(axis="y", rotation=0)
    fig.colorbar(ScalarMappable(norm, "cividis"), ax=axes, label="test accuracy (mean over seeds)", shrink=0.8)
    cells = style.pooled_text(
        fixed, ["run", "labeled_fraction", "t2_scaling", "alpha", "tau_init"], unit="cell", band=""
    )
    fig.suptitle(f"{runs.study}: student accuracy over T × α (fixed T; {cells})\noutlined: the best cell of each panel")
    return fig


def _label_ends(ax: Any, ends: list[tuple[float, float, str, Any]], gap: float = 0.06) -> None:
    """Write each text just right of its line's last point (log axes), nudged apart vertically by at least
    ``gap`` of the axes' height so that lines that end close together keep readable labels."""
    low, high = np.log(ax.get_ylim())
    ends = sorted(ends, key=lambda e: e[1])
    heights: list[float] = []
    for _, y, _, _ in ends:  # upward from the lowest, then downward from the top so none leaves the axes
        height = (np.log(y) - low) / (high - low)
        heights.append(max(height, heights[-1] + gap) if heights else height)
    for i in reversed(range(len(heights))):
        heights[i] = min(heights[i], 0.97 if i == len(heights) - 1 else heights[i + 1] - gap)
    for (x, _, text, colour), height in zip(ends, heights, strict=True):
        ax.text(
            x * 1.25,
            height,
            text,
            transform=blended_transform_factory(ax.transData, ax.transAxes),
            va="center",
            color=colour,
            fontsize="small",
            fontweight="bold",
        )


def distill_gradients(runs: Runs) -> Figure | None:
    """The soft term's gradient norm at initialisation against T, log–log, a line per T² setting, with the
    slopes ``distill.loglog_slopes`` fits per seed written on the lines (mean ± sd over seeds)."""
    names = [c for c in DISTILL_GRADIENTS if c in runs.members.columns]
    fixed = runs.members[(runs.members["tau_mode"] == "fixed") & (runs.members["status"] == "ok")]
    if not names or "t2_scaling" not in fixed.columns or fixed["tau_init"].nunique() < 2:
        return None
    min_T = distill.slope_min_T(fixed["tau_init"])
    lines = list(fixed[["run", "t2_scaling"]].drop_duplicates().sort_values(["run", "t2_scaling"]).itertuples(False))
    many = len(runs.dirs) > 1
    labels = [f"{run}: {style.t2_text(t2)}" if many else style.t2_text(t2) for run, t2 in lines]
    colours = style.palette(labels)
    fig, axes = style.figure(4.6 * len(names) + 1.8, 4.2, ncols=len(names))
    for ax, name in zip(axes[0], names, strict=True):
        ends: list[tuple[float, float, str, Any]] = []  # where each line ends, its slope and colour
        for (run, t2), label in zip(lines, labels, strict=True):
            part = fixed[(fixed["run"] == run) & (fixed["t2_scaling"] == t2)]
            stats = over_seeds(part, ["tau_init"], [name]).set_index("tau_init")
            ax.errorbar(
                stats.index,
                stats[f"{name}_mean"],
                yerr=stats[f"{name}_sd"].fillna(0),
                marker="o",
                color=colours[label],
                capsize=3,
                label=label,
            )
            fit = distill.loglog_slopes(part, name, min_T)
            if fit.empty:
                continue
            slope, sd = fit["slope_mean"].iloc[0], fit["slope_sd"].iloc[0]
            text = f"slope {style.minus(slope, '+.2f')}" + ("" if pd.isna(sd) else f" ± {sd:.2f}")
            ends.append((stats.index[-1], stats[f"{name}_mean"].iloc[-1], text, colours[label]))
        ax.set_xscale("log")
        ax.set_yscale("log")
        taus = sorted(fixed["tau_init"].unique())
        ax.set_xlim(taus[0] / 1.4, taus[-1] * 12)  # room on the right for the slopes
        _label_ends(ax, ends)
        ax.set_xticks(taus, [f"{t:g}" for t in taus])
        ax.minorticks_off()
        symbol, what = DISTILL_GRADIENTS[name]
        ax.set(xlabel="distillation temperature T (log scale)", ylabel=f"{symbol} (log scale)")
        ax.set_title(f"{symbol}: soft term, w.r.t. the student's {what}")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    points = style.pooled_text(fixed, ["run", "t2_scaling", "tau_init"], unit="point", band="bars ± sd")
    fig.suptitle(
        f"{runs.study}: the soft term's gradient against T ({points})\n"
        f"log–log slopes fitted per seed over T ≥ {min_T:g}; theory for large T: −2 without T², 0 with it"
    )
    return fig


FIGURES = [
    FigureSpec(
        "distill_accuracy",
        "Student test accuracy over T × α (fixed T, mean over seeds), a panel per T² setting and labelled "
        "fraction; the best cell of each panel outlined.",
        ("distill",),
        distill_accuracy,
    ),
    FigureSpec(
        "distill_gradients",
        "The soft term's gradient norm at initialisation against T (log–log), a line per T² setting, with the "
        "slopes fitted per seed; the title counts what each point pools.",
        ("distill",),
        distill_gradients,
    ),
]
