"""Seaborn figures of run directories (``tau-lab plot``).

Each kind is drawn only when the run's tables hold its inputs:

- ``training_curves``: loss, gradient norm and τ over steps (mean over seeds, min–max band);
- ``final_metrics``: uniformity, tolerance, alignment, cross-class similarity against the final τ;
- ``planes``: the alignment–uniformity (Wang & Isola) and uniformity–tolerance (Wang & Liu) planes;
- ``quadrants``: seed 001's figure, the 100 embedded points before and after training;
- ``distill_accuracy`` and ``distill_gradients``: student accuracy over T × α, the soft gradient against T;
- ``clip_zero_shot`` and ``clip_logit_scale``: zero-shot accuracy against τ, logit_scale over steps;
- ``search_history``, ``search_importance``, ``search_space``: a search directory's study;
- ``softmax_curves`` (``tau-lab table --plot``): seed 003's p_i against τ.

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never through pyplot,
so plotting opens no window and leaves the caller's backend and rcParams alone.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import blended_transform_factory

from tau_lab import config, results, table
from tau_lab import search as search_mod
from tau_lab.errors import UserError
from tau_lab.tasks import distill
from tau_lab.temperature import MODES, SCHEDULES

DPI = 120
FORMATS = ("png", "svg", "pdf")
MARKERS = {"fixed": "o", "learnable": "s", "cosine": "^", "linear": "D"}
FLOOR = 1e-6  # log axes show at most six decades below the maximum; smaller values sit on the floor

CURVES = {"loss": "loss", "grad_norm": "gradient norm ‖∇w‖", "tau": "temperature τ"}
FINAL = {  # name: (what it is, how to read it)
    "uniformity": ("uniformity", "log E exp(−2‖Δf‖²), lower = more uniform"),
    "tolerance": ("tolerance", "same-class cosine, higher = tighter classes"),
    "alignment": ("alignment", "E‖f(x) − f(x⁺)‖², lower = closer positives"),
    "cross_similarity": ("cross-class similarity", "mean cosine, lower = classes further apart"),
}
DISTILL_GRADIENTS = {  # members-table column: (axis label, what the gradient is taken with respect to)
    "grad_soft_params_init": ("‖∇θ‖ at init", "parameters"),
    "grad_soft_logits_init": ("‖∇z‖ at init", "logits"),
}
ZERO_SHOT = {"zero_shot_single": "single prompt", "zero_shot_ensemble": "prompt ensemble"}
TAU_MIN = config.TemperatureSettings.model_fields["tau_min"].default  # the clamp of a run without its config
TAU_MAX = config.TemperatureSettings.model_fields["tau_max"].default
QUADRANTS = ["I (+, +)", "II (−, +)", "III (−, −)", "IV (+, −)"]  # point i lies in quadrant i // n


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

    @property
    def study(self) -> str:
        """The experiment names (a run dir's parent folder), for titles."""
        names = list(dict.fromkeys(d.resolve().parent.name for d in self.dirs))
        return " vs ".join(names)

    @property
    def series_order(self) -> list[str]:
        return list(dict.fromkeys(self.members.sort_values(["run", "_mode_rank"])["series"]))


def _run_labels(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.resolve().parent.name}/{d.name}" for d in dirs]


def load_runs(run_dirs: list[Path]) -> Runs:
    """Read the tables of ``run_dirs``; ``UserError`` (one line) for a non-run directory."""
    if not run_dirs:
        raise UserError("no run directory given: pass at least one results/<experiment>/<run-id>")
    members, metrics, embeddings, configs = [], [], {}, {}
    for run_dir, label in zip(run_dirs, _run_labels(run_dirs), strict=True):
        m = results.read_table(run_dir, "members").assign(run=label)
        members.append(m)
        if (run_dir / "metrics.parquet").is_file():
            metrics.append(results.read_table(run_dir, "metrics").assign(run=label))
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
    return Runs(list(run_dirs), members_df, metrics_df, embeddings, configs)


@contextlib.contextmanager
def _theme() -> Iterator[None]:
    """One look for every figure; a context so that the caller's matplotlib settings stay as they were."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def _figure(width: float, height: float, **grid: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(squeeze=False, **grid)
    return fig, axes


def _palette(names: list[str]) -> dict[str, Any]:
    """Colour-blind-safe colours for categories; orange and vermillion (1 and 3) are never neighbours."""
    colours = sns.color_palette("colorblind", 10)
    picks = [colours[i] for i in (0, 1, 2, 4, 3, 9, 5, 7, 8, 6)]
    return {name: picks[i % len(picks)] for i, name in enumerate(names)}


def _tau_palette(taus: list[float]) -> dict[float, Any]:
    """τ always in viridis, dark = small τ, as the log colour scale of the planes."""
    ordered = sorted(taus)
    return dict(zip(ordered, sns.color_palette("viridis", len(ordered)), strict=True))


def _tau_text(tau: float) -> str:
    return f"{tau:.3g}"


def _log_floor(values: pd.Series) -> float | None:
    """The floor of a log axis when the positive values span two decades or more, else ``None``."""
    positive = values[values > 0]
    if positive.empty or positive.max() / positive.min() < 100:
        return None
    return max(positive.min(), positive.max() * FLOOR)


def training_curves(runs: Runs) -> Figure | None:
    """Loss, gradient norm and τ over steps: colour by initial τ, line style by mode, band over seeds."""
    if runs.metrics is None:
        return None
    names = [m for m in CURVES if m in set(runs.metrics["metric"])]
    if not names:
        return None
    df = runs.metrics[runs.metrics["metric"].isin(names)].copy()
    colours = _tau_palette(list(df["tau_init"].unique()))
    df["initial τ"] = df["tau_init"].map(_tau_text)
    hue_order = [_tau_text(t) for t in sorted(colours, reverse=True)]
    df["τ mode"] = df["series"]
    seeds = runs.members["seed"].nunique()
    fig, axes = _figure(4.0 * len(names) + 1.6, 4.2, ncols=len(names))
    for i, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        part = df[df["metric"] == name]
        floor = _log_floor(part["value"])
        label = CURVES[name]
        if floor is not None:
            # zeros (a vanished gradient, an underflowed loss) would vanish from a log axis: pin them to the floor
            label += " (log scale)"
            below = part.loc[part["value"] < floor, "value"]
            if not below.empty:
                what = "zeros" if (below <= 0).all() else f"values < {floor:.0e}"
                label += f"\n{what} drawn at {floor:.0e}"
            part = part.assign(value=part["value"].clip(lower=floor))
        sns.lineplot(
            part,
            x="step",
            y="value",
            hue="initial τ",
            hue_order=hue_order,
            palette={_tau_text(t): c for t, c in colours.items()},
            style="τ mode",
            style_order=runs.series_order,
            estimator="mean",
            errorbar=("pi", 100),  # min–max over seeds; stays positive on a log axis, unlike ± sd
            ax=ax,
            legend=i == len(names) - 1,
        )
        if floor is not None:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=label, title=CURVES[name].split(" ‖")[0])
    sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    band = f"mean over {seeds} seeds, band min–max" if seeds > 1 else "1 seed"
    fig.suptitle(f"{runs.study}: training curves ({band})")
    return fig


def _final_table(runs: Runs, names: list[str]) -> pd.DataFrame:
    """Mean and sd over seeds of the final metrics and τ per series and initial τ (finished members only)."""
    ok = runs.members[runs.members["status"] == "ok"]
    agg = ok.groupby(["series", "tau_init"])[["tau", *names]].agg(["mean", "std"])
    agg.columns = [f"{c}_{s}" for c, s in agg.columns]
    return agg.reset_index().sort_values("tau_mean")


def final_metrics(runs: Runs) -> Figure | None:
    """Final metrics against τ, a point per τ with its spread over seeds; learnable and scheduled at their final τ."""
    names = [m for m in FINAL if m in runs.members.columns]
    if not names or "tau" not in runs.members.columns:
        return None
    table = _final_table(runs, names)
    if table.empty:
        return None
    order = [s for s in runs.series_order if s in set(table["series"])]
    colours = _palette(order)
    ncols = 2 if len(names) > 1 else 1
    nrows = -(-len(names) // ncols)
    fig, axes = _figure(4.4 * ncols + 1.8, 3.2 * nrows + 0.6, nrows=nrows, ncols=ncols, sharex=True)
    for ax, name in zip(axes.flat, names, strict=False):
        sns.lineplot(
            table,
            x="tau_mean",
            y=f"{name}_mean",
            hue="series",
            hue_order=order,
            palette=colours,
            style="series",
            style_order=order,
            markers=_markers(order),
            dashes=False,
            markersize=7,
            errorbar=None,
            legend=ax is axes.flat[0],
            ax=ax,
        )
        for series, part in table.groupby("series"):
            ax.errorbar(
                part["tau_mean"],
                part[f"{name}_mean"],
                yerr=part[f"{name}_std"].fillna(0),
                xerr=part["tau_std"].fillna(0),
                fmt="none",
                ecolor=colours[series],
                capsize=3,
            )
        ax.set_xscale("log")
        short, explanation = FINAL[name]
        ax.set(xlabel="τ (log scale)", ylabel=short, title=f"{short}\n{explanation}")
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    sns.move_legend(axes.flat[0], "upper left", bbox_to_anchor=(1.02, 1), title="τ mode", frameon=False)
    if ncols > 1:  # the first panel's legend would squeeze it: give it to the figure instead
        legend = axes.flat[0].get_legend()
        fig.legend(
            legend.legend_handles,
            [t.get_text() for t in legend.texts],
            title="τ mode",
            loc="outside right upper",
            frameon=False,
        )
        legend.remove()
    seeds = runs.members["seed"].nunique()
    spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "1 seed"
    fig.suptitle(f"{runs.study}: final metrics against τ ({spread})\nlearnable and scheduled members at their final τ")
    return fig


def _markers(order: list[str]) -> dict[str, str]:
    return {s: MARKERS.get(s.rsplit(": ", 1)[-1], "o") for s in order}


def planes(runs: Runs) -> Figure | None:
    """The alignment–uniformity and uniformity–tolerance planes: a point per member, colour by final τ."""
    pairs = [
        (x, y, t)
        for x, y, t in [
            ("uniformity", "alignment", "alignment–uniformity (Wang & Isola)"),
            ("uniformity", "tolerance", "uniformity–tolerance (Wang & Liu)"),
        ]
        if {x, y, "tau"} <= set(runs.members.columns)
    ]
    ok = runs.members[(runs.members["status"] == "ok") & (runs.members.get("tau", 0) > 0)]
    if not pairs or ok.empty:
        return None
    order = [s for s in runs.series_order if s in set(ok["series"])]
    markers = _markers(order)
    low, high = ok["tau"].min(), ok["tau"].max()
    norm = LogNorm(low / 1.5, high * 1.5) if low == high else LogNorm(low, high)
    fig, axes = _figure(5.0 * len(pairs) + 2.2, 4.6, ncols=len(pairs))
    for ax, (x, y, title) in zip(axes[0], pairs, strict=True):
        sns.scatterplot(
            ok,
            x=x,
            y=y,
            hue="tau",
            hue_norm=norm,
            palette="viridis",
            style="series",
            style_order=order,
            markers=markers,
            s=70,
            edgecolor="black",
            linewidth=0.5,
            alpha=0.9,
            legend=False,
            ax=ax,
        )
        ax.set(title=title, xlabel=f"{FINAL[x][0]} ({FINAL[x][1]})", ylabel=f"{FINAL[y][0]}\n({FINAL[y][1]})")
    fig.colorbar(ScalarMappable(norm, "viridis"), ax=axes[0, -1], label="final τ (log scale)")
    handles = [Line2D([], [], marker=markers[s], ls="", color="grey", markeredgecolor="black", label=s) for s in order]
    fig.legend(handles=handles, title="τ mode", loc="outside right upper", frameon=False)
    fig.suptitle(f"{runs.study}: representation planes, one point per member")
    return fig


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
    text = f"fixed\nτ = {start:g}" if mode == "fixed" else f"{mode}\nτ {start:g} → {_tau_text(end)}"
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
    """Seed 001's figure for one run: the embedded points before training and after it, a panel per τ, a row per mode.

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
    fig, axes = _figure(size * ncols + 0.4, size * len(rows) + 1.1, nrows=len(rows), ncols=ncols)
    colours = list(_palette(QUADRANTS).values())
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


def _minus(value: float, fmt: str = "g") -> str:
    """A number with a typographic minus sign, as matplotlib writes its tick labels."""
    return format(value, fmt).replace("-", "−")


def _log_ticks(axis: Any) -> None:
    """Ticks at 1, 2 and 5 × 10^k written as plain numbers, no minor labels: a log axis over less than two
    decades would otherwise print overlapping minor labels such as 2×10⁻², 3×10⁻²."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _t2_text(t2: bool) -> str:
    return "with T²" if t2 else "without T²"


def distill_accuracy(runs: Runs) -> Figure | None:
    """Student accuracy over T × α for fixed-T members, mean over seeds, annotated; the best cell outlined.

    A panel per T² setting (columns) and per run and labelled fraction (rows), one colour scale for all.
    """
    if not {"accuracy", "alpha", "t2_scaling", "labeled_fraction"} <= set(runs.members.columns):
        return None
    fixed = runs.members[runs.members["tau_mode"] == "fixed"]
    table = distill.over_seeds(fixed, ["run", "labeled_fraction", "t2_scaling", "alpha", "tau_init"], ["accuracy"])
    if table.empty:
        return None
    rows = list(table[["run", "labeled_fraction"]].drop_duplicates().itertuples(index=False, name=None))
    t2s = sorted(table["t2_scaling"].unique(), reverse=True)
    n_t, n_a = table["tau_init"].nunique(), table["alpha"].nunique()
    width, height = 0.75 * n_t + 1.2, 0.5 * n_a + 1.0
    fig, axes = _figure(width * len(t2s) + 1.4, height * len(rows) + 0.9, nrows=len(rows), ncols=len(t2s))
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
            ax.set_title(f"{where}labelled fraction {fraction:g}, {_t2_text(t2)}")
            ax.tick_params(axis="y", rotation=0)
    fig.colorbar(ScalarMappable(norm, "cividis"), ax=axes, label="test accuracy (mean over seeds)", shrink=0.8)
    seeds = fixed["seed"].nunique()
    fig.suptitle(
        f"{runs.study}: student accuracy over T × α (fixed T, mean over {seeds} seed{'s' * (seeds > 1)})\n"
        "outlined: the best cell of each panel"
    )
    return fig


def slope_min_T(taus: pd.Series) -> float:
    """The low end of the log–log fit: T ≥ 4 (where the large-T law holds) when two such T exist, else every T."""
    distinct = sorted(taus.unique())
    return 4.0 if sum(t >= 4.0 for t in distinct) >= 2 else float(distinct[0])


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
    min_T = slope_min_T(fixed["tau_init"])
    lines = list(fixed[["run", "t2_scaling"]].drop_duplicates().sort_values(["run", "t2_scaling"]).itertuples(False))
    many = len(runs.dirs) > 1
    labels = [f"{run}: {_t2_text(t2)}" if many else _t2_text(t2) for run, t2 in lines]
    colours = _palette(labels)
    fig, axes = _figure(4.6 * len(names) + 1.8, 4.2, ncols=len(names))
    for ax, name in zip(axes[0], names, strict=True):
        ends: list[tuple[float, float, str, Any]] = []  # where each line ends, its slope and colour
        for (run, t2), label in zip(lines, labels, strict=True):
            part = fixed[(fixed["run"] == run) & (fixed["t2_scaling"] == t2)]
            stats = part.groupby("tau_init")[name].agg(["mean", "std"])
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                color=colours[label],
                capsize=3,
                label=label,
            )
            fit = distill.loglog_slopes(part, name, min_T)
            if fit.empty:
                continue
            slope, sd = fit["slope_mean"].iloc[0], fit["slope_sd"].iloc[0]
            text = f"slope {_minus(slope, '+.2f')}" + ("" if pd.isna(sd) else f" ± {sd:.2f}")
            ends.append((stats.index[-1], stats["mean"].iloc[-1], text, colours[label]))
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
    seeds = fixed["seed"].nunique()
    fig.suptitle(
        f"{runs.study}: the soft term's gradient against T (mean ± sd over {seeds} seed{'s' * (seeds > 1)})\n"
        f"log–log slopes fitted per seed over T ≥ {min_T:g}; theory for large T: −2 without T², 0 with it"
    )
    return fig


def clip_zero_shot(runs: Runs) -> Figure | None:
    """Zero-shot accuracy against τ (learnable members at their final τ): single prompt against the prompt
    ensemble in colour, τ mode in marker and line style; a panel per caption-noise level."""
    names = [c for c in ZERO_SHOT if c in runs.members.columns]
    ok = runs.members[runs.members["status"] == "ok"]
    if not names or "tau" not in ok.columns or ok.empty:
        return None
    noise = sorted(ok["caption_noise"].unique()) if "caption_noise" in ok.columns else [None]
    order = [s for s in runs.series_order if s in set(ok["series"])]
    colours = _palette(list(ZERO_SHOT.values()))
    styles = {s: ["-", "--", ":", "-."][i % 4] for i, s in enumerate(order)}
    fig, axes = _figure(4.8 * len(noise) + 1.6, 4.8, ncols=len(noise), sharey=True)
    for ax, level in zip(axes[0], noise, strict=True):
        part = ok if level is None else ok[ok["caption_noise"] == level]
        table = part.groupby(["series", "tau_init"])[["tau", *names]].agg(["mean", "std"])
        table.columns = [f"{c}_{s}" for c, s in table.columns]
        table = table.reset_index().sort_values("tau_mean")
        for series, rows in table.groupby("series"):
            for name in names:
                ax.errorbar(
                    rows["tau_mean"],
                    rows[f"{name}_mean"],
                    xerr=rows["tau_std"].fillna(0),
                    yerr=rows[f"{name}_std"].fillna(0),
                    color=colours[ZERO_SHOT[name]],
                    marker=_markers([series])[series],
                    ls=styles[series],
                    capsize=3,
                )
        ax.axhline(0.1, color="0.5", ls=":", lw=1.2)
        ax.set_xscale("log")
        _log_ticks(ax.xaxis)
        ax.set(xlabel="τ (log scale; learnable at its final τ)", ylabel="zero-shot test accuracy")
        ax.set_title("all captions correct" if not level else f"{level:.0%} of the captions wrong")
    handles = [Line2D([], [], color=c, lw=2, label=label) for label, c in colours.items()]
    handles.append(Line2D([], [], color="0.5", ls=":", lw=1.2, label="chance (1 in 10)"))
    handles += [
        Line2D([], [], color="0.3", marker=_markers([s])[s], ls=styles[s], label=f"τ {s}" if len(order) == 1 else s)
        for s in order
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    seeds = ok["seed"].nunique()
    spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "1 seed"
    fig.suptitle(f"{runs.study}: zero-shot accuracy against τ\nsingle prompt vs prompt ensemble ({spread})")
    return fig


def clip_logit_scale(runs: Runs) -> Figure | None:
    """The learnable members' ``logit_scale = ln(1/τ)`` over steps, colour by initial τ, band over seeds, with
    the clamp at ``ln(1/τ_min)`` (CLIP's ln 100) and the scale ``exp(logit_scale)`` on the right axis."""
    if runs.metrics is None or not set(ZERO_SHOT) & set(runs.members.columns):
        return None
    df = runs.metrics[(runs.metrics["metric"] == "logit_scale") & (runs.metrics["tau_mode"] == "learnable")].copy()
    if df.empty:
        return None
    colours = _tau_palette(list(df["tau_init"].unique()))
    df["initial τ"] = df["tau_init"].map(_tau_text)
    fig, axes = _figure(7.2, 4.4)
    ax = axes[0, 0]
    sns.lineplot(
        df,
        x="step",
        y="value",
        hue="initial τ",
        hue_order=[_tau_text(t) for t in sorted(colours, reverse=True)],
        palette={_tau_text(t): c for t, c in colours.items()},
        style="run" if len(runs.dirs) > 1 else None,
        estimator="mean",
        errorbar=("pi", 100),
        ax=ax,
    )
    floors = {cfg.get("temperature", {}).get("tau_min", TAU_MIN) for cfg in runs.configs.values()} or {TAU_MIN}
    ceilings = {cfg.get("temperature", {}).get("tau_max", TAU_MAX) for cfg in runs.configs.values()} or {TAU_MAX}
    # the clamp's labels sit outside the band the trajectories can reach: above the top line, below the bottom one
    for tau_min in sorted(floors):
        top = np.log(1 / tau_min)
        ax.axhline(top, color="black", ls="--", lw=1.2)
        text = f"clamp: logit_scale ≤ ln(1/τ_min) = ln {1 / tau_min:g}, a scale of at most {1 / tau_min:g}"
        ax.annotate(text, (0.01, top), xycoords=ax.get_yaxis_transform(), xytext=(0, 3), textcoords="offset points")
    for tau_max in sorted(ceilings):
        bottom = np.log(1 / tau_max)
        ax.axhline(bottom, color="black", ls="--", lw=1.2)
        text = f"clamp: logit_scale ≥ ln(1/τ_max) = {bottom:.3g}, τ ≤ {tau_max:g}"
        ax.annotate(
            text,
            (0.01, bottom),
            xycoords=ax.get_yaxis_transform(),
            xytext=(0, -3),
            textcoords="offset points",
            va="top",
        )
    low = min(df["value"].min(), np.log(1 / max(ceilings)))
    high = max(df["value"].max(), np.log(1 / min(floors)))
    ax.set_ylim(low - 0.12 * (high - low), high + 0.12 * (high - low))
    scale = ax.secondary_yaxis("right", functions=(np.exp, lambda s: np.log(np.maximum(s, 1e-300))))
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if low - 0.1 <= np.log(t) <= high + 0.1]
    scale.set_yticks(ticks, [f"{t:g}" for t in ticks])
    scale.set_ylabel("scale 1/τ = exp(logit_scale)")
    ax.set(xlabel="step", ylabel="logit_scale = ln(1/τ)", title="learnable members")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.15, 1), frameon=False)
    seeds = df["seed"].nunique()
    band = f"mean over {seeds} seeds, band min–max" if seeds > 1 else "1 seed"
    fig.suptitle(f"{runs.study}: learnable logit_scale over steps ({band})")
    return fig


