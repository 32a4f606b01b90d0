"""tau_lab.analysis: over_seeds, paired intervals, the distillation tables and the report's findings,
checked against hand computations on hand-made tables."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import tau_lab.analysis.findings as findings_module
from tau_lab import analysis
from tau_lab.analysis import headline
from tau_lab.analysis.distill import (
    accuracy_by_T,
    best_students,
    gain_by_T,
    learned_vs_fixed,
    local_slopes,
    loglog_slopes,
    summary_tables,
    teacher_gain,
)
from tau_lab.analysis.findings import best_finding, findings, trend, vanished
from tau_lab.analysis.tables import compare_to_best, over_seeds, paired_interval, pooled

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
T_975_2 = 4.302652729911275  # the 97.5% quantile of Student's t with 2 degrees of freedom


def table(values: dict[float, list[float]], metric: str = "uniformity", **columns: list) -> pd.DataFrame:
    """A members table of fixed-τ members: ``values[τ][seed]``, in the engine's column order."""
    rows = [
        {"member": 0, "tau_mode": "fixed", "tau_init": tau, "seed": seed, "status": "ok", metric: v}
        for tau, per_seed in values.items()
        for seed, v in enumerate(per_seed)
    ]
    frame = pd.DataFrame(rows).assign(member=range(len(rows)))
    for name, column in columns.items():
        frame.insert(3, name, column)
    return frame


# ------------------------------------------------------------------------------------------ over seeds


def test_over_seeds_is_mean_and_sample_sd_of_finished_members() -> None:
    members = table({0.1: [1.0, 2.0, 4.0], 0.5: [3.0, 5.0, 100.0]})
    members.loc[5, "status"] = "diverged"  # τ = 0.5, seed 2: its value predates the divergence
    out = over_seeds(members, ["tau_init"], ["uniformity"]).set_index("tau_init")
    assert out.loc[0.1, "uniformity_mean"] == pytest.approx(7 / 3)
    assert out.loc[0.1, "uniformity_sd"] == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert out.loc[0.5, "uniformity_mean"] == pytest.approx(4.0)
    assert out["seeds"].to_dict() == {0.1: 3, 0.5: 2}


def test_pooled_counts_what_a_group_hides() -> None:
    members = table({0.1: [0.0] * 2, 0.5: [0.0] * 2})
    members = pd.concat([members.assign(alpha=a) for a in (0.0, 0.5, 0.9)], ignore_index=True)
    members = members[["member", "tau_mode", "tau_init", "alpha", "seed", "status", "uniformity"]]
    assert pooled(members, ["tau_mode", "tau_init"]) == {"seed": 2, "alpha": 3}
    assert pooled(members, ["tau_mode", "tau_init", "alpha"]) == {"seed": 2}


# ------------------------------------------------------------------------------------------ paired intervals


def test_paired_interval_by_hand() -> None:
    a = pd.Series([1.0, 2.0, 4.0], index=[0, 1, 2])
    b = pd.Series([0.5, 2.5, 1.0, 9.0], index=[0, 1, 2, 3])  # seed 3 has no partner: left out
    d = np.array([0.5, -0.5, 3.0])
    half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
    assert paired_interval(a, b) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half, 3))
    mean, low, high, n = paired_interval(a.iloc[:1], b)
    assert (mean, n) == (0.5, 1) and math.isnan(low) and math.isnan(high)  # one pair: no interval


@SETTINGS
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5)), min_size=2, max_size=8))
def test_paired_interval_is_scipys_paired_t_interval(pairs: list[tuple[float, float]]) -> None:
    a, b = (pd.Series(x) for x in zip(*pairs, strict=True))
    mean, low, high, n = paired_interval(a, b)
    d = a - b
    assert n == len(pairs) and mean == pytest.approx(d.mean(), abs=1e-12)
    if d.std() > 1e-9:
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-12)


def test_compare_to_best_pairs_on_seed() -> None:
    # τ = 0.1 beats τ = 0.5 on every seed by exactly 1, though their spreads over seeds overlap widely
    members = table({0.1: [1.0, 5.0, 9.0], 0.5: [2.0, 6.0, 10.0]})
    out = compare_to_best(members, "uniformity", ["tau_mode", "tau_init"], lower_is_better=True)
    assert out["tau_init"].tolist() == [0.1, 0.5] and out["best"].tolist() == [True, False]
    other = out.iloc[1]
    assert (other["delta"], other["low"], other["high"], other["pairs"]) == (pytest.approx(-1.0), -1.0, -1.0, 3)
    assert bool(other["distinguishable"]) is True and pd.isna(out.iloc[0]["distinguishable"])


