"""Metrics against τ: the final representation metrics, the tasks' headline metrics, and the
alignment–uniformity planes."""

from __future__ import annotations

import numpy as np
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tau_lab.analysis import over_seeds
from tau_lab.analysis.findings import AXIS_WORDS, axis_text
from tau_lab.analysis.headline import HEADLINES
from tau_lab.figures import FigureSpec, style
from tau_lab.figures.runs import Runs

GEOMETRY_TASKS = ("quadrants", "simclr", "clip", "pairs")

# Tasks with a projection head measure their geometry on the projection z (".z", what the loss reads) and on
# the encoder output h (".h", what the probes read); the others under the plain names.
SPACES = {"": "", ".z": " of z", ".h": " of h"}
GEOMETRY = {  # name: (what it is, how to read it)
    "uniformity": ("uniformity", "log E exp(−2‖Δf‖²), lower = more uniform"),
    "tolerance": ("tolerance", "same-class cosine, higher = tighter classes"),
    "alignment": ("alignment", "E‖f(x) − f(x⁺)‖², lower = closer positives"),
}
FINAL = {  # name: (what it is, how to read it)
    **{f"{m}{s}": (f"{what}{text}", how) for m, (what, how) in GEOMETRY.items() for s, text in SPACES.items()},
    "cross_similarity": ("cross-class similarity", "mean cosine, lower = classes further apart"),
}
HEADLINE_TASKS = ("simclr", "clip", "pairs")
HEADLINE = {  # the headline metrics of those tasks: name: (what it is, how to read it)
    h.column: (h.name, h.how) for h in HEADLINES if set(h.tasks) & set(HEADLINE_TASKS)
}


def final_metrics(runs: Runs) -> Figure | None:
    """The final representation metrics against τ (``against_tau`` of ``FINAL``)."""
    return against_tau(runs, FINAL, "final metrics")


def headline_metrics(runs: Runs) -> Figure | None:
    """The tasks' headline metrics against τ: probe and k-NN accuracy, recall (``against_tau`` of ``HEADLINE``)."""
    return against_tau(runs, HEADLINE, "headline metrics")


def against_tau(runs: Runs, panels: dict[str, tuple[str, str]], what: str) -> Figure | None:
    """A panel per metric of ``panels`` in the members table: a point per τ with its spread over seeds
    (``over_seeds``, finished members); learnable and scheduled members at their final τ."""
    names = [m for m in panels if m in runs.members.columns]
    if not names or "tau" not in runs.members.columns:
        return None
    table = over_seeds(runs.members, ["series", "tau_init"], ["tau", *names]).sort_values("tau_mean")
    if table.empty:
        return None
    order = [s for s in runs.series_order if s in set(table["series"])]
    colours = style.palette(order)
    ncols = 2 if len(names) > 1 else 1
    nrows = -(-len(names) // ncols)
    # no shared x axis: a shared one hides the tick labels of a panel whose neighbour below is empty
    # three rows (a task's geometry in two spaces) share the height two rows would take, and a bit more
    fig, axes = style.figure(4.4 * ncols + 1.8, min(3.2, 8.2 / nrows) * nrows + 0.6, nrows=nrows, ncols=ncols)
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
            markers=style.markers(order),
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
                yerr=part[f"{name}_sd"].fillna(0),
                xerr=part["tau_sd"].fillna(0),
                fmt="none",
                ecolor=colours[series],
                capsize=3,
            )
        ax.set_xscale("log")
        style.log_ticks(ax.xaxis)  # plain 0.05, 0.1, 0.2 rather than colliding 6×10⁻², 2×10⁻¹
        short, explanation = panels[name]
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
    ok = runs.members[runs.members["status"] == "ok"]
    spread = style.pooled_text(ok, ["run", "tau_mode", "tau_init"], unit="point", band="bars ± sd")
    fig.suptitle(f"{runs.study}: {what} against τ ({spread})\nlearnable and scheduled members at their final τ")
    return fig