# ----------------------------------------------------------------------------- search directories


@dataclass
class SearchDir:
    """A ``tau-lab search`` directory: its trials table and the ``[search]`` table of its batches' config."""

    directory: Path
    trials: pd.DataFrame
    objective: str
    direction: str
    space: dict[str, Any]

    @property
    def study(self) -> str:
        """``<experiment> search``, with the study's name when it is not the experiment's."""
        experiment, name = self.directory.resolve().parent.name, self.directory.name.removeprefix("search-")
        return f"{experiment} search" + ("" if name == experiment else f" (study {name})")

    @property
    def completed(self) -> pd.DataFrame:
        return self.trials[(self.trials["state"] == "COMPLETE") & self.trials["value"].notna()]


def is_search_dir(path: Path) -> bool:
    """A search directory holds the study's trials table (``tau_lab.search.run`` writes it)."""
    return (Path(path) / "trials.parquet").is_file()


def load_search(directory: Path) -> SearchDir:
    """The trials table and the objective, direction and space from a batch's ``config.toml``."""
    directory = Path(directory)
    configs = sorted(directory.glob("*/config.toml"))
    if not configs:
        raise UserError(f"{directory}: no batch run directory with a config.toml: the objective is unknown")
    settings = tomllib.loads(configs[0].read_text()).get("search", {})
    trials = pd.read_parquet(directory / "trials.parquet")
    return SearchDir(directory, trials, settings["objective"], settings["direction"], settings.get("space", {}))


