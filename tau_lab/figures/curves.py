"""Training curves: loss, gradient norm and τ over steps."""

from __future__ import annotations

import seaborn as sns
from matplotlib.figure import Figure

from tau_lab.figures import FigureSpec, style
from tau_lab.figures.runs import Runs

CURVES = {"loss": "loss", "grad_norm": "gradient norm ‖∇w‖", "tau": "temperature τ"}


def training_curves(runs: Runs) -> Figure | None:
    """Loss, gradient norm and τ over steps: colour by initial τ, line style by mode, band min–max over the
    members a line pools (the seeds and the task's other grid axes, counted in the title)."""
    if runs.metrics is None:
        return None
    names = [m for m in CURVES if m in set(runs.metrics["metric"])]
    if not names:
        return None
    df = runs.metrics[runs.metrics["metric"].isin(names)].copy()
    colours = style.tau_palette(list(df["tau_init"].unique()))
    df["initial τ"] = df["tau_init"].map(style.tau_text)
    hue_order = [style.tau_text(t) for t in sorted(colours, reverse=True)]
    df["τ mode"] = df["series"]
    fig, axes = style.figure(4.0 * len(names) + 1.6, 4.2, ncols=len(names))
    for i, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        part = df[df["metric"] == name]
        floor = style.log_floor(part["value"])
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
            palette={style.tau_text(t): c for t, c in colours.items()},
            style="τ mode",
            style_order=runs.series_order,
            estimator="mean",
            errorbar=("pi", 100),  # min–max over the pooled members; stays positive on a log axis, unlike ± sd
            ax=ax,
            legend=i == len(names) - 1,
        )
        if floor is not None:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=label, title=CURVES[name].split(" ‖")[0])
    sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    # a line is one run, τ mode and initial τ: it pools the seeds and every other axis of the task's grid
    fig.suptitle(f"{runs.study}: training curves\n{style.pooled_text(runs.members, ['run', 'tau_mode', 'tau_init'])}")
    return fig


FIGURES = [
    FigureSpec(
        "training_curves",
        "Training curves: loss, gradient norm and τ over steps; the title says what each line pools.",
        (),
        training_curves,
    ),
]
