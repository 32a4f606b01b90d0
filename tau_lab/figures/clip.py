"""CLIP: zero-shot accuracy against τ, and the learnable logit_scale over steps with its clamp."""

from __future__ import annotations

import inspect

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tau_lab.analysis import over_seeds
from tau_lab.figures import FigureSpec, style
from tau_lab.figures.runs import Runs
from tau_lab.temperature import Temperature

ZERO_SHOT = {"zero_shot_single": "single prompt", "zero_shot_ensemble": "prompt ensemble"}


_CLAMP = inspect.signature(Temperature).parameters  # the clamp of a run without its config: the defaults
TAU_MIN, TAU_MAX = _CLAMP["tau_min"].default, _CLAMP["tau_max"].default


def clip_zero_shot(runs: Runs) -> Figure | None:
    """Zero-shot accuracy against τ (learnable members at their final τ): single prompt against the prompt
    ensemble in colour, τ mode in marker and line style; a panel per caption-noise level."""
    names = [c for c in ZERO_SHOT if c in runs.members.columns]
    ok = runs.members[runs.members["status"] == "ok"]
    if not names or "tau" not in ok.columns or ok.empty:
        return None
    noise = sorted(ok["caption_noise"].unique()) if "caption_noise" in ok.columns else [None]
    order = [s for s in runs.series_order if s in set(ok["series"])]
    colours = style.palette(list(ZERO_SHOT.values()))
    styles = {s: ["-", "--", ":", "-."][i % 4] for i, s in enumerate(order)}
    fig, axes = style.figure(4.8 * len(noise) + 1.6, 4.8, ncols=len(noise), sharey=True)
    for ax, level in zip(axes[0], noise, strict=True):
        part = ok if level is None else ok[ok["caption_noise"] == level]
        table = over_seeds(part, ["series", "tau_init"], ["tau", *names]).sort_values("tau_mean")
        for series, rows in table.groupby("series"):
            for name in names:
                ax.errorbar(
                    rows["tau_mean"],
                    rows[f"{name}_mean"],
                    xerr=rows["tau_sd"].fillna(0),
                    yerr=rows[f"{name}_sd"].fillna(0),
                    color=colours[ZERO_SHOT[name]],
                    marker=style.markers([series])[series],
                    ls=styles[series],
                    capsize=3,
                )
        ax.axhline(0.1, color="0.5", ls=":", lw=1.2)
        ax.set_xscale("log")
        style.log_ticks(ax.xaxis)
        ax.set(xlabel="τ (log scale; learnable at its final τ)", ylabel="zero-shot test accuracy")
        ax.set_title("all captions correct" if not level else f"{level:.0%} of the captions wrong")
    handles = [Line2D([], [], color=c, lw=2, label=label) for label, c in colours.items()]
    handles.append(Line2D([], [], color="0.5", ls=":", lw=1.2, label="chance (1 in 10)"))
    handles += [
        Line2D(
            [], [], color="0.3", marker=style.markers([s])[s], ls=styles[s], label=f"τ {s}" if len(order) == 1 else s
        )
        for s in order
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    spread = style.pooled_text(ok, ["run", "tau_mode", "tau_init", "caption_noise"], unit="point", band="bars ± sd")
    fig.suptitle(f"{runs.study}: zero-shot accuracy against τ\nsingle prompt vs prompt ensemble ({spread})")
    return fig


def clip_logit_scale(runs: Runs) -> Figure | None:
    """The learnable members' ``logit_scale = ln(1/τ)`` over steps, colour by initial τ, band min–max over the
    members a line pools, with
    the clamp at ``ln(1/τ_min)`` (CLIP's ln 100) and the scale ``exp(logit_scale)`` on the right axis."""
    if runs.metrics is None or not set(ZERO_SHOT) & set(runs.members.columns):
        return None
    df = runs.metrics[(runs.metrics["metric"] == "logit_scale") & (runs.metrics["tau_mode"] == "learnable")].copy()
    if df.empty:
        return None
    colours = style.tau_palette(list(df["tau_init"].unique()))
    df["initial τ"] = df["tau_init"].map(style.tau_text)
    fig, axes = style.figure(7.2, 4.4)
    ax = axes[0, 0]
    sns.lineplot(
        df,
        x="step",
        y="value",
        hue="initial τ",
        hue_order=[style.tau_text(t) for t in sorted(colours, reverse=True)],
        palette={style.tau_text(t): c for t, c in colours.items()},
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
    learnable = runs.members[runs.members["tau_mode"] == "learnable"]
    band = style.pooled_text(learnable, ["run", "tau_mode", "tau_init"])
    fig.suptitle(f"{runs.study}: learnable logit_scale over steps ({band})")
    return fig


FIGURES = [
    FigureSpec(
        "clip_zero_shot",
        "Zero-shot accuracy against τ: a single prompt against the prompt ensemble, a panel per caption-noise level.",
        ("clip",),
        clip_zero_shot,
    ),
    FigureSpec(
        "clip_logit_scale",
        "The learnable logit_scale over steps, with its clamp (ln 100 for τ_min = 0.01).",
        ("clip",),
        clip_logit_scale,
    ),
]