def _variance_shares(done: pd.DataFrame, params: list[str]) -> dict[str, float]:
    """Each parameter's share of the objective's variance it explains (η², numbers in quantile bins), normalised."""
    spread = ((done["value"] - done["value"].mean()) ** 2).sum()
    shares = {}
    for name in params:
        x = done[f"params_{name}"]
        if pd.api.types.is_float_dtype(x):  # quantile bins: five, or two for a handful of trials
            groups = pd.qcut(x.rank(method="first"), 5 if len(x) >= 10 else 2, labels=False)
        else:
            groups = x.astype(str)
        means = done.groupby(groups)["value"].transform("mean")
        shares[name] = float(((means - done["value"].mean()) ** 2).sum() / spread) if spread > 0 else 0.0
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items()} if total > 0 else shares


def _importances(search: SearchDir, params: list[str]) -> tuple[dict[str, float], str]:
    """Optuna's (fANOVA) importances of the study in the directory's journal, else η² from the trials table."""
    journal = search.directory / "journal.log"
    if journal.is_file():
        try:
            storage = search_mod.open_storage(str(journal))
            study = optuna.load_study(study_name=search.directory.name.removeprefix("search-"), storage=storage)
            return optuna.importance.get_param_importances(study), "Optuna's fANOVA importances (study in journal.log)"
        except (KeyError, ValueError, RuntimeError, OSError):
            pass
    how = "share of variance explained, η² from trials.parquet (the study's storage was not reachable)"
    return _variance_shares(search.completed, params), how