def headline_by_axis(runs: Runs, label: str) -> Figure | None:
    """The τ × axis interaction of run ``label``: a row per grid axis that varies (``lr``, ``batch_size``, …),
    a column per headline metric; x = fixed τ (log), y = the mean over seeds with its 95% t-interval
    (``mean ± t₀.₉₇₅,ₙ₋₁ · sd / √n``), a line per value of the row's axis. Other varying axes are pooled, and
    the title says so."""
    members = runs.members[runs.members["run"] == label]
    ok = members[(members["status"] == "ok") & (members["tau_mode"] == "fixed")]
    names = [m for m in HEADLINE if m in ok.columns and ok[m].notna().any()]
    varying = [a for a in runs.axes.get(label, []) if ok[a].nunique() > 1]
    if not names or not varying or ok["tau_init"].nunique() < 2:
        return None
    from scipy import stats  # slow to import: only when this figure is drawn

    fig, axes = style.figure(4.2 * len(names) + 1.8, 3.4 * len(varying) + 0.8, nrows=len(varying), ncols=len(names))
    for row, axis in zip(axes, varying, strict=True):
        values = sorted(ok[axis].unique())
        colours = dict(zip(values, sns.color_palette("flare", len(values)), strict=True))
        table = over_seeds(ok, [axis, "tau_init"], names)
        for ax, name in zip(row, names, strict=True):
            for value, part in table.groupby(axis, sort=True):
                n = part["seeds"].to_numpy()
                t = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan)
                half = np.nan_to_num(t * part[f"{name}_sd"].to_numpy() / np.sqrt(n))
                ax.errorbar(
                    part["tau_init"].to_numpy(float),
                    part[f"{name}_mean"].to_numpy(float),
                    yerr=half,
                    color=colours[value],
                    marker="o",
                    capsize=3,
                    label=axis_text(axis, value),
                )
            ax.set_xscale("log")
            style.log_ticks(ax.xaxis)
            short, explanation = HEADLINE[name]
            ax.set(
                xlabel="fixed τ (log scale)",
                ylabel=short,
                title=f"{short} by {AXIS_WORDS.get(axis, axis)}\n{explanation}",
            )
        row[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False, title=AXIS_WORDS.get(axis, axis))
    spread = style.pooled_text(ok, [varying[0], "tau_init"], unit="point", band="")
    rows = "; each row pools the other axes" if len(varying) > 1 else ""
    study = runs.dirs[list(dict.fromkeys(runs.members["run"])).index(label)].resolve().parent.name
    lines = ", ".join(AXIS_WORDS.get(a, a) for a in varying)
    fig.suptitle(
        f"{study} ({label}): headline metrics against fixed τ, a line per value of {lines}\n"
        f"{spread}{rows}; bars: 95% t-interval over seeds"
    )
    return fig


def planes(runs: Runs) -> Figure | None:
    """The alignment–uniformity and uniformity–tolerance planes: a point per member, colour by final τ."""
    pairs = [
        (x + s, y + s, t + text)
        for s, text in SPACES.items()
        for x, y, t in [
            ("uniformity", "alignment", "alignment–uniformity (Wang & Isola)"),
            ("uniformity", "tolerance", "uniformity–tolerance (Wang & Liu)"),
        ]
        if {x + s, y + s, "tau"} <= set(runs.members.columns)
    ]
    ok = runs.members[(runs.members["status"] == "ok") & (runs.members.get("tau", 0) > 0)]
    if not pairs or ok.empty:
        return None
    order = [s for s in runs.series_order if s in set(ok["series"])]
    markers = style.markers(order)
    low, high = ok["tau"].min(), ok["tau"].max()
    norm = LogNorm(low / 1.5, high * 1.5) if low == high else LogNorm(low, high)
    ncols = 2 if len(pairs) > 1 else 1  # a row per space (z, h) of the tasks that measure two
    nrows = -(-len(pairs) // ncols)
    fig, axes = style.figure(5.0 * ncols + 2.2, 4.6 if nrows == 1 else 4.2 * nrows, nrows=nrows, ncols=ncols)
    for ax in axes.flat[len(pairs) :]:
        ax.set_visible(False)
    for ax, (x, y, title) in zip(axes.flat, pairs, strict=False):
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


FIGURES = [
    FigureSpec(
        "final_metrics",
        "Final metrics against τ (learnable and scheduled members at their final τ), mean ± sd over seeds.",
        GEOMETRY_TASKS,
        final_metrics,
    ),
    FigureSpec(
        "headline_metrics",
        "The tasks' headline metrics against τ (linear-probe, k-NN and zero-shot accuracy, recall@1), mean ± sd "
        "over seeds.",
        HEADLINE_TASKS,
        headline_metrics,
    ),
    FigureSpec(
        "headline_by_axis",
        "The τ × axis interaction: the headline metrics against fixed τ, a line per value of each grid axis that "
        "varies (learning rate, batch size, …), mean over seeds with 95% t-intervals.",
        HEADLINE_TASKS,
        headline_by_axis,
        per_run=True,
    ),
    FigureSpec(
        "planes",
        "The alignment–uniformity and uniformity–tolerance planes, one point per member.",
        GEOMETRY_TASKS,
        planes,
    ),
]