# ------------------------------------------------------------------------------------------ findings: best τ


def test_the_issues_winner_is_not_distinguishable() -> None:
    """−3.202 ± 0.004 at τ = 0.2 against −3.192 ± 0.046 at τ = 0.1, where τ = 0.1 wins seed 0."""
    best, other = [-3.206, -3.198, -3.202], [-3.245, -3.168, -3.163]
    assert (np.mean(best), np.std(best, ddof=1)) == pytest.approx((-3.202, 0.004))
    assert (np.mean(other), np.std(other, ddof=1)) == pytest.approx((-3.192, 0.046), abs=5e-4)
    members = table({0.2: best, 0.1: other, 0.5: [-2.0, -2.1, -2.05]})
    sentence = best_finding(members, "uniformity", "uniformity", True, ["tau_mode", "tau_init"])
    d = np.array(best) - np.array(other)
    half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
    assert sentence.startswith("Lowest (best) uniformity -3.202 ± 0.004 at τ = 0.2 (fixed) (over 3 seeds).")
    assert (
        f"not distinguishable from τ = 0.1 (fixed) (Δ = {d.mean():.3f}, "
        f"[{d.mean() - half:.3f}, {d.mean() + half:.3f}], 3 seeds)" in sentence
    )
    assert "distinguishable from 1 of the other 2" in sentence
    assert "extend the grid" not in sentence  # τ = 0.2 lies inside the grid


def test_a_clear_winner_at_the_edge_of_the_grid() -> None:
    members = table({0.05: [1.0, 1.1, 1.2], 0.1: [2.0, 2.2, 2.1], 0.5: [3.0, 3.1, 3.3]}, metric="probe_accuracy")
    found = findings(members)
    (sentence,) = [s for s in found if "linear-probe accuracy" in s]
    assert sentence.startswith("Highest (best) linear-probe accuracy 3.133 ± 0.153 at τ = 0.5 (fixed)")
    assert "distinguishable from all 2 other settings (closest: τ = 0.1 (fixed), Δ = 1.033" in sentence
    assert sentence.endswith("Best at the largest τ tried (fixed): extend the grid.")
    low = findings(members.assign(probe_accuracy=-members["probe_accuracy"]))
    assert any(s.endswith("Best at the smallest τ tried (fixed): extend the grid.") for s in low)


def test_one_seed_names_no_best() -> None:
    members = table({0.1: [-3.0], 0.5: [-2.0]})
    (sentence,) = [s for s in findings(members) if "niformity" in s]
    assert sentence == (
        "Uniformity (lower is better): one seed per setting, so no interval is possible and no setting is called "
        "best (the lowest mean, -3.000, is at τ = 0.1 (fixed))."
    )
    assert "best)" not in sentence and "Lowest" not in sentence


def test_ties_seed_for_seed_name_no_best() -> None:
    """A saturated recall, and α = 0 where every T trains the same student: equal numbers are no winner."""
    saturated = table({0.05: [1.0, 1.0], 0.1: [1.0, 1.0], 0.3: [1.0, 1.0]}, metric="recall_a2b")
    (sentence,) = [s for s in findings(saturated) if "ecall" in s]
    assert sentence == "Recall@1 a → b is 1.000 at all 3 settings, seed for seed: no setting is better."
    partial = table({0.05: [0.9, 0.8], 0.1: [0.9, 0.8], 0.3: [0.5, 0.4]}, metric="recall_a2b")
    (sentence,) = [s for s in findings(partial) if "ecall" in s]
    assert "Tied seed for seed with τ = 0.1 (fixed): the best is not unique." in sentence
    assert "extend the grid" not in sentence  # the best is not one τ, so not one edge
    assert "distinguishable from the other setting (closest: τ = 0.3 (fixed), Δ = 0.400" in sentence