def search_history(search: SearchDir) -> Figure | None:
    """The objective of every completed trial and the best so far; pruned and failed trials marked below."""
    done = search.completed.sort_values("number")
    if done.empty:
        return None
    best = done["value"].cummin() if search.direction == "minimize" else done["value"].cummax()
    colours = _palette(["trial", "best so far", "other"])
    fig, axes = _figure(7.0, 4.2)
    ax = axes[0, 0]
    ax.scatter(done["number"], done["value"], color=colours["trial"], s=28, label="completed trial", zorder=3)
    ax.step(done["number"], best, where="post", color=colours["best so far"], lw=2, label="best so far")
    for state, marker in [("PRUNED", "x"), ("FAIL", "v")]:
        numbers = search.trials.loc[search.trials["state"] == state, "number"]
        if not numbers.empty:
            ax.plot(
                numbers,
                np.full(len(numbers), 0.03),
                marker=marker,
                ls="",
                color=colours["other"],
                transform=ax.get_xaxis_transform(),
                label=f"{state.lower()} ({len(numbers)}, no value)",
            )
    ax.set(xlabel="trial number", ylabel=f"{search.objective} ({search.direction})", title="optimisation history")
    ax.legend(loc="best", frameon=False)
    fig.suptitle(f"{search.study}: {len(done)} of {len(search.trials)} trials completed")
    return fig


