"""The population engine against standalone training, its closed-form gradient, resume, divergence."""

from __future__ import annotations

import math
from unittest import mock

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import default_float64
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tau_lab import config, engine, metrics, results
from tau_lab.tasks import quadrants
from tau_lab.tasks.quadrants import Quadrants, smallest, train_reference

CPU = torch.device("cpu")


@pytest.fixture
def float64():
    with default_float64():
        yield


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the seed's SGD, lr 3e-4
        ["optimizer.name='adamw'", "optimizer.lr=0.01", "optimizer.weight_decay=0.1", "optimizer.tau_lr=0.05"],
        ["model.gradients='autograd'", "optimizer.name='adamw'", "optimizer.lr=0.01", "optimizer.tau_lr=0.05"],
    ],
)
def test_member_reproduces_standalone_training_float64(float64, overrides):
    # In float64 the closed-form population step and the seed-style autograd loop agree to
    # rounding, for every member: fixed and learnable, every τ of the seed.
    exp, _ = config.load_experiment("quadrants", ["steps=120", "log_every=1", *overrides])
    rows = config.members(exp)
    out = engine.train_population(exp, rows, CPU)
    log = out["log"].frame()
    for k, row in enumerate(rows):
        encoder, logit_scale, losses = train_reference(exp, row)
        assert _relative(out["params"]["w1"][k], encoder[0].weight.detach()) < 1e-9
        assert _relative(out["params"]["w2"][k], encoder[1].weight.detach()) < 1e-9
        assert out["params"]["logit_scale"][k].item() == pytest.approx(logit_scale.item(), rel=1e-9)
        pop_losses = log[(log.member == k) & (log.metric == "loss")].sort_values("step")["value"].to_numpy()
        assert pop_losses[: exp.steps] == pytest.approx(losses, rel=1e-9)


def test_member_reproduces_standalone_training_float32():
    # The seed's settings in float32: equal within 1e-5 relative over a short run. Members at
    # τ ≤ 0.01 amplify float32 rounding by 1/τ (closed form and autograd order their sums
    # differently), which the float64 test above covers.
    exp, _ = config.load_experiment("quadrants", ["steps=100", "sweep.tau=[0.99, 0.5, 0.05]"])
    rows = config.members(exp)
    out = engine.train_population(exp, rows, CPU)
    for k, row in enumerate(rows):
        encoder, logit_scale, _ = train_reference(exp, row)
        assert _relative(out["params"]["w1"][k], encoder[0].weight.detach()) < 1e-5
        assert _relative(out["params"]["w2"][k], encoder[1].weight.detach()) < 1e-5
        assert out["params"]["logit_scale"][k].item() == pytest.approx(logit_scale.item(), rel=1e-5)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 40),
    columns=st.integers(1, 80),
    k=st.integers(1, 80),
    levels=st.sampled_from([None, 2, 5]),
)
def test_smallest_is_argsorts_first_k_with_and_without_ties(seed, rows, columns, k, levels):
    # the quadrants negatives' draw: the same indices in the same order as argsort, so the random stream of
    # every study is unchanged; levels = a few distinct values per row, so most rows tie
    k = min(k, columns)
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(rows, columns, generator=g)
    if levels:
        values = (values * levels).floor()
    assert torch.equal(smallest(values, k), values.argsort(dim=1)[:, :k])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 300), rows=st.integers(1, 70), n=st.integers(2, 30))
def test_the_index_stream_drawn_in_chunks_is_the_seeds_one_draw(seed, steps, rows, n):
    # the stream as the study's script draws it: every uniform at once, the negatives by argsort; the engine
    # picks them DRAW_ROWS steps at a time (bounded memory) and stores int32
    data = quadrants.Data(points_per_quadrant=n)
    with mock.patch.object(quadrants, "DRAW_ROWS", rows):
        drawn = quadrants.draw_indices(seed, steps, data)
    g = torch.Generator().manual_seed(seed)
    quadrant = torch.randint(0, 4, (steps, 1), generator=g)
    anchor = quadrant * n + torch.randint(0, n, (steps, 1), generator=g)
    positive = quadrant * n + torch.randint(0, n, (steps, 1), generator=g)
    other = torch.rand(steps, 3 * n, generator=g).argsort(dim=1)[:, : data.negatives]
    negatives = other + n * (other >= quadrant * n)
    assert drawn.dtype == torch.int32
    assert torch.equal(drawn.long(), torch.cat([anchor, positive, negatives], dim=1))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), hidden=st.integers(1, 16))