def test_every_task_gets_a_finding_on_its_headline_metric() -> None:
    three = {0.1: [0.8, 0.82, 0.81], 0.5: [0.6, 0.61, 0.62]}
    contrastive = [(h.column, h.name, h.lower) for h in headline.HEADLINES if "distill" not in h.tasks]
    assert {"probe_accuracy", "knn_accuracy", "zero_shot_ensemble", "recall_a2b"} <= {c for c, _, _ in contrastive}
    for column, words, lower in [*contrastive, ("uniformity", "uniformity", True)]:
        found = findings(table(three, metric=column))
        best = "Lowest (best)" if lower else "Highest (best)"
        # the best τ: 0.1 where higher is better, 0.5 where lower is
        assert any(s.startswith(f"{best} {words} ") and f"at τ = {0.5 if lower else 0.1} (fixed)" in s for s in found)


def test_one_headline_list_for_the_summary_the_findings_and_the_figures() -> None:
    from tau_lab import cli
    from tau_lab.figures import vs_tau

    assert not hasattr(cli, "HEADLINE")  # the summary's own list is gone
    columns = ["member", "tau_mode", "tau_init", "seed", "status", "loss", "tau"]
    for task in ("simclr", "clip", "pairs", "distill"):
        mine = [h.column for h in headline.headlines(task)]
        members = pd.DataFrame({c: [0] for c in [*columns, *mine, "uniformity"]})
        assert cli.summary_columns(task, members)[-len(mine) :] == mine, task
    assert (
        cli.summary_columns("quadrants", pd.DataFrame({c: [0] for c in [*columns, "uniformity"]}))[-1] == "uniformity"
    )
    assert [
        (h.column, h.name, h.lower) for h in headline.headlines() if h.tasks != ("distill",)
    ] == findings_module.HEADLINES
    assert {
        h.column: (h.name, h.how) for h in headline.headlines() if set(h.tasks) & {"simclr", "clip", "pairs"}
    } == vs_tau.HEADLINE


def test_geometry_findings_name_the_space_they_were_measured_in() -> None:
    # simclr and clip measure on the projection z and the encoder output h: a finding for each, never mixed
    members = table({0.1: [-3.0, -3.1, -3.05], 0.5: [-2.0, -2.1, -2.05]}, metric="uniformity.z")
    members["uniformity.h"] = -members["uniformity.z"] - 4  # the other way round on h: best at τ = 0.5
    members["tolerance.h"] = [0.4, 0.41, 0.42, 0.7, 0.71, 0.72]
    found = findings(members)
    assert any(s.startswith("Lowest (best) uniformity of the projection z -3.050 ± 0.050 at τ = 0.1") for s in found)
    on_h = "Lowest (best) uniformity of the encoder output h -1.950 ± 0.050 at τ = 0.5"
    assert any(s.startswith(on_h) for s in found)
    assert any(s.startswith("Same-class similarity of the encoder output h (tolerance)") for s in found)
    assert not any(s.startswith("Lowest (best) uniformity -") for s in found)


def test_findings_per_level_of_the_tasks_own_axes() -> None:
    members = table({0.1: [0.8, 0.82, 0.81], 0.5: [0.6, 0.61, 0.62]}, metric="zero_shot_ensemble")
    members = pd.concat([members.assign(caption_noise=n) for n in (0.0, 0.3)], ignore_index=True)
    members = members[["member", "tau_mode", "tau_init", "caption_noise", "seed", "status", "zero_shot_ensemble"]]
    found = [s for s in findings(members) if "zero-shot" in s]
    per_level, moves = found[:2], found[2:]
    assert [s.split(": ")[0] for s in per_level] == ["caption_noise = 0", "caption_noise = 0.3"]
    assert all(
        "Highest (best) zero-shot accuracy (prompt ensemble) 0.810 ± 0.010 at τ = 0.1 (fixed)" in s for s in per_level
    )
    # and whether the best τ moves with the noise: it does not (the same values at both levels)
    assert len(moves) == 1 and moves[0].startswith(
        "Best fixed τ of zero-shot accuracy (prompt ensemble) by caption_noise"
    )
    assert (
        "Δ log10(best τ) +0.000 [+0.000, +0.000] (3 seeds, not distinguishable from 0), and the same best τ" in moves[0]
    )


# ------------------------------------------------------------------------------------------ findings: trends


def test_a_trend_names_its_interior_minimum() -> None:
    """SimCLR's tolerance as the issue measured it: 0.720 at τ = 1, 0.391 at τ = 0.1, 0.561 at τ = 0.05."""
    members = table({1.0: [0.72, 0.72], 0.5: [0.6, 0.6], 0.1: [0.391, 0.391], 0.05: [0.561, 0.561]}, "tolerance")
    assert trend(members, "tolerance", "Tolerance") == (
        "Tolerance falls from 0.720 at τ = 1 to 0.561 at τ = 0.05 (fixed, mean over 2 seeds), not monotonically: "
        "interior minimum 0.391 at τ = 0.1."
    )
    rising = table({1.0: [0.1], 0.5: [0.2], 0.1: [0.3]}, "tolerance")
    assert trend(rising, "tolerance", "Tolerance") == (
        "Tolerance rises from 0.100 at τ = 1 to 0.300 at τ = 0.1 (fixed, mean over 1 seed), monotonically."
    )


