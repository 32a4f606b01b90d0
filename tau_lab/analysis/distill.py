"""The tables that answer a distillation study, from its members table (pure DataFrame → DataFrame).

A distillation member is a setting ``SETTING`` (τ mode, T₀ = ``tau_init``, α, T² scaling) at a
labelled fraction and a seed; members that share a seed share the student's initial weights, the
labelled subset and the order of batches, so differences between settings are paired by seed.

Every table that picks a setting (a best T, α, T²) picks it on ``val_accuracy``, the accuracy on a
validation split carved from the training images, and reports the chosen setting's ``accuracy`` on
the test split: the test images never decide what is reported on them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tau_lab.analysis.tables import over_seeds, paired_interval

SETTING = ["tau_mode", "tau_init", "alpha", "t2_scaling"]  # what a member is, apart from its seed


def _by_choice(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (an ``over_seeds`` table) in the order a setting is chosen: highest mean validation
    accuracy first; ties (one validation image is 0.37 points) go to the lower mean KL to the teacher."""
    return table.sort_values(["val_accuracy_mean", "kl_teacher_mean"], ascending=[False, True], kind="stable")


def best_students(members: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Per labeled fraction, the ``top`` settings by mean validation accuracy (ties: lower KL to the
    teacher), with their test ``accuracy`` beside it, mean and sd over seeds."""
    table = over_seeds(
        members, ["labeled_fraction", *SETTING], ["val_accuracy", "accuracy", "kl_teacher", "ece", "tau"]
    )
    return (
        _by_choice(table)
        .groupby("labeled_fraction", sort=True)
        .head(top)
        .sort_values("labeled_fraction", kind="stable")
    )


def accuracy_by_T(members: pd.DataFrame) -> pd.DataFrame:
    """Mean test accuracy over seeds of the fixed-T students: a row per fraction, α and T² setting, a
    column per T; then ``val_best_T``, the T of the best mean validation accuracy in that row, and
    ``accuracy_at_val_best``, the test accuracy there (what the row's choice of T delivers)."""
    fixed = members[members["tau_mode"] == "fixed"]
    row = ["labeled_fraction", "alpha", "t2_scaling"]
    table = over_seeds(fixed, [*row, "tau_init"], ["accuracy", "val_accuracy", "kl_teacher"])
    wide = table.pivot(index=row, columns="tau_init", values="accuracy_mean")
    chosen = _by_choice(table).groupby(row).head(1).set_index(row)
    wide["val_best_T"] = chosen["tau_init"]
    wide["accuracy_at_val_best"] = chosen["accuracy_mean"]
    wide.columns.name = None
    return wide.reset_index()


def _by_seed(part: pd.DataFrame, setting: tuple, column: str = "accuracy") -> pd.Series:
    """``column`` of one setting (``SETTING`` values) per seed."""
    return part.set_index(SETTING).loc[[setting]].groupby("seed")[column].mean()


def teacher_gain(members: pd.DataFrame, default: tuple[float, float] = (4.0, 0.9), level: float = 0.95) -> pd.DataFrame:
    """What the teacher adds over α = 0 (plain supervised training), per labeled fraction, paired by seed.

    Two distilled students per fraction: the fixed-T setting with the best mean *validation*
    accuracy (ties: lower KL to the teacher), and the common default (T, α) = ``default`` with T².
    Both are reported on the test set: the gain is ``accuracy(distilled) − accuracy(α = 0)`` for the
    same seed, its mean, sd and ``level`` t-interval over seeds (``gain_low``, ``gain_high``; NaN with one seed).
    """
    ok = members[(members["status"] == "ok") & (members["tau_mode"] == "fixed")]
    rows = []
    for fraction, part in ok.groupby("labeled_fraction", sort=True):
        alone = part[part["alpha"] == 0].groupby("seed")["accuracy"].mean()  # every T gives the same student
        distilled = part[part["alpha"] > 0]
        ranked = _by_choice(over_seeds(distilled, SETTING, ["val_accuracy", "kl_teacher"]))
        settings = list(ranked[SETTING].itertuples(index=False, name=None))
        picks = {"best on validation": settings[0], "default": ("fixed", *default, True)}
        for label, setting in picks.items():
            if setting not in settings:  # the default is not in this grid
                continue
            chosen = _by_seed(distilled, setting)
            gain = chosen - alone.reindex(chosen.index)
            mean, low, high, _ = paired_interval(chosen, alone, level)
            rows.append(
                {"labeled_fraction": fraction, "student": label, **dict(zip(SETTING, setting, strict=True))}
                | {"val_accuracy_mean": _by_seed(distilled, setting, "val_accuracy").mean()}
                | {"alone_mean": alone.mean(), "alone_sd": alone.std()}
                | {"accuracy_mean": chosen.mean(), "accuracy_sd": chosen.std()}
                | {"gain_mean": mean, "gain_sd": gain.std(), "gain_low": low, "gain_high": high, "seeds": len(gain)}
            )
    return pd.DataFrame(rows)


def gain_by_T(members: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Is it the softening? Per fraction, α > 0 and T² setting, each fixed T's test-accuracy gain over
    α = 0 (``gain_*``) and its difference from T = 1 (``vs_T1_*``, no softening), both paired by seed:
    mean and ``level`` t-interval. A T > 1 that helps through softening has a ``vs_T1`` interval above 0."""
    ok = members[(members["status"] == "ok") & (members["tau_mode"] == "fixed")]
    rows = []
    for fraction, part in ok.groupby("labeled_fraction", sort=True):
        alone = part[part["alpha"] == 0].groupby("seed")["accuracy"].mean()
        distilled = part[part["alpha"] > 0]
        for (alpha, t2), group in distilled.groupby(["alpha", "t2_scaling"], sort=True):
            per_T = group.groupby(["tau_init", "seed"])["accuracy"].mean()
            at_one = per_T.xs(1.0, level="tau_init") if 1.0 in per_T.index.get_level_values(0) else None
            for T in sorted(group["tau_init"].unique()):
                acc = per_T.xs(T, level="tau_init")
                gain = paired_interval(acc, alone, level)
                vs = paired_interval(acc, at_one, level) if at_one is not None else (np.nan,) * 4
                rows.append(
                    {"labeled_fraction": fraction, "alpha": alpha, "t2_scaling": t2, "T": T}
                    | {"accuracy_mean": acc.mean(), "gain_mean": gain[0], "gain_low": gain[1], "gain_high": gain[2]}
                    | {"vs_T1_mean": vs[0], "vs_T1_low": vs[1], "vs_T1_high": vs[2], "seeds": gain[3]}
                )
    return pd.DataFrame(rows)


def learned_vs_fixed(members: pd.DataFrame) -> pd.DataFrame:
    """Each learnable, ctkd or scheduled setting next to the best fixed T for the same fraction, α and T²
    (best by mean validation accuracy): its final T and test accuracy, the chosen fixed T and its test
    accuracy (mean and sd over seeds). α = 0 is left out: without a soft term, T changes nothing."""
    context = ["labeled_fraction", "alpha", "t2_scaling"]
    table = over_seeds(
        members[members["alpha"] > 0],
        [*context, "tau_mode", "tau_init"],
        ["accuracy", "val_accuracy", "kl_teacher", "tau"],
    )
    fixed = _by_choice(table[table["tau_mode"] == "fixed"])
    best = fixed.groupby(context).head(1).set_index(context)[["tau_init", "accuracy_mean", "accuracy_sd"]]
    best.columns = ["best_fixed_T", "best_fixed_accuracy_mean", "best_fixed_accuracy_sd"]
    return table[table["tau_mode"] != "fixed"].join(best, on=context).reset_index(drop=True)


def gradient_scale(members: pd.DataFrame, when: str = "init") -> pd.DataFrame:
    """The soft term's gradient norms per T and T² setting (fixed members), at ``init`` (step 0) or at
    the ``end`` of the run, with their ratio to the same member's hard-term gradient and to T = 1."""
    suffix = "_init" if when == "init" else ""
    columns = {f"grad_soft_logits{suffix}": "soft_logits", f"grad_soft_params{suffix}": "soft_params"}
    fixed = members[members["tau_mode"] == "fixed"].rename(columns=columns)
    fixed = fixed.assign(soft_over_hard=fixed["soft_params"] / fixed[f"grad_hard_params{suffix}"])
    table = over_seeds(fixed, ["t2_scaling", "tau_init"], ["soft_logits", "soft_params", "soft_over_hard"])
    at_one = table[table["tau_init"] == 1.0].set_index("t2_scaling")["soft_params_mean"]
    return table.assign(soft_params_vs_T1=table["soft_params_mean"] / table["t2_scaling"].map(at_one))


def slope_min_T(taus: pd.Series) -> float:
    """The low end of the log–log fit: T ≥ 4 (where the large-T law holds) when two such T exist, else every T."""
    distinct = sorted(taus.unique())
    return 4.0 if sum(t >= 4.0 for t in distinct) >= 2 else float(distinct[0])


def loglog_slopes(members: pd.DataFrame, column: str = "grad_soft_params_init", min_T: float = 4.0) -> pd.DataFrame:
    """Slope of ``log column`` against ``log T`` over fixed members with T ≥ ``min_T``, fitted per seed
    and T² setting; mean and sd over seeds. Theory for large T: −2 without T², 0 with it."""
    fixed = members[(members["tau_mode"] == "fixed") & (members["tau_init"] >= min_T) & (members["status"] == "ok")]
    slopes = [
        {"t2_scaling": t2, "seed": seed, "slope": np.polyfit(np.log(g["tau_init"]), np.log(g[column]), 1)[0]}
        for (t2, seed), g in fixed.groupby(["t2_scaling", "seed"])
        if g["tau_init"].nunique() >= 2
    ]
    table = pd.DataFrame(slopes, columns=["t2_scaling", "seed", "slope"]).groupby("t2_scaling")["slope"]
    out = table.agg(["mean", "std", "size"]).reset_index()
    return out.rename(columns={"mean": "slope_mean", "std": "slope_sd", "size": "seeds"}).assign(
        column=column, min_T=min_T
    )


def local_slopes(members: pd.DataFrame, column: str = "grad_soft_params_init") -> pd.DataFrame:
    """Where the large-T law starts: the log–log slope of ``column`` between each pair of consecutive
    fixed T, ``log(g(T₂)/g(T₁)) / log(T₂/T₁)``, per seed and T² setting; mean and sd over seeds, one row
    per (t2_scaling, T₁, T₂). At initialisation the members with and without T² share their weights,
    so ``g_with = T² · g_without`` and every slope with T² is the slope without plus exactly 2."""
    fixed = members[(members["tau_mode"] == "fixed") & (members["status"] == "ok")]
    rows = []
    for (t2, _seed), g in fixed.groupby(["t2_scaling", "seed"]):
        curve = g.groupby("tau_init")[column].mean().sort_index()
        T, value = np.log(curve.index.to_numpy()), np.log(curve.to_numpy())
        for i in range(len(T) - 1):
            slope = (value[i + 1] - value[i]) / (T[i + 1] - T[i])
            rows.append({"t2_scaling": t2, "T_from": curve.index[i], "T_to": curve.index[i + 1], "slope": slope})
    table = pd.DataFrame(rows, columns=["t2_scaling", "T_from", "T_to", "slope"])
    out = table.groupby(["t2_scaling", "T_from", "T_to"])["slope"].agg(["mean", "std", "size"]).reset_index()
    return out.rename(columns={"mean": "slope_mean", "std": "slope_sd", "size": "seeds"}).assign(column=column)


def summary_tables(members: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables that answer a distillation study, those its members table can fill. The tables that
    choose a setting need ``val_accuracy`` (runs before the validation split have none: they are left
    out rather than chosen on the test set)."""
    out = {}
    swept = {c: members[c].nunique() > 1 for c in ("alpha", "labeled_fraction")}
    can_choose = "val_accuracy" in members.columns
    if swept["alpha"] and can_choose:
        out["best students by validation accuracy (test accuracy at T = 1, mean and sd over seeds)"] = best_students(
            members
        )
        out["test accuracy of fixed-T students (mean over seeds), by T; T chosen on validation"] = accuracy_by_T(
            members
        )
    if swept["alpha"] and (members["alpha"] == 0).any() and can_choose:
        out["teacher's gain over α = 0, paired by seed (chosen on validation, measured on test)"] = teacher_gain(
            members
        )
        out["gain by T, and against T = 1 (no softening), paired by seed"] = gain_by_T(members)
    if (members["tau_mode"] != "fixed").any() and can_choose:
        out["learned and scheduled T against the best fixed T (chosen on validation)"] = learned_vs_fixed(members)
    columns = set(members.columns)
    if {"grad_soft_logits_init", "grad_soft_params_init", "grad_hard_params_init"} <= columns:
        out["soft-term gradient norm at initialisation"] = gradient_scale(members, "init")
    if {"grad_soft_logits_init", "grad_soft_params_init"} <= columns:
        out["log-log slope of the soft gradient against T (T ≥ 4)"] = pd.concat(
            [loglog_slopes(members, c) for c in ("grad_soft_params_init", "grad_soft_logits_init")]
        )
        out["local log-log slope between consecutive T (with T² = without + 2)"] = pd.concat(
            [local_slopes(members, c) for c in ("grad_soft_params_init", "grad_soft_logits_init")]
        )
    return out
