"""A search directory's figures (``tau-lab search``): its optimisation history, the parameters'
importances, and the objective over the searched space. Read from the trials table and the journal
file with pandas and optuna, not through ``tau_lab.search``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from tau_lab.errors import UserError
from tau_lab.figures import FigureSpec, style
from tau_lab.temperature import MODES


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
            import optuna  # slow to import: only for a directory that has its journal
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            storage = JournalStorage(JournalFileBackend(str(journal)))
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
    colours = style.palette(["trial", "best so far", "other"])
    fig, axes = style.figure(7.0, 4.2)
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
    fig, axes = style.figure(7.0, 1.4 + 0.5 * len(frame))
    ax = axes[0, 0]
    sns.barplot(frame, x="importance", y="parameter", color=style.palette(["bar"])["bar"], ax=ax)
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
    fig, axes = style.figure(6.8, 4.6)
    ax = axes[0, 0]
    common = {"style": modes, "style_order": order, "markers": style.markers(order) if order else True, "ax": ax}
    if plane:
        norm = Normalize(done["value"].min(), done["value"].max())
        sns.scatterplot(
            done, x="tau", y="alpha", hue="value", hue_norm=norm, palette="cividis", s=70, edgecolor="black", **common
        )
        fig.colorbar(ScalarMappable(norm, "cividis"), ax=ax, label=f"{search.objective} ({search.direction})")
        ax.set(ylabel="α (weight of the soft term)")
        what = "the τ × α plane"
    else:
        sns.scatterplot(done, x="tau", y="value", color=style.palette(["trial"])["trial"], s=50, **common)
        ax.set(ylabel=f"{search.objective} ({search.direction})")
        what = "τ"
    # the best trial, starred
    y = done.loc[pick, "alpha" if plane else "value"]
    ax.scatter(done.loc[pick, "tau"], y, marker="*", s=380, facecolor="none", edgecolor="black", lw=1.5)
    ax.set_xscale("log")
    style.log_ticks(ax.xaxis)
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


FIGURES = [
    FigureSpec(
        "search_history",
        "Optimisation history: the objective of every completed trial and the best so far; pruned and failed "
        "trials marked below.",
        (),
        search_history,
    ),
    FigureSpec(
        "search_importance",
        "Parameter importances: Optuna's fANOVA when the study's journal is there, else the share of variance "
        "explained (η²) from the trials table.",
        (),
        search_importance,
    ),
    FigureSpec(
        "search_space",
        "The objective over the searched τ (× α) space, one point per completed trial, the best starred.",
        (),
        search_space,
    ),
]