# ------------------------------------------------------------------------------------------ vanished gradients


def grad_log(per_member: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"member": m, "step": 100 * i, "metric": "grad_norm", "value": v}
            for m, values in per_member.items()
            for i, v in enumerate(values)
        ]
    )


def test_vanished_gradients_are_judged_over_a_window() -> None:
    members = table({0.001: [0.0, 0.0], 0.5: [1.0, 1.0]}, "uniformity")
    quiet, spiky = [1.0] * 5 + [1e-9] * 12, [1.0] * 5 + [1e-9] * 6 + [696.0] + [1e-9] * 5
    metrics = grad_log({0: quiet, 1: spiky, 2: [1.0] * 17, 3: [1.0] * 17})
    judged = vanished(metrics).set_index("member")
    assert judged["vanished"].tolist() == [True, False, False, False]
    assert judged.loc[1, "window_max"] == 696.0 and judged.loc[1, "final"] == 1e-9
    assert set(judged["first_step"]) == {700} and set(judged["last_step"]) == {1600}
    (sentence,) = [s for s in findings(members, metrics) if "anish" in s]
    assert sentence.startswith(
        "Gradients vanished (gradient norm < 1e-06 at each of the last 10 logged steps, steps 700–1600) for 1 of 4 "
        "finished members: fixed τ = 0.001 (1 of 2)."
    )
    assert sentence.endswith(
        "1 more finished with a gradient norm < 1e-06 on the last batch but reached 696.000 "
        "within the last 10 logged steps: not vanished."
    )


def test_without_a_metrics_table_the_last_value_is_named_as_such() -> None:
    members = table({0.001: [0.0, 0.0], 0.5: [1.0, 1.0]}, "grad_norm")
    (sentence,) = [s for s in findings(members) if "anish" in s]
    assert sentence == (
        "Gradients vanished (last logged gradient norm < 1e-06; no metrics table to judge a window of steps) "
        "for 2 of 4 finished members: fixed τ = 0.001 (2 of 2)."
    )


def test_a_single_seed_distillation_names_no_best_student() -> None:
    rows = [
        {"member": 0, "tau_mode": "fixed", "tau_init": T, "alpha": 0.9, "t2_scaling": True, "labeled_fraction": 0.1}
        | {"seed": 0, "status": "ok", "accuracy": acc, "kl_teacher": 0.1, "ece": 0.0, "tau": T}
        for T, acc in ((1.0, 0.7), (4.0, 0.8))
    ]
    (sentence,) = [s for s in findings(pd.DataFrame(rows)) if "student" in s]
    assert sentence == (
        "Labelled fraction 0.1: one seed, so no interval is possible and no student is called best "
        "(the highest accuracy, 0.800, is at T = 4 (fixed), α = 0.9, with T²)."
    )


# ------------------------------------------------------------------------------------------ distillation tables


def test_loglog_slopes_recover_a_known_power_law():
    T = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    rows = [
        {"tau_mode": "fixed", "tau_init": t, "t2_scaling": t2, "seed": seed, "status": "ok", "g": (seed + 1) * t**power}
        for seed in (0, 1)
        for t2, power in ((False, -2.0), (True, 0.5))
        for t in T
    ]
    slopes = loglog_slopes(pd.DataFrame(rows), "g", min_T=2.0)
    assert slopes.set_index("t2_scaling")["slope_mean"].to_dict() == pytest.approx({False: -2.0, True: 0.5})
    assert (slopes["seeds"] == 2).all()


