"""SigLIP as a trainable loss of the CLIP task: the loss and its bias against independent formulas, a mixed
CLIP/SigLIP population against standalone runs (the bias's trajectory included), CLIP members untouched by
SigLIP members beside them, and the bias kept out of weight decay."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import default_float64

from tau_lab import config, engine, losses
from tau_lab.config import ConfigError
from tau_lab.optim import build_optimizer
from tau_lab.tasks.clip import CLIP, MiniCLIP, train_reference

CPU = torch.device("cpu")
SMALL = ["steps=6", "log_every=1", "eval_every=6", "data.batch_size=16", "model.hidden=16", "model.width=8"]
SMALL += ["model.embed_dim=8", "sweep.caption_noise=[0.2]", "sweep.tau=[0.1]"]
ADAMW = ["optimizer.name='adamw'", "optimizer.lr=0.02", "optimizer.weight_decay=0.1", "optimizer.tau_lr=0.05"]


def _load(*overrides: str) -> config.Experiment:
    experiment, _ = config.load_experiment("digits_clip", [*SMALL, *overrides])
    return experiment


def _formula(u: torch.Tensor, v: torch.Tensor, tau: float, b: float, exclude: torch.Tensor) -> float:
    """``L = −(1/B) Σ_i Σ_j log σ(z_ij (2·1[i=j] − 1))``, ``z = x·yᵀ/τ + b`` on normalised rows: Python floats."""
    x, y = F.normalize(u, dim=-1).tolist(), F.normalize(v, dim=-1).tolist()
    n, total = len(x), 0.0
    for i in range(n):
        for j in range(n):
            if exclude[i, j]:
                continue
            z = sum(p * q for p, q in zip(x[i], y[j], strict=True)) / tau + b
            sign = 1.0 if i == j else -1.0
            total += math.log(1.0 / (1.0 + math.exp(-sign * z)))
    return -total / n


def test_siglip_loss_value_is_the_formula_float64():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64)
    tau = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    bias = torch.tensor([-10.0, -2.0, 0.5], dtype=torch.float64)
    none = torch.zeros(3, 6, 6, dtype=torch.bool)
    some = none.clone()
    some[1, 0, 2] = some[1, 4, 1] = some[2, 3, 5] = True
    got, dropped = (losses.siglip_loss_rows(u, v, tau, bias, 0, exclude) for exclude in (none, some))
    for k in range(3):
        t, b = tau[k].item(), bias[k].item()
        assert got[k].item() == pytest.approx(_formula(u[k], v[k], t, b, none[k]), rel=1e-13)
        assert dropped[k].item() == pytest.approx(_formula(u[k], v[k], t, b, some[k]), rel=1e-13)
    torch.testing.assert_close(got, losses.siglip_loss(u, v, tau, bias), rtol=1e-14, atol=0)  # checked vs open_clip
    assert dropped[1] < got[1]  # a dropped pair's term was positive


def _population(objectives: list[str], *overrides: str) -> tuple[config.Experiment, list[dict], CLIP]:
    exp = _load(f"sweep.objective={objectives}", "sweep.tau_mode=['fixed', 'learnable']", *overrides)
    rows = config.members(exp)
    return exp, rows, CLIP(exp, rows, CPU)


def test_step_loss_and_bias_gradient_match_autograd_of_an_independent_formula_float64():
    with default_float64():
        exp, rows, task = _population(["clip", "siglip"], "sweep.mask_false_negatives=[false, true]")
        task.params["logit_bias"] = torch.linspace(-10, 1, len(rows))  # a different b per member
        tau = torch.tensor([0.1 + 0.05 * k for k in range(len(rows))])
        batch = task.batch(3)
        out = task.step(task.params, tau, batch)
        eye = torch.eye(16, dtype=torch.bool)
        siglip = [k for k, r in enumerate(rows) if r["objective"] == "siglip"]
        assert len(siglip) == len(rows) // 2
        for k in siglip:
            net = MiniCLIP(len(task.vocab), **exp.model.model_dump())
            net.load_state_dict({name: p[k] for name, p in task.params.items()})
            u, v = net.encode_image(batch.images[k]), net.encode_text(batch.bags[k])
            excluded = batch.same[k] & ~eye if rows[k]["mask_false_negatives"] else torch.zeros_like(eye)
            # the formula in plain autograd ops: log σ(t) = log(1 / (1 + e^{−t})), a double loop of pairs
            b = net.logit_bias
            x, y = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
            terms = [
                torch.log(1 / (1 + torch.exp(-(1.0 if i == j else -1.0) * (x[i] @ y[j] / tau[k] + b))))
                for i in range(16)
                for j in range(16)
                if not excluded[i, j]
            ]
            loss = -torch.stack(terms).sum() / 16
            (grad_b,) = torch.autograd.grad(loss, b)
            assert out.loss[k].item() == pytest.approx(loss.item(), rel=1e-12)
            assert out.grads["logit_bias"][k].item() == pytest.approx(grad_b.item(), rel=1e-10)
            # and in closed form: ∂L/∂b = −(1/B) Σ_kept z_ij σ(−z_ij ℓ_ij)
            z = 2 * eye.double() - 1
            logits = x @ y.T / tau[k] + b
            closed = -(z * torch.sigmoid(-z * logits))[~excluded].sum() / 16
            assert grad_b.item() == pytest.approx(closed.item(), rel=1e-12)
        clip = [k for k in range(len(rows)) if k not in siglip]
        assert (out.grads["logit_bias"][clip] == 0).all()  # CLIP members never read the bias


def test_a_mixed_population_equals_standalone_runs_with_the_bias_trajectory_float64():
    with default_float64():
        # the bias at a rate of its own (optimizer.bias_lr), not the towers'
        grid = [*ADAMW, "sweep.seeds=[0, 1]", "optimizer.bias_lr=0.05"]
        exp, rows, _ = _population(["clip", "siglip"], *grid)
        out = engine.train_population(exp, rows, CPU)
        log = out["log"].frame()
        for k, row in enumerate(rows):
            net, logit_scale, _ = train_reference(exp, row)
            for name, p in net.named_parameters():
                torch.testing.assert_close(out["params"][name][k], p.detach(), rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(out["params"]["logit_scale"][k], logit_scale, rtol=1e-9, atol=1e-12)
            logged = log[(log.member == row["member"]) & (log.metric == "logit_bias")].sort_values("step")
            if row["objective"] == "clip":
                assert logged.value.isna().all()
                assert out["params"]["logit_bias"][k].item() == -10.0  # no gradient, and no weight decay
                continue
            # the bias after each step: the reference trained that many steps; the log holds float32
            trajectory = [-10.0] + [
                train_reference(exp.model_copy(update={"steps": s}), row).model.logit_bias.item()
                for s in range(1, exp.steps + 1)
            ]
            assert logged.value.tolist() == pytest.approx(trajectory, rel=1e-6)
            assert abs(trajectory[-1] - trajectory[0]) > 0.1  # it moved: up to bias_lr per AdamW step


def test_clip_members_are_unchanged_by_siglip_members_beside_them():
    grid = [*ADAMW, "sweep.mask_false_negatives=[false, true]"]
    exp_mixed, rows_mixed, _ = _population(["clip", "siglip"], *grid)
    exp_clip, rows_clip, _ = _population(["clip"], *grid)
    mixed = engine.train_population(exp_mixed, rows_mixed, CPU)
    alone = engine.train_population(exp_clip, rows_clip, CPU)
    clip = [k for k, r in enumerate(rows_mixed) if r["objective"] == "clip"]
    key = ("tau_mode", "mask_false_negatives", "seed")
    assert [tuple(rows_mixed[k][c] for c in key) for k in clip] == [tuple(r[c] for c in key) for r in rows_clip]
    # bit for bit: torch.where's backward gives the unused SigLIP branch exact zeros, and the members'
    # matrix products do not depend on which other members share the population
    for name, p in alone["params"].items():
        assert torch.equal(mixed["params"][name][clip], p), name
    siglip = [k for k, r in enumerate(rows_mixed) if r["objective"] == "siglip"]
    towers = mixed["params"]["image.0.weight"]
    assert not torch.allclose(towers[siglip], towers[clip], rtol=1e-3)  # SigLIP trained its members differently


def test_the_bias_has_no_weight_decay_and_its_own_learning_rate_and_the_towers_keep_theirs():
    exp, rows, task = _population(["clip", "siglip"], *ADAMW)
    optimizer = build_optimizer(exp.optimizer, task.params, rows)
    assert optimizer.weight_decay["logit_bias"].tolist() == [0.0] * len(rows)
    assert optimizer.lr["logit_bias"].tolist() == pytest.approx([0.02] * len(rows))  # the towers' rate
    assert optimizer.weight_decay["image.0.bias"] == optimizer.weight_decay["image.0.weight"] == 0.1
    exp, rows, task = _population(["siglip"], *ADAMW, "optimizer.bias_lr=0.5", "sweep.lr=[0.01, 0.03]")
    optimizer = build_optimizer(exp.optimizer, task.params, rows)
    assert optimizer.lr["logit_bias"].tolist() == [0.5] * len(rows)
    assert sorted(set(optimizer.lr["image.0.weight"].tolist())) == pytest.approx([0.01, 0.03])


def test_bias_init_and_the_objective_axis_are_checked():
    _, rows, task = _population(["siglip"], "model.bias_init=-3.5")
    assert task.params["logit_bias"].tolist() == [-3.5] * len(rows)
    with pytest.raises(ConfigError, match=r"sweep\.objective\.0 = 'sigmoid'.*'clip' or 'siglip'"):
        _load("sweep.objective=['sigmoid']")
    with pytest.raises(ConfigError, match=r"model\.bias_init = inf"):
        _load("model.bias_init=inf")


def test_the_digits_siglip_study_pairs_both_losses_in_each_batch_sizes_population():
    exp, _ = config.load_experiment("digits_siglip")
    populations = engine.chunks(exp, config.members(exp))
    assert [{r["batch_size"] for r in p} for p in populations] == [{32}, {128}, {256}]
    for population in populations:
        settings = {}
        for r in population:
            settings.setdefault((r["seed"], r["tau_mode"], r["tau_init"]), set()).add(r["objective"])
        assert len(settings) == 3 * 2 * 4 and all(s == {"clip", "siglip"} for s in settings.values())
