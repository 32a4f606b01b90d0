"""Seaborn figures of run directories (``tau-lab plot``).

Four kinds, each drawn only when the run's tables hold its inputs:

- ``training_curves``: loss, gradient norm and τ over steps (mean over seeds, min–max band);
- ``final_metrics``: uniformity, tolerance, alignment, cross-class similarity against the final τ;
- ``planes``: the alignment–uniformity (Wang & Isola) and uniformity–tolerance (Wang & Liu) planes;
- ``quadrants``: seed 001's figure, the 100 embedded points before and after training.

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
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tau_lab import results
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
    """Read the tables of ``run_dirs``; ``FileNotFoundError`` (one line) for a non-run directory."""
    if not run_dirs:
        raise ValueError("no run directory given: pass at least one results/<experiment>/<run-id>")
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
    fig, axes = _figure(4.2 * len(names) + 1.6, 4.2, ncols=len(names))
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
        fig.legend(legend.legend_handles, [t.get_text() for t in legend.texts], title="τ mode",
                   loc="outside right upper", frameon=False)
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


def plot_run(run_dirs: list[Path], out: Path | None = None, fmt: str = "png") -> list[Path]:
    """Draw every figure that the runs' tables support and return the written files.

    Several run directories are compared in one set of figures (and one quadrants figure each); files go to
    ``out``, by default the first run's ``figures/``. ``fmt`` is png, svg or pdf.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format = {fmt!r} is not allowed: use one of {', '.join(FORMATS)}")
    run_dirs = [Path(d) for d in run_dirs]
    runs = load_runs(run_dirs)
    out = Path(out) if out is not None else run_dirs[0] / "figures"
    figures: list[tuple[str, Any]] = [
        ("training_curves", lambda: training_curves(runs)),
        ("final_metrics", lambda: final_metrics(runs)),
        ("planes", lambda: planes(runs)),
    ]
    labels = list(dict.fromkeys(runs.members["run"]))
    for label in labels:
        name = "quadrants" if len(labels) == 1 else f"quadrants-{label.replace('/', '-')}"
        figures.append((name, lambda label=label: quadrants(runs, label)))
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