def test_slope_with_T2_is_the_slope_without_plus_exactly_two() -> None:
    # members with and without T² share their weights at initialisation: g_with = T² · g_without
    rng = np.random.default_rng(0)
    T = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    rows = []
    for seed in range(3):
        without = np.exp(rng.normal(size=len(T))) / T**2  # noisy, not a power law
        for t2, g in ((False, without), (True, without * T**2)):
            rows += [
                {"tau_mode": "fixed", "tau_init": t, "t2_scaling": t2, "seed": seed, "status": "ok", "g": v}
                for t, v in zip(T, g, strict=True)
            ]
    members = pd.DataFrame(rows)
    for min_T in (1.0, 4.0, 8.0):
        slopes = loglog_slopes(members, "g", min_T=min_T).set_index("t2_scaling")
        assert slopes.loc[True, "slope_mean"] - slopes.loc[False, "slope_mean"] == pytest.approx(2.0, abs=1e-12)
        assert slopes.loc[True, "slope_sd"] == pytest.approx(slopes.loc[False, "slope_sd"], abs=1e-12)
    local = local_slopes(members, "g").pivot(index=["T_from", "T_to"], columns="t2_scaling", values="slope_mean")
    assert (local[True] - local[False]).to_numpy() == pytest.approx(np.full(5, 2.0), abs=1e-12)


def test_local_slopes_show_where_the_law_starts() -> None:
    # g = 1 / (1 + T²): slope ≈ 0 at small T, → −2 at large T
    T = [1.0, 2.0, 4.0, 8.0, 16.0]
    rows = [
        {"tau_mode": "fixed", "tau_init": t, "t2_scaling": False, "seed": 0, "status": "ok", "g": 1 / (1 + t * t)}
        for t in T
    ]
    local = local_slopes(pd.DataFrame(rows), "g").set_index("T_from")["slope_mean"]
    assert local[1.0] == pytest.approx(np.log(2 / 5) / np.log(2))
    assert local[8.0] == pytest.approx(np.log(65 / 257) / np.log(2))  # −1.983


def _kd_members() -> pd.DataFrame:
    """Two seeds, fraction 0.1: α = 0 students (0.5, 0.7) and four α = 0.9 settings whose
    validation ranking (T = 2 best) differs from the test ranking (T = 4 best)."""
    base = {"tau_mode": "fixed", "t2_scaling": True, "labeled_fraction": 0.1, "status": "ok"}
    base |= {"kl_teacher": 0.1, "ece": 0.0}
    settings = [  # T, α, test gain, validation accuracy
        (1.0, 0.0, 0.0, 0.6),
        (4.0, 0.0, 0.0, 0.6),
        (1.0, 0.9, 0.10, 0.80),
        (2.0, 0.9, 0.15, 0.95),
        (4.0, 0.9, 0.20, 0.85),
    ]
    rows = [
        base
        | {"tau_init": T, "tau": T, "alpha": alpha, "seed": seed}
        | {"accuracy": alone + gain, "val_accuracy": val + seed / 100}
        for seed, alone in ((0, 0.5), (1, 0.7))
        for T, alpha, gain, val in settings
    ]
    return pd.DataFrame(rows).assign(member=range(len(rows)))


def test_teacher_gain_is_paired_by_seed_and_chosen_on_validation():
    table = teacher_gain(_kd_members()).set_index("student")
    best = table.loc["best on validation"]
    assert best["tau_init"] == 2.0  # the validation-best, not T = 4, the test-best
    assert best["accuracy_mean"] == pytest.approx(0.75)  # its test accuracy, reported
    assert best["gain_mean"] == pytest.approx(0.15)
    assert best["gain_sd"] == pytest.approx(0.0, abs=1e-12)  # unpaired, the sd would be 0.14
    assert best["gain_low"] == pytest.approx(0.15) and best["gain_high"] == pytest.approx(0.15)
    assert best["alone_mean"] == pytest.approx(0.6)
    assert table.loc["default", "tau_init"] == 4.0 and table.loc["default", "gain_mean"] == pytest.approx(0.2)