def test_an_encoder_is_the_one_torch_manual_seed_builds_and_the_global_stream_is_left_alone(seed, hidden):
    # tasks.mlp.seeded seeds the CPU generator alone when there is no accelerator (torch.manual_seed's CUDA
    # bookkeeping cost 0.2 ms a module); the weights must still be the study script's
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected = nn.Sequential(nn.Linear(2, hidden, bias=False), nn.Linear(hidden, 2, bias=False), nn.Tanh())
        torch.manual_seed(7)
        following = torch.rand(4)
        torch.manual_seed(7)
        built = quadrants.make_encoder(seed, hidden)
        assert torch.equal(torch.rand(4), following)
    for (name, value), (expected_name, expected_value) in zip(
        built.state_dict().items(), expected.state_dict().items(), strict=True
    ):
        assert name == expected_name and torch.equal(value, expected_value)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    log_tau=st.floats(math.log(1e-3), math.log(2.0)),
    members=st.integers(1, 4),
)
def test_closed_form_gradient_matches_autograd(seed, log_tau, members):
    with default_float64():
        _check_gradient(seed, log_tau, members)


def _check_gradient(seed: int, log_tau: float, members: int) -> None:
    g = torch.Generator().manual_seed(seed)
    exp, _ = config.load_experiment("quadrants", ["steps=1"])
    rows = [{"member": i, "tau_mode": "fixed", "tau_init": 0.1, "seed": i} for i in range(members)]
    task = Quadrants(exp, rows, CPU)
    params = {k: torch.randn(v.shape, generator=g) for k, v in task.params.items()}
    x = torch.rand(members, 5, 2, generator=g) * 2 - 1
    tau = torch.full((members,), math.exp(log_tau)) * torch.rand(members, generator=g).add(0.5)
    out = task.step(params, tau, x)

    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    tau_leaf = tau.clone().requires_grad_()
    feats = torch.tanh(x @ leaves["w1"].transpose(1, 2) @ leaves["w2"].transpose(1, 2))
    sims = F.cosine_similarity(feats[:, :1], feats[:, 1:], dim=-1)
    loss = F.cross_entropy(sims / tau_leaf[:, None], torch.zeros(members, dtype=torch.long), reduction="none")
    grads = torch.autograd.grad(loss.sum(), [leaves["w1"], leaves["w2"], tau_leaf])
    assert out.loss == pytest.approx(loss.detach(), rel=1e-9)
    for mine, theirs in zip([out.grads["w1"], out.grads["w2"], out.grad_tau], grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-7, atol=1e-9)


def test_members_sharing_a_seed_share_weights_and_data():
    exp, _ = config.load_experiment("quadrants", ["steps=10", "sweep.seeds=[0, 1]"])
    rows = config.members(exp)
    task = Quadrants(exp, rows, CPU)
    seeds = torch.tensor([r["seed"] for r in rows])
    same, other = (seeds == 0).nonzero().squeeze(1), (seeds == 1).nonzero().squeeze(1)
    assert (task.params["w1"][same] == task.params["w1"][same[0]]).all()
    assert not torch.equal(task.params["w1"][same[0]], task.params["w1"][other[0]])
    batch = task.batch(3)
    assert (batch[same] == batch[same[0]]).all()
    assert not torch.equal(batch[same[0]], batch[other[0]])


def test_learnable_tau_stays_in_clamp_and_fixed_tau_never_moves():
    # A large τ learning rate pushes learnable members against the clamp.
    exp, _ = config.load_experiment("quadrants", ["steps=300", "optimizer.tau_lr=5.0", "log_every=10"])
    rows = config.members(exp)
    out = engine.tables(rows, [engine.train_population(exp, rows, CPU)])
    metrics = out["metrics"]
    taus = metrics[metrics.metric == "tau"].merge(out["members"][["member", "tau_mode", "tau_init"]], on="member")
    learnable = taus[taus.tau_mode == "learnable"]
    assert learnable.value.between(exp.temperature.tau_min * (1 - 1e-6), exp.temperature.tau_max * (1 + 1e-6)).all()
    assert (learnable.groupby("member").value.agg(lambda v: v.max() - v.min()) > 0).all()
    fixed = taus[taus.tau_mode == "fixed"]
    assert (fixed.value == fixed.tau_init.astype("float32")).all()


