"""The SimCLR study: end to end, τ schedules and clamps in the logs, shared seeds, standalone equivalence,
the NT-Xent of the step, and the k-NN and linear-probe metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_population_matches_reference, default_float64
from sklearn.neighbors import KNeighborsClassifier

from tau_lab import config, engine, losses, metrics
from tau_lab.tasks.simclr import PIXELS, Network, SimCLR, project, represent, train_reference

CPU = torch.device("cpu")
SMALL = [
    "steps=20",
    "sweep.seeds=[0]",
    "data.batch_size=32",
    "data.probe_steps=5",
    "model.hidden=32",
    "model.features=16",
]


def _load(*overrides: str) -> config.Experiment:
    experiment, _ = config.load_experiment("digits_simclr", [*SMALL, *overrides])
    return experiment


def test_study_runs_end_to_end(tmp_path):
    exp = _load("sweep.seeds=[0, 1]", "log_every=10", "eval_every=10")
    run_dir, out = engine.run_sweep(exp, "digits_simclr", root=tmp_path)
    members = out["members"]
    assert len(members) == 2 * (6 + 6 + 1)  # τ × {fixed, learnable} and one cosine member, per seed
    assert (members.status == "ok").all()
    geometry = [f"{m}.{space}" for m in ("alignment", "uniformity", "tolerance") for space in "zh"]
    for column in ("loss", *geometry, "knn_accuracy", "probe_accuracy", "false_negative_mass"):
        assert members[column].notna().all(), column
    assert members.knn_accuracy.between(0.5, 1).all()  # well above chance (0.1) even untrained
    assert members.probe_accuracy.between(0.5, 1).all()
    assert (run_dir / "members.csv").is_file()


def test_cosine_member_logs_tau_max_tau_min_tau_max():
    # period = steps = 20: τ_max at 0, τ_min at 10, τ_max again at 20
    exp = _load("sweep.tau_mode=['cosine']", "log_every=10", "eval_every=20")
    rows = config.members(exp)
    log = engine.train_population(exp, rows, CPU)["log"].frame()
    tau = log[log.metric == "tau"].set_index("step").value
    t = exp.temperature
    assert tau[0] == pytest.approx(t.tau_max) and tau[20] == pytest.approx(t.tau_max)
    assert tau[10] == pytest.approx(t.tau_min)


def test_learnable_tau_stays_in_the_clamp_and_reaches_it():
    # a large τ learning rate drives the members against the clamp; no logged τ leaves it
    exp = _load("sweep.tau_mode=['learnable']", "optimizer.tau_lr=1.0", "log_every=1", "eval_every=20")
    rows = config.members(exp)
    out = engine.train_population(exp, rows, CPU)
    log = out["log"].frame()
    t = exp.temperature
    tau = log[log.metric == "tau"].value
    assert tau.between(t.tau_min * (1 - 1e-6), t.tau_max * (1 + 1e-6)).all()
    scale = log[log.metric == "logit_scale"].value
    assert scale.between(math.log(1 / t.tau_max) - 1e-6, math.log(1 / t.tau_min) + 1e-6).all()
    assert (tau <= t.tau_min * (1 + 1e-6)).any()  # somebody reached the clamp


def test_members_sharing_a_seed_share_weights_and_views():
    exp = _load("sweep.seeds=[0, 1]", "sweep.tau=[0.1, 0.5]", "sweep.tau_mode=['fixed']")
    rows = config.members(exp)
    task = SimCLR(exp, rows, CPU)
    seed = torch.tensor([r["seed"] for r in rows])
    views = task.batch(3)
    for tensor in (task.params["encoder.0.weight"], task.params["head.2.weight"], views):
        assert torch.equal(tensor[0], tensor[1])  # seed 0, τ 0.1 and 0.5
        assert not torch.equal(tensor[0], tensor[2])  # seed 1
    assert (seed == torch.tensor([0, 0, 1, 1])).all()
    assert not torch.equal(views[0, 0], views[0, 1])  # the two views differ
    assert not torch.equal(task.batch(4), views)  # and change from step to step


def test_step_loss_is_nt_xent_with_finite_tau_gradient():
    exp = _load("sweep.tau=[0.05, 1.0]", "sweep.tau_mode=['fixed']")
    rows = config.members(exp)
    task = SimCLR(exp, rows, CPU)
    tau = torch.tensor([0.05, 1.0])
    views = task.batch(0)
    out = task.step(task.params, tau, views)
    z = project(task.params, represent(task.params, views.flatten(1, 2)))
    expected = losses.nt_xent(z[:, :32], z[:, 32:], tau)
    torch.testing.assert_close(out.loss, expected)
    assert torch.isfinite(out.grad_tau).all()
    assert out.sims.shape == (2, 64, 63)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_member_reproduces_standalone_training_float64(optimizer):
    # Fixed, learnable (two τ learning rates and a weight decay, per member) and cosine members of
    # the population against nn.Module + torch.optim runs of each, alone, on the same views. The
    # losses compute in their inputs' dtype, so this is float64 arithmetic on both sides: agreement to
    # ~1e-12, where an error in the data, the seeds or a learning rate shows at 1e-3 and more.
    with default_float64():
        exp = _load(
            "steps=6",
            f"optimizer.name='{optimizer}'",
            "optimizer.lr=0.05" if optimizer == "sgd" else "optimizer.lr=0.003",
            "sweep.tau=[0.1]",
            "sweep.tau_mode=['fixed', 'learnable', 'cosine']",
            "sweep.tau_lr=[0.05, 0.3]",
            "sweep.tau_weight_decay=[0.0, 0.1]",
            "sweep.seeds=[0, 1]",
        )
        assert_population_matches_reference(exp, train_reference, rtol=1e-9, atol=1e-12)


def test_knn_accuracy_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(200, 5, generator=g), torch.randn(60, 5, generator=g)
    bank_labels, labels = torch.randint(4, (200,), generator=g), torch.randint(4, (60,), generator=g)
    knn = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute").fit(bank, bank_labels)
    expected = (torch.from_numpy(knn.predict(queries)) == labels).float().mean()
    stacked = metrics.knn_accuracy(queries.expand(3, -1, -1), bank.expand(3, -1, -1), bank_labels, labels, 20)
    torch.testing.assert_close(stacked, expected.expand(3))


def test_linear_probe_separates_separable_classes_and_members_are_independent():
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(3, 8, generator=g)
    y, y_test = torch.randint(3, (150,), generator=g), torch.randint(3, (50,), generator=g)
    x, x_test = centres[y] + torch.randn(150, 8, generator=g), centres[y_test] + torch.randn(50, 8, generator=g)
    noise, noise_test = torch.randn(150, 8, generator=g), torch.randn(50, 8, generator=g)  # no signal
    both = metrics.linear_probe(torch.stack([x, noise]), y, torch.stack([x_test, noise_test]), y_test)
    assert both[0] == 1.0
    assert both[1] < 0.7
    alone = metrics.linear_probe(noise, y, noise_test, y_test)
    torch.testing.assert_close(both[1], alone)


def _member_network(task: SimCLR, exp: config.Experiment, k: int) -> Network:
    """Member ``k`` of the population as its own ``nn.Module``: an independent forward pass."""
    net = Network(**exp.model.model_dump())
    net.load_state_dict({name: p[k] for name, p in task.params.items()})
    return net


def test_geometry_is_measured_on_the_projection_z_and_on_the_encoder_output_h():
    with default_float64():
        exp = _load("sweep.tau=[0.1, 1.0]", "sweep.tau_mode=['fixed']", "sweep.seeds=[0, 1]")
        task = SimCLR(exp, config.members(exp), CPU)
        out = task.evaluate(task.params)
        y = task.test_y
        for k in (0, 2):  # seed 0 and seed 1
            net = _member_network(task, exp, k)
            h, (h1, h2) = (F.relu(net.encoder(x)) for x in (task.test_x, task.test_views))
            spaces = {"h": (h, h1, h2), "z": (net.head(h), net.head(h1), net.head(h2))}
            for space, (test, one, two) in spaces.items():
                expected = {
                    f"uniformity.{space}": metrics.uniformity(test),
                    f"tolerance.{space}": metrics.tolerance(test, y),
                    f"alignment.{space}": metrics.alignment(one, two),
                }
                for name, value in expected.items():
                    assert out[name][k].item() == pytest.approx(value.item(), rel=1e-12), name
        assert not torch.allclose(out["uniformity.h"], out["uniformity.z"])  # two spaces, two answers
        assert not {"uniformity", "tolerance", "alignment"} & set(out)  # no ambiguous plain names


def test_false_negative_mass_is_the_softmax_weight_on_same_digit_views():
    # a tiny batch by hand: 2B = 8 views, each row's softmax over its twin and the 6 other views
    exp = _load("data.batch_size=4", "sweep.tau=[0.1, 1.0]", "sweep.tau_mode=['fixed']")
    task = SimCLR(exp, config.members(exp), CPU)
    tau = torch.tensor([0.1, 1.0])
    got = task.diagnostics(task.params, tau, step=3)["false_negative_mass"]
    digits = task.train_y[task.draw(0, 3)].tolist() * 2  # views 0..3 then their twins 4..7
    z = F.normalize(_member_network(task, exp, 0)(task.views(0, 3).reshape(8, PIXELS)), dim=-1)
    for k, t in enumerate(tau.tolist()):
        masses = []
        for i in range(8):
            weight = {j: math.exp((z[i] @ z[j]).item() / t) for j in range(8) if j != i}
            same = [j for j in weight if j != (i + 4) % 8 and digits[j] == digits[i]]
            masses.append(sum(weight[j] for j in same) / sum(weight.values()))
        assert got[k].item() == pytest.approx(sum(masses) / 8, rel=1e-5)
    assert len(set(digits[:4])) < 4  # the batch has same-digit views, so the test measures something