def search_importance(search: SearchDir) -> Figure | None:
    """A bar per searched parameter: Optuna's importances when the study's storage is reachable, else η²."""
    params = [p for p in search.space if f"params_{p}" in search.trials.columns]
    if not params or len(search.completed) < 2:
        return None
    importances, how = _importances(search, params)
    frame = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
    fig, axes = _figure(7.0, 1.4 + 0.5 * len(frame))
    ax = axes[0, 0]
    sns.barplot(frame, x="importance", y="parameter", color=_palette(["bar"])["bar"], ax=ax)
    for bar, value in zip(ax.patches, frame["importance"], strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:.2f}", va="center", fontsize="small")
    ax.set(xlim=(0, 1.12), xlabel=f"importance for {search.objective} (sums to 1)", ylabel="", title=how)
    fig.suptitle(f"{search.study}: parameter importances ({len(search.completed)} completed trials)")
    return fig


def search_space(search: SearchDir) -> Figure | None:
    """The objective over the τ × α plane (colour, log τ axis) when both are searched, else against τ;
    markers by ``tau_mode`` when it is searched; the best trial starred."""
    done = search.completed
    if done.empty or "params_tau" not in done.columns:
        return None
    done = done.rename(columns=lambda c: c.removeprefix("params_"))
    modes = "tau_mode" if "tau_mode" in done.columns else None
    order = sorted(done[modes].unique(), key=lambda m: MODES.index(m) if m in MODES else len(MODES)) if modes else None
    pick = done["value"].idxmin() if search.direction == "minimize" else done["value"].idxmax()
    plane = "alpha" in done.columns
    fig, axes = _figure(6.8, 4.6)
    ax = axes[0, 0]
    common = {"style": modes, "style_order": order, "markers": _markers(order) if order else True, "ax": ax}
    if plane:
        norm = Normalize(done["value"].min(), done["value"].max())
        sns.scatterplot(
            done, x="tau", y="alpha", hue="value", hue_norm=norm, palette="cividis", s=70, edgecolor="black", **common
        )
        fig.colorbar(ScalarMappable(norm, "cividis"), ax=ax, label=f"{search.objective} ({search.direction})")
        ax.set(ylabel="α (weight of the soft term)")
        what = "the τ × α plane"
    else:
        sns.scatterplot(done, x="tau", y="value", color=_palette(["trial"])["trial"], s=50, **common)
        ax.set(ylabel=f"{search.objective} ({search.direction})")
        what = "τ"
    # the best trial, starred
    y = done.loc[pick, "alpha" if plane else "value"]
    ax.scatter(done.loc[pick, "tau"], y, marker="*", s=380, facecolor="none", edgecolor="black", lw=1.5)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis)
    ax.margins(0.08)  # room for the star at the edges
    ax.set_xlabel("τ (log scale)")
    legend = ax.get_legend()
    if legend is not None:
        handles = [
            h
            for h, t in zip(legend.legend_handles, [t.get_text() for t in legend.texts], strict=True)
            if t in (order or [])
        ]
        legend.remove()
        if handles:
            fig.legend(handles, order, title="τ mode", loc="outside right upper", frameon=False)
    fig.suptitle(f"{search.study}: {search.objective} over {what}\none point per completed trial, the best starred")
    return fig


