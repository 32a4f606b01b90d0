"""The distillation task: the population against a user's loop, α = 0, the T² law, ctkd, the CLI."""

from __future__ import annotations

import itertools
import math
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tau_lab import config, engine
from tau_lab.analysis.distill import loglog_slopes
from tau_lab.cli import app
from tau_lab.data.digits import load_digits
from tau_lab.tasks.distill import (
    Distill,
    labeled_mask,
    make_student,
    seed_data,
    student_logits,
    train_reference,
)
from tau_lab.teacher import load_split, load_teacher
from tau_lab.temperature import Temperature, ctkd_lambda

CPU = torch.device("cpu")
# a small teacher that trains in a fraction of a second; cached once for this module
TEACHER = ["model.teacher.hidden=[16]", "model.teacher.steps=30", "model.teacher.lr=1e-2"]


@pytest.fixture(scope="module", autouse=True)
def teacher_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAU_LAB_CACHE", str(tmp_path_factory.mktemp("teachers")))
        yield


def load(*overrides: str) -> config.Experiment:
    experiment, _ = config.load_experiment("digits_kd", [*TEACHER, 'device="cpu"', "data.batch_size=32", *overrides])
    return experiment


def grid(tau: str, modes: str, alpha: str, t2: str, fraction: str, seeds: str) -> list[str]:
    return [
        f"sweep.tau={tau}",
        f"sweep.tau_mode={modes}",
        f"sweep.alpha={alpha}",
        f"sweep.t2_scaling={t2}",
        f"sweep.labeled_fraction={fraction}",
        f"sweep.seeds={seeds}",
    ]


def students(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: p for n, p in params.items() if n != "logit_scale"}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------------------------------------
# The population
# ---------------------------------------------------------------------------------------------


def test_member_reproduces_a_users_loop():
    # The user's loop runs the teacher on every batch and writes the loss with F.kl_div · T² and
    # F.cross_entropy on the labelled rows; the population uses kd_loss and one teacher call per seed.
    exp = load(
        "steps=30", "log_every=1", *grid("[1.0, 4.0]", '["fixed"]', "[0.5, 1.0]", "[true, false]", "[0.05, 1.0]", "[3]")
    )
    rows = config.members(exp)
    out = engine.train_population(exp, rows, CPU)
    log = out["log"].frame()
    for k, row in enumerate(rows):
        student, _, losses = train_reference(exp, row)
        reference = dict(student.named_parameters())
        for name, p in students(out["params"]).items():
            assert _relative(p[k], reference[name.removeprefix("student.")].detach()) < 1e-4, (row, name)
        logged = log[(log.member == k) & (log.metric == "loss")].sort_values("step")["value"].to_numpy()
        assert logged[: exp.steps] == pytest.approx(losses, rel=1e-4)