def test_choosing_on_validation_never_reads_test():
    members = _kd_members()
    # scrambling the test accuracies changes no choice
    scrambled = members.assign(accuracy=members["accuracy"].sample(frac=1, random_state=0).to_numpy())
    for frame in (members, scrambled):
        assert best_students(frame, top=1)["tau_init"].tolist() == [2.0]
        assert teacher_gain(frame).set_index("student").loc["best on validation", "tau_init"] == 2.0
    row = accuracy_by_T(members).set_index("alpha").loc[0.9]
    assert row["val_best_T"] == 2.0 and row["accuracy_at_val_best"] == pytest.approx(0.75)
    assert row[4.0] == pytest.approx(0.8)  # the test-best T is shown, not chosen
    learned = members.iloc[[3, 8]].assign(tau_mode="ctkd", tau_init=8.5)
    table = learned_vs_fixed(pd.concat([members, learned]))
    assert table["best_fixed_T"].tolist() == [2.0] and table["best_fixed_accuracy_mean"].tolist() == [0.75]
    # a tie on validation goes to the lower KL to the teacher, in every table alike
    tied = members.copy()
    at = lambda T: (tied["tau_init"] == T) & (tied["alpha"] == 0.9)  # noqa: E731
    tied.loc[at(4.0), "val_accuracy"] = tied.loc[at(2.0), "val_accuracy"].to_numpy()
    tied.loc[at(4.0), "kl_teacher"] = 0.05
    assert best_students(tied, top=1)["tau_init"].tolist() == [4.0]
    assert teacher_gain(tied).set_index("student").loc["best on validation", "tau_init"] == 4.0
    assert accuracy_by_T(tied).set_index("alpha").loc[0.9, "val_best_T"] == 4.0


def test_gain_by_T_pairs_each_T_with_T1():
    table = gain_by_T(_kd_members()).set_index("T")
    assert table.loc[1.0, "vs_T1_mean"] == pytest.approx(0.0)
    assert table.loc[4.0, "vs_T1_mean"] == pytest.approx(0.10)
    assert table.loc[2.0, "gain_mean"] == pytest.approx(0.15)
    assert table.loc[2.0, "gain_low"] == pytest.approx(0.15)  # the same gain in both seeds


def test_summary_tables_by_task() -> None:
    rows = [
        {"member": 0, "tau_mode": "fixed", "tau_init": T, "alpha": a, "t2_scaling": True, "labeled_fraction": 1.0}
        | {"seed": s, "status": "ok", "accuracy": 0.5 + a / 10 + s / 100, "kl_teacher": 0.1, "ece": 0.0, "tau": T}
        | {"val_accuracy": 0.5 + a / 10}
        for T in (1.0, 4.0)
        for a in (0.0, 0.9)
        for s in (0, 1)
    ]
    members = pd.DataFrame(rows).assign(member=range(len(rows)))
    tables = analysis.summary_tables("distill", members)
    assert list(tables) == list(summary_tables(members))
    gain = "teacher's gain over α = 0, paired by seed (chosen on validation, measured on test)"
    assert gain in tables
    # a members table without val_accuracy (runs before the split) gets no table that chooses a setting
    assert gain not in summary_tables(members.drop(columns="val_accuracy"))
    assert analysis.summary_tables("quadrants", members) == {} and analysis.summary_tables("clip", members) == {}


# ------------------------------------------------------------------------------------------ layering