def search_figures(search: SearchDir) -> list[tuple[str, Any]]:
    """The figures of a search directory, each drawn only when its inputs are present."""
    return [
        ("search_history", lambda: search_history(search)),
        ("search_importance", lambda: search_importance(search)),
        ("search_space", lambda: search_space(search)),
    ]


# ----------------------------------------------------------------------------- tau-lab table --plot


def softmax_curves(logits: list[float], taus: list[float], target: int | None = None) -> Figure:
    """Seed 003's illustration, computed by ``table.softmax_table`` (log-sum-exp, float64): ``p_i`` of the
    logits against τ on a dense log grid spanning the given τ, which are marked; with a target, its
    cross-entropy in a second panel."""
    given = table.softmax_table(logits, taus, target)  # validates the inputs, one clear line
    low, high = min(taus), max(taus)
    low, high = (low / 10, high * 10) if low == high else (low / 1.5, high * 1.5)
    curves = table.softmax_table(logits, np.geomspace(low, high, 400).tolist(), target)
    labels = [f"p{i} (z{i} = {_minus(z)})" + (", target" if i == target else "") for i, z in enumerate(logits)]
    colours = _palette(labels)
    fig, axes = _figure(6.8 + (4.4 if target is not None else 0), 4.4, ncols=2 if target is not None else 1)
    ax = axes[0, 0]
    for i, label in enumerate(labels):
        ax.plot(curves["tau"], curves[f"p{i}"], color=colours[label], lw=2.6 if i == target else 1.8, label=label)
        ax.plot(given["tau"], given[f"p{i}"], "o", color=colours[label], markeredgecolor="black", markersize=6)
    for tau in taus:
        ax.axvline(tau, color="0.6", ls=":", lw=1, zorder=0)
    ax.set_xscale("log")
    _log_ticks(ax.xaxis)
    ax.set(xlim=(low, high), ylim=(-0.02, 1.02), xlabel="τ (log scale; dotted: the given τ)", ylabel="probability p_i")
    ax.set_title("softmax(z / τ)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", frameon=False)
    if target is not None:
        ce = axes[0, 1]
        ce.plot(curves["tau"], curves["cross_entropy"], color=colours[labels[target]], lw=2.2)
        ce.plot(given["tau"], given["cross_entropy"], "o", color=colours[labels[target]], markeredgecolor="black")
        ce.set_xscale("log")
        _log_ticks(ce.xaxis)
        ce.set(xlim=(low, high), xlabel="τ (log scale)", ylabel=f"cross-entropy −log p{target} (nats)")
        ce.set_title(f"cross-entropy, target {target}")
    z = ", ".join(_minus(v) for v in logits)
    fig.suptitle(f"softmax probabilities of the logits z = ({z}) as τ varies")
    return fig