def test_alpha_zero_is_plain_supervised_training():
    exp = load(
        "steps=20", *grid("[1.0, 4.0, 16.0]", '["fixed", "ctkd", "cosine"]', "[0.0]", "[true, false]", "[0.5]", "[5]")
    )
    rows = config.members(exp)
    assert len({(r["tau_mode"], r["tau_init"], r["t2_scaling"]) for r in rows}) == len(rows) == 10
    out = engine.train_population(exp, rows, CPU)
    # every member is the same student, bit for bit, whatever its T, T mode or T² setting
    for p in students(out["params"]).values():
        assert torch.equal(p, p[:1].expand_as(p))
    # ... and the one a cross-entropy loop on the labelled images trains, with no teacher at all
    digits = load_split(0.25, 0, 0.2)
    student = make_student(5, exp.model.hidden)
    opt = exp.optimizer
    optimizer = torch.optim.AdamW(student.parameters(), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=0.0)
    rank, index = seed_data(5, digits.train_y, exp.steps, 32)
    labeled = labeled_mask(rank, digits.train_y, torch.tensor(0.5))
    for step in range(exp.steps):
        i = index[step][labeled[index[step]]]
        loss = F.cross_entropy(student(digits.train_x[i]), digits.train_y[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in dict(student.named_parameters()).items():
        assert _relative(out["params"][f"student.{name}"][0], p.detach()) < 1e-4


def test_teacher_runs_once_per_batch_for_the_whole_population():
    exp = load("steps=3", *grid("[1.0, 4.0]", '["fixed"]', "[0.5, 0.9]", "[true]", "[1.0]", "[0, 1]"))
    rows = config.members(exp)
    task = Distill(exp, rows, CPU)
    inputs = []
    task.teacher.register_forward_hook(lambda module, args, output: inputs.append(tuple(args[0].shape)))
    batches = [task.batch(step) for step in range(3)]
    assert inputs == [(2, 32, 64)] * 3  # one call per step, on the two seeds' batches, never per member
    for k, row in enumerate(rows):
        _, index = seed_data(row["seed"], task.train_y, exp.steps, 32)
        x = task.train_x[index[2]]
        assert torch.equal(batches[2].x[k], x)
        torch.testing.assert_close(batches[2].teacher[k], task.teacher(x))


def test_labeled_subsets_are_stratified_and_nested():
    y = load_split(0.25, 0, 0.2).train_y
    rank, _ = seed_data(7, y, 1, 8)
    masks = labeled_mask(rank, y, torch.tensor([0.01, 0.05, 0.2, 1.0]))  # [4, N]
    per_class = torch.bincount(y, minlength=10)
    for mask, fraction in zip(masks, [0.01, 0.05, 0.2, 1.0], strict=True):
        counts = torch.bincount(y[mask], minlength=10)
        assert torch.equal(counts, (fraction * per_class).round().clamp_min(1).long())
    assert (masks[:-1] <= masks[1:]).all()  # a smaller fraction labels a subset of a larger one
    other, _ = seed_data(8, y, 1, 8)
    assert not torch.equal(labeled_mask(other, y, torch.tensor(0.2)), masks[2])  # each seed its own subset


def test_validation_split_is_disjoint_stratified_and_never_trained_on():
    split = load_split(0.25, 0, 0.2)
    full = load_digits(0.25, 0)
    # train ∪ val is load_digits' training split, image for image, and test is untouched
    assert len(split.train_y) + len(split.val_y) == len(full.train_y) == 1347
    rows = lambda x: {tuple(r) for r in x.tolist()}  # noqa: E731
    assert not rows(split.train_x) & rows(split.val_x) and not rows(split.val_x) & rows(split.test_x)
    assert torch.equal(split.test_x, full.test_x)
    # in every class, round(0.2 · n_c) images of the training split
    per_class = torch.bincount(full.train_y, minlength=10)
    assert torch.equal(torch.bincount(split.val_y, minlength=10), (0.2 * per_class).round().long())
    assert len(split.val_y) == 269
    assert torch.equal(load_split(0.25, 0, 0.2).val_x, split.val_x)  # seeded
    assert not torch.equal(load_split(0.25, 1, 0.2).val_x[:50], split.val_x[:50])
    # the population's batches draw from the train split only; val_accuracy is on the validation images
    exp = load("steps=3", *grid("[1.0]", '["fixed"]', "[0.9]", "[true]", "[1.0]", "[0]"))
    task = Distill(exp, config.members(exp), CPU)
    assert torch.equal(task.train_x, split.train_x) and torch.equal(task.val_x, split.val_x)
    assert rows(task.batch(0).x[0]) <= rows(split.train_x)
    s = make_student(0, exp.model.hidden)
    with torch.no_grad():
        expected = (s(split.val_x).argmax(1) == split.val_y).float().mean().item()
    assert task.evaluate(task.params)["val_accuracy"][0].item() == pytest.approx(expected)


def test_the_search_chooses_T_and_alpha_on_validation():
    study = tomllib.loads((Path(__file__).parents[1] / "experiments" / "digits_kd_search.toml").read_text())
    assert study["search"]["objective"] == "val_accuracy"
    assert study["data"]["validation_fraction"] > 0


def test_evaluation_is_at_T_equal_one():
    # members that differ only in T share their weights here, so evaluation must not depend on T
    exp = load("steps=1", *grid("[1.0, 16.0]", '["fixed"]', "[0.9]", "[true]", "[1.0]", "[2]"))
    task = Distill(exp, config.members(exp), CPU)
    result = task.evaluate(task.params)
    for values in result.values():
        assert values[0] == values[1]
    student = make_student(2, exp.model.hidden)
    teacher = load_teacher(exp.model.teacher, 0.25, 0, 0.2)
    with torch.no_grad():
        s, t = student(task.test_x), teacher.model(task.test_x)
    y = task.test_y
    assert result["accuracy"][0].item() == pytest.approx((s.argmax(1) == y).float().mean().item())
    assert result["agreement"][0].item() == pytest.approx((s.argmax(1) == t.argmax(1)).float().mean().item())
    kl = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    assert result["kl_teacher"][0].item() == pytest.approx(kl.item(), rel=1e-5)
    assert result["teacher_accuracy"][0].item() == pytest.approx(teacher.test_accuracy)


def test_part_gradients_match_their_closed_form():
    # ∂soft/∂s = c (q − p) / (T B) with c = T² or 1; ∂hard/∂s = m (softmax(s) − onehot(y)) / Σm
    exp = load("steps=1", *grid("[2.0, 8.0]", '["fixed"]', "[0.5]", "[true, false]", "[0.2]", "[0]"))
    rows = config.members(exp)
    task = Distill(exp, rows, CPU)
    tau = torch.tensor([r["tau_init"] for r in rows])
    diag = task.diagnostics(task.params, tau, step=0)
    batch = task.batch(0)
    s = student_logits(task.params, batch.x)
    T = tau[:, None, None]
    c = torch.where(task.t2_scaling[:, None, None], T**2, 1.0)
    soft = c * (F.softmax(s / T, -1) - F.softmax(batch.teacher / T, -1)) / (T * 32)
    m = batch.labeled[..., None]
    hard = m * (F.softmax(s, -1) - F.one_hot(batch.y, 10)) / m.sum(1, keepdim=True)
    torch.testing.assert_close(diag["grad_soft_logits"], soft.flatten(1).norm(dim=1))
    torch.testing.assert_close(diag["grad_hard_logits"], hard.flatten(1).norm(dim=1))
    torch.testing.assert_close(diag["grad_total_logits"], (0.5 * soft + 0.5 * hard).flatten(1).norm(dim=1))
    torch.testing.assert_close(diag["grad_soft_logits_init"], diag["grad_soft_logits"])


# ---------------------------------------------------------------------------------------------
# The T² law, measured through the task
# ---------------------------------------------------------------------------------------------


def test_soft_gradient_scale_law_through_the_task():
    # For large T the soft term's gradient shrinks as 1/T² without the T² factor and is flat with it.
    exp = load("steps=1", *grid("[8.0, 16.0, 32.0, 64.0]", '["fixed"]', "[0.9]", "[true, false]", "[1.0]", "[0, 1]"))
    rows = config.members(exp)
    members = engine.tables(rows, [engine.train_population(exp, rows, CPU)])["members"]
    for column in ("grad_soft_logits_init", "grad_soft_params_init"):
        slopes = loglog_slopes(members, column, min_T=8.0).set_index("t2_scaling")["slope_mean"]
        assert slopes[False] == pytest.approx(-2.0, abs=0.1), column
        assert slopes[True] == pytest.approx(0.0, abs=0.1), column


# ---------------------------------------------------------------------------------------------
# ctkd: a learnable T through a gradient-reversal layer
# ---------------------------------------------------------------------------------------------


def test_ctkd_curriculum_goes_from_zero_to_minus_one():
    assert ctkd_lambda(0, 100) == 0.0
    assert ctkd_lambda(50, 100) == pytest.approx(-0.5)
    assert ctkd_lambda(100, 100) == ctkd_lambda(1000, 100) == -1.0
    values = [ctkd_lambda(s, 100) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("step", [0, 3, 5, 10, 40])
def test_ctkd_grad_is_autograd_through_the_reversal(step):
    temp = Temperature([2.0, 8.5, 3.0, 15.0], ["ctkd", "ctkd", "learnable", "fixed"], 1.0, 16.0, period=10)
    tau = temp(step)
    grad_tau = torch.tensor([1.5, -0.7, 0.3, 2.0])
    (grad_tau * tau).sum().backward()
    got = temp.logit_scale_grad(tau.detach(), grad_tau, step)
    trained = temp.learnable
    torch.testing.assert_close(got[trained], temp.logit_scale.grad[trained])
    # by hand: dT/dθ = (T − 1)(16 − T) / 15, times λ
    T = tau.detach()[:2]
    torch.testing.assert_close(got[:2], ctkd_lambda(step, 10) * (T - 1) * (16 - T) / 15 * grad_tau[:2])


def test_ctkd_starts_where_asked_and_is_never_clamped():
    temp = Temperature([2.0, 8.5], "ctkd", 1.0, 16.0, period=10)
    torch.testing.assert_close(temp(0), torch.tensor([2.0, 8.5]))
    assert temp.logit_scale[1].item() == pytest.approx(0.0, abs=1e-6)  # the middle of the range: θ = 0
    with torch.no_grad():
        temp.logit_scale.copy_(torch.tensor([40.0, -40.0]))
    temp.clamp_()
    assert temp.logit_scale.tolist() == [40.0, -40.0]
    torch.testing.assert_close(temp(0), torch.tensor([16.0, 1.0]))
    for bad in (1.0, 16.0, 20.0):
        with pytest.raises(ValueError, match=rf"tau_init = {bad:g} for a ctkd member"):
            Temperature([bad], "ctkd", 1.0, 16.0, period=10)


def test_ctkd_moves_T_to_raise_the_students_loss():
    # period 1: λ(0) = 0, so T does not move at step 0; λ(1) = −1, a full reversal at step 1. After
    # two steps T has moved once, along +∂L/∂T at step 1: the loss goes up, the student's goes down.
    base = ["temperature.period=1", *grid("[4.0]", '["ctkd"]', "[0.0, 0.5, 0.9]", "[true, false]", "[0.2, 1.0]", "[4]")]
    rows = config.members(load("steps=1", *base))
    assert {r["tau_init"] for r in rows} == {8.5}
    one = engine.train_population(load("steps=1", *base), rows, CPU)
    exp = load("steps=2", *base)
    task = Distill(exp, rows, CPU)
    tau = torch.full((len(rows),), 8.5)
    torch.testing.assert_close(one["params"]["logit_scale"], torch.zeros(len(rows)))  # λ(0) = 0: no move
    grad_tau = task.step(students(one["params"]), tau, task.batch(1)).grad_tau
    two = engine.train_population(exp, rows, CPU)
    moved = 1 + 15 * torch.sigmoid(two["params"]["logit_scale"]) - 8.5
    alpha = torch.tensor([r["alpha"] for r in rows])
    assert (moved[alpha == 0] == 0).all() and (grad_tau[alpha == 0] == 0).all()  # no soft term, no pull
    assert (torch.sign(moved[alpha > 0]) == torch.sign(grad_tau[alpha > 0])).all()
    assert (moved[alpha > 0] != 0).all()


def test_ctkd_T_stays_in_its_range_under_huge_steps():
    exp = load(
        "steps=20",
        "log_every=1",
        "optimizer.tau_lr=100.0",
        "temperature.period=2",
        *grid("[4.0]", '["ctkd", "fixed"]', "[0.9]", "[true, false]", "[1.0]", "[0]"),
    )
    rows = config.members(exp)
    out = engine.train_population(exp, rows, CPU)
    log = out["log"].frame()
    ctkd = [r["member"] for r in rows if r["tau_mode"] == "ctkd"]
    tau = log[(log.metric == "tau") & log.member.isin(ctkd)]["value"]
    assert ((tau >= 1.0) & (tau <= 16.0)).all() and tau.nunique() > 1
    theta = out["params"]["logit_scale"][ctkd]
    assert (theta.abs() > math.log(16)).any()  # far outside the learnable clamp: the sigmoid bounds T, not a clamp


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_tiny_full_sweep_through_the_cli(tmp_path):
    sets = [*TEACHER, "steps=10", "log_every=5", "eval_every=5"]
    args = ["sweep", "digits_kd", *[a for s in sets for a in ("--set", s)], "--results", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    members = pd.read_csv(next(tmp_path.glob("digits_kd/*/members.csv")))
    # 5 fixed T, and one cosine, linear and ctkd member, × 3 α × 2 T² settings × 3 fractions × 3 seeds
    assert len(members) == (5 + 3) * 3 * 2 * 3 * 3
    assert (members["status"] == "ok").all()
    expected = {
        "accuracy",
        "val_accuracy",
        "agreement",
        "ece",
        "kl_teacher",
        "teacher_accuracy",
        "loss_soft",
        "grad_soft_params_init",
    }
    assert expected <= set(members.columns)
    assert members["teacher_accuracy"].nunique() == 1
    assert "teacher's gain over α = 0" in result.output
    assert "learned and scheduled T against the best fixed T" in result.output
    assert "gain by T, and against T = 1" in result.output


def test_help_says_what_alpha_weights():
    result = CliRunner().invoke(app, ["sweep", "--help"], env={"COLUMNS": "200", "_TYPER_FORCE_DISABLE_TERMINAL": "1"})
    assert result.exit_code == 0
    assert "α weights the distillation term" in result.output
