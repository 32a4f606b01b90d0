"""The tables that answer a distillation study, from its members table (pure DataFrame → DataFrame).

A distillation member is a setting ``SETTING`` (τ mode, T₀ = ``tau_init``, α, T² scaling) at a
labelled fraction and a seed; members that share a seed share the student's initial weights, the
labelled subset and the order of batches, so differences between settings are paired by seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tau_lab.analysis.tables import over_seeds

SETTING = ["tau_mode", "tau_init", "alpha", "t2_scaling"]  # what a member is, apart from its seed


def best_students(members: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Per labeled fraction, the ``top`` settings by mean test accuracy (ties: lower KL to the teacher)."""
    table = over_seeds(members, ["labeled_fraction", *SETTING], ["accuracy", "kl_teacher", "ece", "tau"])
    table = table.sort_values(["accuracy_mean", "kl_teacher_mean"], ascending=[False, True])
    return table.groupby("labeled_fraction", sort=True).head(top).sort_values("labeled_fraction", kind="stable")


def accuracy_by_T(members: pd.DataFrame) -> pd.DataFrame:
    """Mean test accuracy over seeds of the fixed-T members: a row per fraction, α and T² setting, a column per T."""
    table = over_seeds(
        members[members["tau_mode"] == "fixed"], ["labeled_fraction", "alpha", "t2_scaling", "tau_init"], ["accuracy"]
    )
    return table.pivot(
        index=["labeled_fraction", "alpha", "t2_scaling"], columns="tau_init", values="accuracy_mean"
    ).reset_index()


def teacher_gain(members: pd.DataFrame, default: tuple[float, float] = (4.0, 0.9)) -> pd.DataFrame:
    """What the teacher adds over α = 0 (plain supervised training), per labeled fraction, paired by seed.

    Two distilled students per fraction: the fixed-T setting with the best mean accuracy (chosen on
    the test set, hence optimistic) and the common default (T, α) = ``default`` with T². Gains are
    the mean ± sd over seeds of ``accuracy(distilled) − accuracy(α = 0)`` for the same seed.
    """
    ok = members[(members["status"] == "ok") & (members["tau_mode"] == "fixed")]
    rows = []
    for fraction, part in ok.groupby("labeled_fraction", sort=True):
        alone = part[part["alpha"] == 0].groupby("seed")["accuracy"].mean()  # every T gives the same student
        distilled = part[part["alpha"] > 0]
        means = distilled.groupby(SETTING)["accuracy"].mean()
        picks = {"best": means.idxmax(), "default": ("fixed", *default, True)}
        for label, setting in picks.items():
            if setting not in means.index:  # the default is not in this grid
                continue
            chosen = distilled.set_index(SETTING).loc[[setting]].groupby("seed")["accuracy"].mean()
            gain = chosen - alone.reindex(chosen.index)
            rows.append(
                {"labeled_fraction": fraction, "student": label, **dict(zip(SETTING, setting, strict=True))}
                | {"alone_mean": alone.mean(), "alone_sd": alone.std()}
                | {"accuracy_mean": chosen.mean(), "accuracy_sd": chosen.std()}
                | {"gain_mean": gain.mean(), "gain_sd": gain.std(), "seeds": len(gain)}
            )
    return pd.DataFrame(rows)


def learned_vs_fixed(members: pd.DataFrame) -> pd.DataFrame:
    """Each learnable, ctkd or scheduled setting next to the best fixed T for the same fraction, α and T²:
    its final T and accuracy, the best fixed T and its accuracy (mean and sd over seeds). α = 0 is left
    out: without a soft term, T changes nothing."""
    context = ["labeled_fraction", "alpha", "t2_scaling"]
    table = over_seeds(members[members["alpha"] > 0], [*context, "tau_mode", "tau_init"], ["accuracy", "tau"])
    fixed = table[table["tau_mode"] == "fixed"].sort_values("accuracy_mean", ascending=False)
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


def summary_tables(members: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The tables that answer a distillation study, those its members table can fill."""
    out = {}
    swept = {c: members[c].nunique() > 1 for c in ("alpha", "labeled_fraction")}
    if swept["alpha"]:
        out["best students (accuracy at T = 1, mean and sd over seeds)"] = best_students(members)
        out["accuracy of fixed-T students (mean over seeds), by T"] = accuracy_by_T(members)
    if swept["alpha"] and (members["alpha"] == 0).any():
        out["teacher's gain over α = 0, paired by seed"] = teacher_gain(members)
    if (members["tau_mode"] != "fixed").any():
        out["learned and scheduled T against the best fixed T"] = learned_vs_fixed(members)
    columns = set(members.columns)
    if {"grad_soft_logits_init", "grad_soft_params_init", "grad_hard_params_init"} <= columns:
        out["soft-term gradient norm at initialisation"] = gradient_scale(members, "init")
    if {"grad_soft_logits_init", "grad_soft_params_init"} <= columns:
        out["log-log slope of the soft gradient against T (T ≥ 4)"] = pd.concat(
            [loglog_slopes(members, c) for c in ("grad_soft_params_init", "grad_soft_logits_init")]
        )
    return out