def plot_softmax(logits: list[float], taus: list[float], path: Path, target: int | None = None) -> Path:
    """Write ``softmax_curves`` to ``path``, its format from the suffix (png, svg or pdf); return the path."""
    path = Path(path)
    fmt = path.suffix.lower().removeprefix(".")
    if fmt not in FORMATS:
        raise UserError(f"--plot {path}: the suffix must be one of {', '.join('.' + f for f in FORMATS)}")
    with _theme():
        fig = softmax_curves(logits, taus, target)
        results.atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI))
    return path


def _write(figures: list[tuple[str, Any]], out: Path, fmt: str) -> list[Path]:
    """Draw each figure (``None``: skipped) in the theme and write it to ``out/<name>.<fmt>``."""
    written = []
    for name, draw in figures:
        with _theme():
            fig = draw()
            if fig is None:
                continue
            path = out / f"{name}.{fmt}"
            # write beside the target, then rename: a reader never sees half a figure
            results.atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format=fmt, dpi=DPI))
        written.append(path)
    return written


def plot_run(run_dirs: list[Path], out: Path | None = None, fmt: str = "png") -> list[Path]:
    """Draw every figure that the runs' tables support and return the written files.

    Several run directories are compared in one set of figures (and one quadrants figure each); files go to
    ``out``, by default the first run's ``figures/``. ``fmt`` is png, svg or pdf. A search directory
    (``results/<experiment>/search-<study>``, found by its ``trials.parquet``) gets the search's figures
    instead, into its own ``figures/`` (names suffixed by the directory's when several share ``out``).
    """
    if fmt not in FORMATS:
        raise UserError(f"format = {fmt!r} is not allowed: use one of {', '.join(FORMATS)}")
    run_dirs = [Path(d) for d in run_dirs]
    searches = [d for d in run_dirs if is_search_dir(d)]
    if searches:
        if len(searches) < len(run_dirs):
            raise UserError("search directories and run directories cannot be drawn together: plot them apart")
        written = []
        for directory in searches:
            suffix = f"-{directory.name}" if out is not None and len(searches) > 1 else ""
            figures = [(name + suffix, draw) for name, draw in search_figures(load_search(directory))]
            written += _write(figures, Path(out) if out is not None else directory / "figures", fmt)
        return written
    runs = load_runs(run_dirs)
    out = Path(out) if out is not None else run_dirs[0] / "figures"
    figures: list[tuple[str, Any]] = [
        ("training_curves", lambda: training_curves(runs)),
        ("final_metrics", lambda: final_metrics(runs)),
        ("planes", lambda: planes(runs)),
        ("distill_accuracy", lambda: distill_accuracy(runs)),
        ("distill_gradients", lambda: distill_gradients(runs)),
        ("clip_zero_shot", lambda: clip_zero_shot(runs)),
        ("clip_logit_scale", lambda: clip_logit_scale(runs)),
    ]
    labels = list(dict.fromkeys(runs.members["run"]))
    for label in labels:
        name = "quadrants" if len(labels) == 1 else f"quadrants-{label.replace('/', '-')}"
        figures.append((name, lambda label=label: quadrants(runs, label)))
    return _write(figures, out, fmt)