def test_diverging_member_is_recorded_and_the_sweep_goes_on(tmp_path):
    # τ = 1e-30 is a legal temperature whose logits overflow float32 at once.
    exp, _ = config.load_experiment(
        "quadrants", ["steps=50", "sweep.tau=[0.05, 1e-30]", "sweep.tau_mode=['fixed']", "sweep.seeds=[0]"]
    )
    run_dir, out = engine.run_sweep(exp, "quadrants", root=tmp_path)
    members = out["members"].set_index("tau_init")
    assert members.loc[1e-30, "status"] == "diverged"
    assert members.loc[1e-30, "diverged_step"] == 0
    assert members.loc[0.05, "status"] == "ok"
    assert math.isfinite(members.loc[0.05, "loss"])
    metrics = out["metrics"]
    assert metrics[(metrics.member == 0) & (metrics.metric == "loss")].value.notna().all()
    assert (run_dir / "members.csv").is_file()


def test_interrupted_run_resumes_to_the_same_tables(tmp_path, monkeypatch):
    exp, _ = config.load_experiment("quadrants", ["steps=200", "log_every=20", "eval_every=50", "checkpoint_every=60"])
    _, full = engine.run_sweep(exp, "quadrants", root=tmp_path / "full")

    real_write = results.atomic_write
    writes = []

    def write_then_die(path, write):
        real_write(path, write)
        if path.suffix == ".pt":
            writes.append(path)
            if len(writes) == 2:  # killed right after the second checkpoint
                raise KeyboardInterrupt

    monkeypatch.setattr(results, "atomic_write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        engine.run_sweep(exp, "quadrants", root=tmp_path / "cut")
    monkeypatch.setattr(results, "atomic_write", real_write)
    run_dir = next((tmp_path / "cut" / "quadrants").iterdir())
    assert set(pd.read_parquet(run_dir / "members.parquet").status) == {"running"}  # the grid, not results
    assert torch.load(run_dir / "checkpoints" / "chunk-0.pt", weights_only=True)["step"] == 120

    resumed_exp, _ = config.load_experiment(str(run_dir / "config.toml"))
    _, resumed = engine.run_sweep(resumed_exp, "quadrants", run_dir=run_dir)
    for name in ("members", "metrics", "embeddings"):
        pd.testing.assert_frame_equal(resumed[name], full[name])
        pd.testing.assert_frame_equal(pd.read_parquet(run_dir / f"{name}.parquet"), full[name])


def test_a_member_pruned_at_an_evaluation_keeps_the_parameters_it_was_evaluated_on():
    # the evaluation reads the parameters its step starts from; a member its pruner stops takes no update from that
    # step on (not even that step's), and the loss of the window it trained through is still logged
    exp, _ = config.load_experiment("quadrants", ["steps=20", "log_every=5", "eval_every=10", "block_steps=3"])
    rows = config.members(exp)
    evaluations = {}

    def prune_member_0_at_10(step, evaluation):
        evaluations[step] = {name: value.clone() for name, value in evaluation.items()}
        return torch.arange(len(rows)) == 0 if step == 10 else None

    out = engine.train_population(exp, rows, CPU, on_eval=prune_member_0_at_10)
    assert out["pruned"].tolist() == [True] + [False] * (len(rows) - 1)
    assert not out["alive"][0] and out["diverged_step"][0] == -1
    for name, at_10 in evaluations[10].items():
        assert at_10[0] == evaluations[20][name][0]  # frozen: the very parameters
        assert (at_10[1:] != evaluations[20][name][1:]).any()  # the others trained on
    log = out["log"].frame()
    loss = log[(log.member == 0) & (log.metric == "loss")].set_index("step")["value"]
    assert loss[[0, 5, 10]].notna().all() and loss[[15, 20]].isna().all()


def test_population_larger_than_budget_runs_in_chunks_with_the_same_results(tmp_path):
    exp, _ = config.load_experiment("quadrants", ["steps=40", "sweep.seeds=[0, 1]"])
    _, whole = engine.run_sweep(exp, "quadrants", root=tmp_path / "a")
    per_member_mb = Quadrants.member_bytes(exp) / 2**20
    small = exp.model_copy(update={"memory_budget_mb": 3.5 * per_member_mb})
    assert [len(c) for c in engine.chunks(small, config.members(small))] == [3, 3, 3, 3, 3, 3, 2]
    run_dir, chunked = engine.run_sweep(small, "quadrants", root=tmp_path / "b")
    pd.testing.assert_frame_equal(chunked["members"], whole["members"])
    pd.testing.assert_frame_equal(chunked["metrics"], whole["metrics"])
    assert len(list((run_dir / "checkpoints").iterdir())) == 7


def test_run_directory_contract(tmp_path):
    exp, _ = config.load_experiment("quadrants", ["steps=30", "log_every=10", "eval_every=15", "sweep.seeds=[0]"])
    run_dir, _ = engine.run_sweep(exp, "quadrants", root=tmp_path)
    for name in ("config.toml", "env.json", "members.parquet", "members.csv", "metrics.parquet", "embeddings.parquet"):
        assert (run_dir / name).is_file(), name
    members = pd.read_parquet(run_dir / "members.parquet")
    assert list(members.columns[:6]) == ["member", "tau_mode", "tau_init", "seed", "status", "diverged_step"]
    assert len(members) == 10
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert list(metrics.columns) == ["member", "step", "metric", "value"]
    assert sorted(metrics.step.unique()) == [0, 10, 15, 20, 30]
    embeddings = pd.read_parquet(run_dir / "embeddings.parquet")
    assert len(embeddings) == 10 * 100 * 3  # members × points × eval steps (0, 15, 30)
    # the resolved config reproduces the run
    again, _ = config.load_experiment(str(run_dir / "config.toml"))
    assert again == exp


def test_autograd_step_gradients_are_the_closed_form_float64():
    """``autograd_step`` (``torch.func.grad``) on a linear member's loss ``L_k = Σ_b (x_b·w_k)² / τ_k``:
    ``∂L/∂w_k = 2 Σ_b (x_b·w_k) x_b / τ_k``, ``∂L/∂τ_k = −L_k/τ_k``; an unused parameter's gradient is zero,
    and the engine's ``no_grad`` around a logging step changes nothing."""
    from tau_lab.tasks.base import autograd_step

    with default_float64():
        g = torch.Generator().manual_seed(3)
        x = torch.randn(5, 4, generator=g)
        params = {"w": torch.randn(3, 4, generator=g), "unused": torch.randn(3, 2, generator=g)}
        tau = torch.tensor([0.1, 0.5, 2.0])

        def loss_fn(p, t):
            s = p["w"] @ x.T  # [K, B]
            return (s**2).sum(1) / t, s

        with torch.no_grad():
            out = autograd_step(loss_fn, params, tau)
        s = params["w"] @ x.T
        loss = (s**2).sum(1) / tau
        torch.testing.assert_close(out.loss, loss, rtol=1e-13, atol=0)
        torch.testing.assert_close(out.grads["w"], 2 * (s @ x) / tau[:, None], rtol=1e-13, atol=0)
        torch.testing.assert_close(out.grads["unused"], torch.zeros(3, 2), rtol=0, atol=0)
        torch.testing.assert_close(out.grad_tau, -loss / tau, rtol=1e-13, atol=0)
        torch.testing.assert_close(out.sims, s, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_evaluate_equals_the_metrics_over_gathered_pairs(dtype):
    # Quadrants.evaluate reads every pair from one cosine matrix; the metrics' own definitions gather each pair's
    # rows. Random weights (some members near collapse: a tiny w2 makes every embedding nearly the same).
    exp, _ = config.load_experiment("quadrants", ["steps=1", "sweep.seeds=[0, 1]"])
    rows = config.members(exp)
    task = Quadrants(exp, rows, CPU)
    g = torch.Generator().manual_seed(3)
    params = {k: torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype) for k, v in task.params.items()}
    params["w2"][0] *= 1e-3
    task.points = task.points.to(dtype)
    got = task.evaluate(params)
    f = task.embed(params)
    i, j = torch.triu_indices(len(task.labels), len(task.labels), offset=1)
    same = task.labels[i] == task.labels[j]
    fn = F.normalize(f, dim=-1)
    expected = {
        "alignment": metrics.alignment(f[:, i[same]], f[:, j[same]]),
        "uniformity": metrics.uniformity(f),
        "tolerance": metrics.tolerance(f, task.labels),
        "cross_similarity": (fn[:, i[~same]] * fn[:, j[~same]]).sum(-1).mean(-1),
    }
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == dtype
        torch.testing.assert_close(got[name], value, rtol=tol, atol=tol, msg=name)