def test_presentation_imports_no_training_code() -> None:
    """figures/, report and analysis import neither tasks, search, engine nor config; seaborn, matplotlib
    and scipy only once a figure is drawn or an interval computed."""
    code = (
        "import sys, tau_lab.analysis, tau_lab.figures, tau_lab.report\n"
        "light = sorted(m for m in ('seaborn', 'matplotlib', 'scipy') if m in sys.modules)\n"
        "import tau_lab.figures.clip, tau_lab.figures.curves, tau_lab.figures.distill, tau_lab.figures.quadrants\n"
        "import tau_lab.figures.search, tau_lab.figures.softmax, tau_lab.figures.vs_tau\n"
        "layers = sorted(m for m in sys.modules if m.split('.')[:2] in (['tau_lab', 'tasks'], ['tau_lab', 'search'],"
        " ['tau_lab', 'engine'], ['tau_lab', 'config']))\n"
        "print(light, layers)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


# ------------------------------------------------------------------------------------------ τ × axis


def _by_lr(per_lr: dict[float, dict[float, list[float]]], metric: str = "knn_accuracy") -> pd.DataFrame:
    """``per_lr[lr][τ][seed]``: a members table with the grid axis ``lr`` between ``tau_init`` and ``seed``."""
    parts = [table(values, metric).assign(lr=lr) for lr, values in per_lr.items()]
    members = pd.concat(parts, ignore_index=True).assign(member=lambda f: range(len(f)))
    return members[["member", "tau_mode", "tau_init", "lr", "seed", "status", metric]]


def test_tau_shift_pairs_each_seeds_best_tau_and_the_metric_across_the_axis() -> None:
    from tau_lab.analysis.findings import tau_shift

    # lr 0.001: τ = 0.1 best for every seed. lr 0.01: τ = 1 best for seeds 0 and 1, τ = 0.1 for seed 2
    members = _by_lr(
        {
            0.001: {0.1: [0.90, 0.91, 0.92], 1.0: [0.80, 0.82, 0.81]},
            0.01: {0.1: [0.70, 0.72, 0.95], 1.0: [0.85, 0.86, 0.90]},
        }
    )
    sentence = tau_shift(members, "lr", "knn_accuracy", "k-NN accuracy", lower=False)
    assert sentence.startswith(
        "Best fixed τ of k-NN accuracy by lr (mean over seeds): 0.1 at lr = 0.001, 1 at lr = 0.01."
    )
    # Δ log10(best τ) per seed: 1, 1, 0
    d = np.array([1.0, 1.0, 0.0])
    half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
    assert f"Δ log10(best τ) +{d.mean():.3f} [{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]" in sentence
    assert "(3 seeds, not distinguishable from 0)" in sentence
    # at lr 0.01: τ = 1 − τ = 0.1, seed by seed
    d = np.array([0.85 - 0.70, 0.86 - 0.72, 0.90 - 0.95])
    half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
    assert f"at lr = 0.01, k-NN accuracy at τ = 1 − at τ = 0.1: +{d.mean():.3f} [{d.mean() - half:+.3f}, " in sentence
    # every seed moves by one decade: an interval of width 0 that excludes 0
    moved = _by_lr({0.001: {0.1: [0.9, 0.9, 0.9], 1.0: [0.8, 0.7, 0.6]}, 0.01: {0.1: [0.5, 0.6, 0.7], 1.0: [0.8] * 3}})
    assert "Δ log10(best τ) +1.000 [+1.000, +1.000] (3 seeds, distinguishable from 0)" in tau_shift(
        moved, "lr", "knn_accuracy", "k-NN accuracy", lower=False
    )


def test_tau_shift_of_a_lower_is_better_metric_and_an_unmoved_best() -> None:
    from tau_lab.analysis.findings import tau_shift

    members = _by_lr({1: {0.1: [1.0, 2.0], 1.0: [3.0, 4.0]}, 2: {0.1: [0.0, 0.5], 1.0: [5.0, 5.0]}}, "ece")
    sentence = tau_shift(members, "lr", "ece", "calibration error", lower=True)
    assert "0.1 at lr = 1, 0.1 at lr = 2" in sentence  # lowest is best
    assert (
        "Δ log10(best τ) +0.000 [+0.000, +0.000] (2 seeds, not distinguishable from 0), and the same best τ" in sentence
    )


def test_findings_say_per_axis_value_the_best_tau_and_whether_it_moves() -> None:
    members = _by_lr(
        {
            0.001: {0.1: [0.90, 0.91, 0.92], 1.0: [0.80, 0.82, 0.81]},
            0.01: {0.1: [0.70, 0.72, 0.95], 1.0: [0.85, 0.86, 0.90]},
        }
    )
    found = findings(members)
    assert any(s.startswith("lr = 0.001: Highest (best) k-NN accuracy 0.910 ± 0.010 at τ = 0.1 (fixed)") for s in found)
    assert any(s.startswith("lr = 0.01: Highest (best) k-NN accuracy 0.870 ± 0.026 at τ = 1 (fixed)") for s in found)
    assert sum(s.startswith("Best fixed τ of k-NN accuracy by lr") for s in found) == 1
    # one seed: no interval, said so
    one = findings(members[members["seed"] == 0])
    assert any("Δ log10(best τ) +1.000 (1 seed: no interval)" in s for s in one)


# ------------------------------------------------------------------------------------------ SigLIP − CLIP


def _losses_table() -> pd.DataFrame:
    """A clip study's members: two losses × two τ × three seeds, one diverged, in the engine's column order."""
    rows = []
    acc = {  # (objective, τ): accuracy per seed
        ("clip", 0.1): [0.90, 0.92, 0.94],
        ("siglip", 0.1): [0.95, 0.97, 0.98],
        ("clip", 1.0): [0.97, 0.96, 0.98],
        ("siglip", 1.0): [0.96, 0.97, 0.99],
    }
    for (objective, tau), values in acc.items():
        for seed, v in enumerate(values):
            status = "diverged" if (objective, tau, seed) == ("siglip", 1.0, 2) else "ok"
            bias = -8.0 - seed if objective == "siglip" else math.nan
            rows.append(
                {
                    "member": len(rows),
                    "tau_mode": "learnable",
                    "tau_init": tau,
                    "objective": objective,
                    "seed": seed,
                    "status": status,
                    "zero_shot_ensemble": v,
                    "tau": tau / 2,
                    "logit_bias": bias,
                }
            )
    return pd.DataFrame(rows)


def test_siglip_minus_clip_is_paired_by_seed_by_hand() -> None:
    members = _losses_table()
    got = analysis.objectives.siglip_minus_clip(members, "zero_shot_ensemble").set_index("tau_init")
    d = np.array([0.05, 0.05, 0.04])
    half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
    row = got.loc[0.1]
    assert (row.delta, row.low, row.high, row.pairs) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half, 3))
    assert row.siglip == pytest.approx(np.mean([0.95, 0.97, 0.98]))
    assert bool(row.distinguishable)
    row = got.loc[1.0]  # seed 2's SigLIP member diverged: two pairs, −0.01 and +0.01
    assert (row.delta, row.pairs) == pytest.approx((0.0, 2))
    assert not bool(row.distinguishable)
    assert row["siglip"] == pytest.approx(0.965) and row["clip"] == pytest.approx(0.97)  # CLIP keeps its 3 seeds
    learned = analysis.objectives.learned(members).set_index(["objective", "tau_init"])
    assert learned.loc[("siglip", 0.1), "logit_bias_mean"] == pytest.approx(-9.0)
    assert learned.loc[("siglip", 1.0), "seeds"] == 2
    assert math.isnan(learned.loc[("clip", 0.1), "logit_bias_mean"])
    titles = list(analysis.summary_tables("clip", members))
    assert titles == [
        "SigLIP − CLIP, zero_shot_ensemble, paired by seed",
        "learned τ and bias at the end (learnable members)",
    ]
    assert analysis.summary_tables("clip", members[members.objective == "clip"]) == {}


