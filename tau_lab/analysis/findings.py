"""The report's findings: sentences computed from a run's tables, each with the uncertainty the seeds allow.

- a "best" setting is compared with every other one by paired differences over seeds (members of one
  seed share initial weights and data order): the mean difference and its 95% t-interval; an interval
  that covers 0 is reported as "not distinguishable", and a best at the edge of the τ grid is flagged;
- a best is picked on the seeds that measure its lead, which flatters it (the winner's curse): from three
  seeds up, its lead is also measured leaving one seed out (``held_out_advantage``);
- with a single seed no interval is possible, and no setting is called best;
- trends describe the curve's shape over τ (an interior minimum or maximum, where), not only its ends;
- "gradients vanished" is judged over a window of logged steps, not from the last batch;
- each task gets a finding on its headline metric (probe/k-NN accuracy, zero-shot accuracy, recall,
  student accuracy), found by the columns of the members table, per value of the grid's other axes;
- where a grid axis varies (lr, batch size, …), whether the best fixed τ of a headline metric moves with it:
  each seed's best τ compared across the axis's values, and what the best τ of one value costs at another,
  both paired by seed (``tau_shift``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from tau_lab.analysis import distill, headline
from tau_lab.analysis.tables import (
    compare_to_best,
    finished,
    grid_axes,
    held_out_advantage,
    over_seeds,
    paired_interval,
    shape,
)

LEVEL = 0.95  # of the paired t-intervals
VANISHED = 1e-6  # a gradient norm below this at every step of the window: the member has stopped learning
WINDOW = 10  # logged steps judged for vanished gradients (with log_every = 100, the last 1000 steps)
NAMED = 3  # indistinguishable settings named in full; the rest are counted
TAU = ["tau_mode", "tau_init"]
# The headline metrics a best-τ finding is made for, found by their columns; distillation's (student accuracy)
# has its own finding, ``_best_students``, over T, α and T² together.
HEADLINES = [(h.column, h.name, h.lower) for h in headline.HEADLINES if "distill" not in h.tasks]
# Where a task has a projection head (simclr, clip) its geometry is measured in both spaces: ".z" the projection
# the loss reads, ".h" the encoder output the probes read; tasks without one keep the plain names.
SPACES = {"": "", ".z": " of the projection z", ".h": " of the encoder output h"}
GEOMETRY = [  # column, what it is, lower is better (quadrants' headline, and the contrastive tasks' geometry)
    *((f"uniformity{s}", f"uniformity{text}", True) for s, text in SPACES.items()),
    *((f"alignment{s}", f"alignment{text} (closeness of positives)", True) for s, text in SPACES.items()),
]
TRENDS = [
    *((f"tolerance{s}", f"Same-class similarity{text} (tolerance)") for s, text in SPACES.items()),
    ("cross_similarity", "Cross-class similarity"),
]
AXIS_WORDS = {
    "alpha": "α",
    "labeled_fraction": "labelled fraction",
    "batch_size": "batch size",
}  # axes named in words; others by their key
DISTILL_COLUMNS = {"accuracy", "alpha", "t2_scaling", "labeled_fraction", "kl_teacher", "ece", "tau"}


def number(x: float) -> str:
    """Three decimals in the usual range, scientific notation outside it."""
    return f"{x:.3f}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def mean_sd(mean: float, sd: float, seeds: int) -> str:
    """``mean ± sd``, or the mean alone for one seed."""
    return number(mean) if seeds < 2 or pd.isna(sd) else f"{number(mean)} ± {number(sd)}"


def where(mode: str, tau_init: float, final_tau: float | None = None, symbol: str = "τ") -> str:
    """Where a member sits on the τ axis: ``τ = 0.05 (fixed)`` or ``τ = 0.5 → 0.377 (learnable)``."""
    if mode == "fixed" or final_tau is None or pd.isna(final_tau):
        return f"{symbol} = {tau_init:g} ({mode})"
    return f"{symbol} = {tau_init:g} → {final_tau:.3g} ({mode})"


def mode_order(members: pd.DataFrame) -> list[str]:
    """The τ modes in the order the sweep declared them (the members table's order)."""
    return list(dict.fromkeys(members["tau_mode"]))


def axis_text(axis: str, value: object) -> str:
    """A grid axis at one value, in words: ``α = 0.9``, ``with T²``, ``caption_noise = 0.3``."""
    if axis == "t2_scaling":
        return "with T²" if value else "without T²"
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{AXIS_WORDS.get(axis, axis)} = {shown}"


def _contexts(ok: pd.DataFrame, within: list[str]) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(text, part)`` per combination of the ``within`` axes that vary (one ``("", ok)`` when none does)."""
    within = [a for a in within if ok[a].nunique() > 1]
    if not within:
        yield "", ok
        return
    for key, part in ok.groupby(within, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield ", ".join(axis_text(a, v) for a, v in zip(within, key, strict=True)) + ": ", part


def _final_tau(ok: pd.DataFrame, by: list[str]) -> pd.Series:
    """The mean final τ per setting (for learnable and scheduled members, where they ended)."""
    if "tau" not in ok.columns:
        return pd.Series(dtype=float)
    return over_seeds(ok, by, ["tau"]).set_index(by)["tau_mean"]


def _setting_text(row: pd.Series, by: list[str], final: pd.Series, symbol: str = "τ") -> str:
    key = tuple(row[b] for b in by)
    text = where(row["tau_mode"], row["tau_init"], final.get(key if len(by) > 1 else key[0]), symbol)
    extra = [b for b in by if b not in TAU]
    return text + "".join(f", {axis_text(b, row[b])}" for b in extra)


def _edge(part: pd.DataFrame, best: pd.Series, symbol: str) -> str:
    """A flag when the best setting's initial τ is the largest or smallest its mode tried."""
    taus = part.loc[part["tau_mode"] == best["tau_mode"], "tau_init"].unique()
    if len(taus) < 2:
        return ""
    if best["tau_init"] == taus.max():
        return f" Best at the largest {symbol} tried ({best['tau_mode']}): extend the grid."
    if best["tau_init"] == taus.min():
        return f" Best at the smallest {symbol} tried ({best['tau_mode']}): extend the grid."
    return ""


def paired_sentence(table: pd.DataFrame, by: list[str], final: pd.Series, symbol: str = "τ") -> str:
    """The paired comparisons of ``compare_to_best``'s table, as a sentence about its best row."""
    others = table[~table["best"]]
    if others.empty:
        return "No other setting to compare with."
    known = others[others["distinguishable"].notna()]
    unknown = len(others) - len(known)
    close = known[~known["distinguishable"].astype(bool)]
    parts = []
    if not close.empty:
        named = [
            f"{_setting_text(r, by, final, symbol)} (Δ = {number(r['delta'])}, "
            f"[{number(r['low'])}, {number(r['high'])}], {r['pairs']} seeds)"
            for _, r in close.head(NAMED).iterrows()
        ]
        more = f" and {len(close) - NAMED} more" if len(close) > NAMED else ""
        parts.append(f"not distinguishable from {'; '.join(named)}{more}")
    apart = len(known) - len(close)
    if apart:
        if close.empty and not unknown:
            nearest = known.iloc[0]
            parts.append(
                f"distinguishable from {f'all {apart} other settings' if apart > 1 else 'the other setting'} "
                f"(closest: {_setting_text(nearest, by, final, symbol)}"
                f", Δ = {number(nearest['delta'])}, [{number(nearest['low'])}, {number(nearest['high'])}])"
            )
        else:
            parts.append(f"distinguishable from {apart} of the other {len(others)}")
    if unknown:
        parts.append(f"no interval against {unknown} setting{'s' * (unknown > 1)} sharing fewer than two seeds")
    return f"Paired by seed (Δ = best − other, mean and {LEVEL:.0%} t-interval): " + "; ".join(parts) + "."


def tied(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``compare_to_best``'s table equal to the best on every one of (at least two) shared seeds:
    the same numbers, such as every T at α = 0 (no soft term) or a saturated recall of 1."""
    others = table[~table["best"]]
    same = others[["delta", "low", "high"]].abs().max(axis=1, skipna=False) <= 1e-12
    return others[same & (others["pairs"] >= 2)]


def _tie_text(ties: pd.DataFrame, by: list[str], final: pd.Series, symbol: str) -> str:
    if ties.empty:
        return ""
    named = "; ".join(_setting_text(r, by, final, symbol) for _, r in ties.head(NAMED).iterrows())
    more = f" and {len(ties) - NAMED} more" if len(ties) > NAMED else ""
    return f" Tied seed for seed with {named}{more}: the best is not unique."


def best_finding(
    part: pd.DataFrame, metric: str, name: str, lower: bool, by: list[str], prefix: str = "", symbol: str = "τ"
) -> str | None:
    """The setting with the best mean ``metric``, compared with each other one by paired differences.

    With one seed per setting (no pair of seeds anywhere), no interval is possible: the sentence says so
    and names no best.
    """
    table = compare_to_best(part, metric, by, lower, LEVEL)
    if table.empty:
        return None
    final = _final_tau(part, by)
    best = table.iloc[0]
    direction = "lower" if lower else "higher"
    if table["seeds"].max() < 2 or (len(table) > 1 and (table["pairs"].iloc[1:] < 2).all()):
        extreme = "lowest" if lower else "highest"
        why = (
            "one seed per setting"
            if table["seeds"].max() < 2
            else f"the {extreme} setting shares fewer than two finished seeds with every other"
        )
        return (
            f"{prefix}{name[0].upper() + name[1:]} ({direction} is better): {why}, so no interval is possible and "
            f"no setting is called best (the {extreme} mean, {number(best['mean'])}, is at "
            f"{_setting_text(best, by, final, symbol)})."
        )
    ties = tied(table)
    if len(table) > 1 and len(ties) == len(table) - 1:
        return (
            f"{prefix}{name[0].upper() + name[1:]} is {number(best['mean'])} at all {len(table)} settings, "
            "seed for seed: no setting is better."
        )
    label = f"{'Lowest' if lower else 'Highest'} (best) {name}"
    head = (
        f"{prefix}{label} {mean_sd(best['mean'], best['sd'], best['seeds'])} at "
        f"{_setting_text(best, by, final, symbol)} (over {best['seeds']} seeds)."
    )
    rest = paired_sentence(table.drop(ties.index), by, final, symbol)
    edge = "" if len(ties) else _edge(part, best, symbol)
    return f"{head}{_tie_text(ties, by, final, symbol)} {rest}{_held_out_text(part, metric, by, lower)}{edge}"


def _held_out_text(part: pd.DataFrame, metric: str, by: list[str], lower: bool) -> str:
    """The best's lead on seeds it was not chosen on (``held_out_advantage``), from three seeds up."""
    mean, low, high, n = held_out_advantage(part, metric, by, lower, LEVEL)
    if n < 3:
        return ""
    verdict = "not confirmed on held-out seeds" if low <= 0 else "confirmed on held-out seeds"
    return (
        f" Leaving one seed out ({n} seeds: best and runner-up chosen on the others, measured on it), the best's "
        f"lead is {mean:+.3f} [{low:+.3f}, {high:+.3f}] (> 0 favours the best): {verdict}."
    )


def _interval_text(mean: float, low: float, high: float, pairs: int) -> str:
    """``+0.301 [+0.120, +0.482] (3 seeds, distinguishable from 0)``: "not distinguishable" when it covers 0."""
    if pairs < 2 or np.isnan(low):
        return f"{mean:+.3f} ({pairs} seed{'s' * (pairs != 1)}: no interval)"
    verdict = "not distinguishable from 0" if low <= 0 <= high else "distinguishable from 0"
    return f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] ({pairs} seeds, {verdict})"


def tau_shift(part: pd.DataFrame, axis: str, metric: str, name: str, lower: bool, prefix: str = "") -> str | None:
    """Whether the best fixed τ of ``metric`` moves with the grid axis ``axis`` (the τ × axis interaction).

    Fixed members only. Per value ``a`` of the axis, the best τ is ``τ*(a)``, the best mean over seeds, and
    per seed ``s`` its own best ``τ*_s(a)`` (ties to the smaller τ). Each value after the first (``a₀``) is
    compared with ``a₀``, paired by seed (``paired_interval``, a 95% t-interval):

    - the shift ``log10 τ*_s(a) − log10 τ*_s(a₀)``: whether the optimum moves (0: it stays);
    - the difference ``m_s(τ*(a), a) − m_s(τ*(a₀), a)`` of the metric at ``a``, its own best τ against ``a₀``'s:
      what keeping ``a₀``'s best τ loses at ``a`` (when the two best τ differ).

    Both are read with the caveat that a best τ is picked on the same seeds that measure it.
    """
    fixed = part[part["tau_mode"] == "fixed"]
    fixed = fixed[np.isfinite(fixed[metric].astype(float))]
    values = sorted(fixed[axis].unique())
    if len(values) < 2 or fixed["tau_init"].nunique() < 2:
        return None
    raw = fixed.groupby([axis, "seed", "tau_init"])[metric].mean()  # [axis value, seed, τ]
    better = -raw if lower else raw  # higher is better from here
    best_by_seed = np.log10(better.groupby(level=[0, 1]).idxmax().map(lambda key: key[2]).astype(float))
    means = better.groupby(level=[0, 2]).mean()
    best = {a: float(means.xs(a, level=0).idxmax()) for a in values}
    a0 = values[0]
    head = ", ".join(f"{best[a]:g} at {axis_text(axis, a)}" for a in values)
    parts = []
    for a in values[1:]:
        shift = paired_interval(best_by_seed.xs(a, level=0), best_by_seed.xs(a0, level=0))
        text = f"{axis_text(axis, a)} against {axis_text(axis, a0)}: Δ log10(best τ) {_interval_text(*shift)}"
        if best[a] == best[a0]:
            parts.append(f"{text}, and the same best τ in the mean")
            continue
        own, carried = (raw.xs(a, level=0).xs(best[b], level="tau_init") for b in (a, a0))
        difference = _interval_text(*paired_interval(own, carried))
        parts.append(f"{text}; at {axis_text(axis, a)}, {name} at τ = {best[a]:g} − at τ = {best[a0]:g}: {difference}")
    return (
        f"{prefix}Best fixed τ of {name} by {AXIS_WORDS.get(axis, axis)} (mean over seeds): {head}. Does it move? "
        f"Paired by seed ({LEVEL:.0%} t-intervals): " + "; ".join(parts) + "."
    )


def trend(part: pd.DataFrame, metric: str, name: str, prefix: str = "") -> str | None:
    """How ``metric`` changes over τ for the first swept mode (the mean over seeds at each τ): its ends,
    and an interior minimum or maximum when the curve has one."""
    modes = [m for m in mode_order(part) if part.loc[part["tau_mode"] == m, "tau_init"].nunique() >= 2]
    if not modes:
        return None
    table = over_seeds(part[part["tau_mode"] == modes[0]], ["tau_init"], [metric]).dropna(subset=[f"{metric}_mean"])
    if len(table) < 2:
        return None
    s = shape(table.set_index("tau_init")[f"{metric}_mean"])
    a, b = number(s["high"]), number(s["low"])
    seeds = int(table["seeds"].max())
    over = f"{modes[0]}, mean over {seeds} seed{'s' * (seeds > 1)}"
    if a == b and s["monotone"]:
        return f"{prefix}{name} stays at {a} from τ = {s['high_tau']:g} to τ = {s['low_tau']:g} ({over})."
    verb = "rises" if s["low"] > s["high"] else "falls" if s["low"] < s["high"] else "ends where it starts"
    sentence = f"{prefix}{name} {verb} from {a} at τ = {s['high_tau']:g} to {b} at τ = {s['low_tau']:g} ({over})"
    turns = [
        f"{kind} {number(s[kind[:3]])} at τ = {s[kind[:3] + '_tau']:g}"
        for kind in ("minimum", "maximum")
        if s[f"interior_{kind[:3]}"]
    ]
    if turns:
        return f"{sentence}, not monotonically: interior {' and '.join(turns)}."
    return f"{sentence}{', monotonically' if len(table) > 2 else ''}."


def vanished(metrics: pd.DataFrame, window: int = WINDOW) -> pd.DataFrame:
    """Per member, the largest gradient norm over its last ``window`` logged steps: ``member``,
    ``first_step``, ``last_step``, ``window_max``, ``final`` and ``vanished`` (``window_max < VANISHED``)."""
    grads = metrics[metrics["metric"] == "grad_norm"].sort_values(["member", "step"])
    last = grads.groupby("member").tail(window).groupby("member")
    out = last.agg(first_step=("step", "min"), last_step=("step", "max"), window_max=("value", "max"))
    out["final"] = last["value"].last()
    return out.assign(vanished=out["window_max"] < VANISHED).reset_index()


def _vanished_sentence(ok: pd.DataFrame, metrics: pd.DataFrame | None) -> str | None:
    if metrics is not None and "grad_norm" in set(metrics["metric"]):
        judged = vanished(metrics[metrics["member"].isin(ok["member"])])
        gone = judged[judged["vanished"]]
        how = f"gradient norm < {VANISHED:g} at each of the last {WINDOW} logged steps" + (
            f", steps {int(judged['first_step'].min())}–{int(judged['last_step'].max())}" if len(judged) else ""
        )
        late = judged[(judged["final"] < VANISHED) & ~judged["vanished"]]
    elif "grad_norm" in ok.columns:
        gone = ok.loc[ok["grad_norm"] < VANISHED, ["member"]]
        how = f"last logged gradient norm < {VANISHED:g}; no metrics table to judge a window of steps"
        late = gone.iloc[:0]
    else:
        return None
    sentences = []
    if not gone.empty:
        rows = ok[ok["member"].isin(gone["member"])]
        flagged = ok.assign(gone=ok["member"].isin(gone["member"]))
        counts = flagged.groupby(TAU, sort=False)["gone"].agg(["sum", "count"])
        places = [
            f"{mode} τ = {tau:g} ({n} of {m})"
            for mode in mode_order(rows)
            for (row_mode, tau), (n, m) in counts.sort_index(ascending=[True, False]).iterrows()
            if row_mode == mode and n > 0
        ]
        sentences.append(
            f"Gradients vanished ({how}) for {len(gone)} of {len(ok)} finished members: {'; '.join(places)}."
        )
    if not late.empty:
        sentences.append(
            f"{len(late)} more finished with a gradient norm < {VANISHED:g} on the last batch but reached "
            f"{number(late['window_max'].max())} within the last {WINDOW} logged steps: not vanished."
        )
    return " ".join(sentences) or None


def _best_students(members: pd.DataFrame) -> list[str]:
    """Per labelled fraction, the distillation setting with the best mean validation accuracy, paired against the
    others on validation, and its test accuracy (a run without a validation split is compared on test, and says so).
    """
    out = []
    ok = finished(members)
    chosen_on = "val_accuracy" if "val_accuracy" in ok.columns else "accuracy"
    for fraction, part in ok.groupby("labeled_fraction", sort=True):
        table = compare_to_best(part, chosen_on, distill.SETTING, False, LEVEL)
        final = _final_tau(part, distill.SETTING)
        best = table.iloc[0]
        t_text = where(best["tau_mode"], best["tau_init"], final.get(tuple(best[distill.SETTING])), "T")
        t2 = "with" if best["t2_scaling"] else "without"
        seeds = int(best["seeds"])
        where_best = f"{t_text}, α = {best['alpha']:g}, {t2} T²"
        test = part.loc[(part[distill.SETTING] == best[distill.SETTING]).all(axis=1), "accuracy"]
        if seeds < 2:
            out.append(
                f"Labelled fraction {fraction:g}: one seed, so no interval is possible and no student is called best "
                f"(the highest {chosen_on.replace('_', ' ')}, {number(best['mean'])}, is at {where_best})."
            )
            continue
        if chosen_on == "val_accuracy":
            head = (
                f"Best student at labelled fraction {fraction:g}, chosen on validation accuracy "
                f"({mean_sd(best['mean'], best['sd'], seeds)}): test accuracy "
                f"{mean_sd(test.mean(), test.std(), seeds)} (over {seeds} seeds) at {where_best}."
            )
        else:
            head = (
                f"Best student at labelled fraction {fraction:g} (this run has no validation split, so it is chosen "
                f"on test): accuracy {mean_sd(best['mean'], best['sd'], seeds)} (over {seeds} seeds) at {where_best}."
            )
        ties = tied(table)
        rest = paired_sentence(table.drop(ties.index), distill.SETTING, final, "T")
        edge = "" if len(ties) else _edge(part, best, "T")
        out.append(f"{head}{_tie_text(ties, distill.SETTING, final, 'T')} {rest}{edge}")
    return out


def _gradient_slopes(members: pd.DataFrame) -> list[str]:
    """The log–log slope of the soft gradient at init against T, per T² setting (``distill.loglog_slopes``)."""
    fixed = members[members["tau_mode"] == "fixed"]
    if fixed["tau_init"].nunique() < 2:
        return []
    min_T = distill.slope_min_T(fixed["tau_init"])
    table = distill.loglog_slopes(members, "grad_soft_params_init", min_T).sort_values("t2_scaling")
    parts = [
        f"{r['slope_mean']:+.2f}".replace("-", "−")
        + ("" if pd.isna(r["slope_sd"]) else f" ± {r['slope_sd']:.2f}")
        + f" {'with' if r['t2_scaling'] else 'without'} T²"
        for _, r in table.iterrows()
    ]
    if not parts:
        return []
    return [
        f"Log–log slope of the soft term's gradient at initialisation against T (T ≥ {min_T:g}, fitted per seed, "
        f"mean ± sd): {'; '.join(parts)}; theory for large T: −2 without T², 0 with it."
    ]


def findings(members: pd.DataFrame, metrics: pd.DataFrame | None = None) -> list[str]:
    """Short findings, each computed from the members table (and the metrics table, for vanished
    gradients); diverged and pruned members are counted but left out of the metrics."""
    out = []
    total, bad = len(members), members[members["status"] != "ok"]
    if bad.empty:
        out.append(f"None of the {total} members diverged.")
    else:
        places = [
            f"{where(r.tau_mode, r.tau_init)} seed {r.seed}"
            + (f" at step {r.diverged_step}" if not pd.isna(r.diverged_step) else f" ({r.status})")
            for r in bad.itertuples(index=False)
        ]
        what = "diverged" if (bad["status"] == "diverged").all() else "stopped early (diverged or pruned)"
        out.append(f"{len(bad)} of {total} members {what}: {'; '.join(places)}. Their metrics are left out.")
    ok = finished(members)
    if ok.empty:
        return out
    within = grid_axes(ok)
    if set(ok.columns) >= DISTILL_COLUMNS:
        out += _best_students(members)
    for metric, name, lower in [*HEADLINES, *GEOMETRY]:
        if metric in ok.columns:
            for prefix, part in _contexts(ok, within):
                if sentence := best_finding(part, metric, name, lower, TAU, prefix):
                    out.append(sentence)
    for axis in within:  # the τ × axis interactions, within each combination of the other axes
        for metric, name, lower in HEADLINES:
            if metric in ok.columns:
                for prefix, part in _contexts(ok, [a for a in within if a != axis]):
                    if sentence := tau_shift(part, axis, metric, name, lower, prefix):
                        out.append(sentence)
    for metric, name in TRENDS:
        if metric in ok.columns:
            for prefix, part in _contexts(ok, within):
                if sentence := trend(part, metric, name, prefix):
                    out.append(sentence)
    learnable = ok[ok["tau_mode"] == "learnable"]
    if not learnable.empty and "tau" in ok.columns:
        table = over_seeds(learnable, ["tau_init"], ["tau"]).sort_values("tau_init", ascending=False)
        moves = [
            f"{r['tau_init']:g} → {r['tau_mean']:.3g}" + ("" if r["seeds"] < 2 else f" ± {r['tau_sd']:.3g}")
            for _, r in table.iterrows()
        ]
        rose = int((table["tau_mean"] > table["tau_init"]).sum())
        out.append(f"Learnable τ, start → end: {', '.join(moves)}; it rose from {rose} of {len(table)} starts.")
    if {"grad_soft_params_init", "t2_scaling"} <= set(ok.columns):
        out += _gradient_slopes(members)
    if sentence := _vanished_sentence(ok, metrics):
        out.append(sentence)
    return out