def test_held_out_advantage_by_hand() -> None:
    """Leave one seed out: the best and runner-up are chosen on the other seeds and measured on the left-out one."""
    from tau_lab.analysis.tables import held_out_advantage

    values = {0.1: [5.0, 1.0, 1.0, 1.0], 0.2: [2.0, 2.0, 2.0, 2.0], 0.5: [0.0, 0.0, 0.0, 3.0]}
    members = table(values, metric="probe_accuracy")
    # seed 0 out: means over seeds 1-3 are 1, 2, 1 → best 0.2, runner-up 0.1 (stable order), d = 2 − 5 = −3
    # seed 1 out: 7/3, 2, 1 → best 0.1, runner-up 0.2, d = 1 − 2 = −1; seed 2 out: the same, d = −1
    # seed 3 out: 7/3, 2, 0 → best 0.1, runner-up 0.2, d = 1 − 2 = −1
    d = np.array([-3.0, -1.0, -1.0, -1.0])
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    mean, low, high, n = held_out_advantage(members, "probe_accuracy", ["tau_mode", "tau_init"], False)
    assert n == 4 and (mean, low, high) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    # lower is better on the negated values: the same choices, the same leads
    negated = members.assign(probe_accuracy=-members["probe_accuracy"])
    flipped = held_out_advantage(negated, "probe_accuracy", ["tau_mode", "tau_init"], True)
    assert flipped == pytest.approx((mean, low, high, n))
    assert np.isnan(held_out_advantage(table({0.1: [1.0, 2.0], 0.2: [2.0, 3.0]}), "uniformity", ["tau_init"], True)[0])


def test_the_best_finding_says_whether_the_choice_holds_on_held_out_seeds() -> None:
    clear = table({0.1: [1.0, 1.1, 1.2, 1.3], 0.5: [2.0, 2.2, 2.1, 2.4]}, metric="probe_accuracy")
    (sentence,) = [s for s in findings(clear) if "linear-probe" in s]
    assert "Leaving one seed out (4 seeds" in sentence and ": confirmed on held-out seeds." in sentence
    noise = table({0.1: [1.0, 3.0, 1.0], 0.5: [2.0, 1.0, 2.5]}, metric="probe_accuracy")
    (sentence,) = [s for s in findings(noise) if "linear-probe" in s]
    assert "not confirmed on held-out seeds" in sentence
    two = table({0.1: [1.0, 1.1], 0.5: [2.0, 2.2]}, metric="probe_accuracy")
    (sentence,) = [s for s in findings(two) if "linear-probe" in s]
    assert "Leaving one seed out" not in sentence  # two seeds: no held-out check
