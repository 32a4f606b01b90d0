"""CLIP in miniature: end to end, CLIP's logit_scale, caption noise per member, false negatives, prompt
ensembling, and standalone equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_population_matches_reference, default_float64

from tau_lab import config, engine, losses, metrics
from tau_lab.data.captions import SYNONYMS
from tau_lab.data.digits import load_digits
from tau_lab.tasks import contrastive
from tau_lab.tasks.clip import CLIP, MiniCLIP, encode_image, encode_text, train_reference

CPU = torch.device("cpu")
SMALL = ["steps=20", "sweep.seeds=[0]", "data.batch_size=32", "model.hidden=32", "model.width=16", "model.embed_dim=8"]


def _load(*overrides: str) -> config.Experiment:
    experiment, _ = config.load_experiment("digits_clip", [*SMALL, *overrides])
    return experiment


def test_study_runs_end_to_end(tmp_path):
    exp = _load("log_every=10", "eval_every=10")
    _, out = engine.run_sweep(exp, "digits_clip", root=tmp_path)
    members = out["members"]
    assert len(members) == 6 * 2 * 2  # τ × mode × caption noise
    assert (members.status == "ok").all()
    columns = ["recall_i2t", "recall_t2i", "zero_shot_single", "zero_shot_ensemble", "false_negative_rate"]
    geometry = ["alignment.z", "uniformity.z", "tolerance.z", "uniformity.h", "tolerance.h"]
    for column in [*columns, *geometry, "false_negative_mass", "tau", "logit_scale"]:
        assert members[column].notna().all(), column
    for column in columns[:4]:
        assert members[column].between(0, 1).all()
    metrics_df = out["metrics"]
    assert {"tau", "logit_scale", "loss"} <= set(metrics_df.metric)
    assert sorted(metrics_df[metrics_df.metric == "zero_shot_ensemble"].step.unique()) == [0, 10, 20]


def test_learnable_logit_scale_starts_at_clips_value_and_stays_in_the_clamp():
    exp = _load("sweep.tau=[0.07]", "sweep.tau_mode=['learnable']", "optimizer.tau_lr=1.0", "log_every=1")
    rows = config.members(exp)
    log = engine.train_population(exp, rows, CPU)["log"].frame()
    scale = log[log.metric == "logit_scale"].sort_values("step").value
    assert scale.iloc[0] == pytest.approx(math.log(1 / 0.07), abs=1e-6)  # 2.659260, a scale of 14.29
    assert scale.between(0 - 1e-6, math.log(100) + 1e-6).all()  # CLIP's clamp: a scale of at most 100
    assert scale.nunique() > 1


def test_caption_noise_per_member_is_exact_and_nested_within_a_seed():
    noise = ["sweep.caption_noise=[0.0, 0.1, 0.3]", "sweep.seeds=[0, 1]"]
    exp = _load("sweep.tau=[0.07]", "sweep.tau_mode=['fixed']", *noise)
    rows = config.members(exp)
    task = CLIP(exp, rows, CPU)
    wrong = task.caption_digit != task.train_y  # [K, N]
    n = len(task.train_y)
    assert wrong.sum(1).tolist() == [round(r["caption_noise"] * n) for r in rows]
    assert not (wrong[1] & ~wrong[2]).any()  # seed 0: the 0.1 level's wrong captions are among the 0.3 level's
    assert not torch.equal(wrong[2], wrong[5])  # another seed, other captions
    # each caption's bag of words holds the word or the numeral of the digit it names
    synonyms = torch.tensor([[task.vocab.index[w] for w in pair] for pair in SYNONYMS])  # [10, 2]
    for k in (2, 5):
        named = task.caption_bag[k].gather(1, synonyms[task.caption_digit[k]])  # [N, 2]
        assert (named > 0).any(1).all()


def test_false_negative_rate_counts_same_digit_captions_in_the_batch():
    exp = _load("sweep.tau=[0.07]", "sweep.tau_mode=['fixed']", "sweep.caption_noise=[0.0, 0.3]")
    rows = config.members(exp)
    task = CLIP(exp, rows, CPU)
    got = task.diagnostics(task.params, torch.tensor([0.07, 0.07]), step=5)["false_negative_rate"]
    idx = task.indices(5)
    for k in range(len(rows)):
        images, texts = task.train_y[idx[k]].tolist(), task.caption_digit[k, idx[k]].tolist()
        b = len(images)
        count = sum(images[i] == texts[j] for i in range(b) for j in range(b) if i != j)
        assert got[k].item() == pytest.approx(count / (b * (b - 1)))
    assert 0.03 < got[0] < 0.2  # about 1/10 for ten balanced digits


def test_prompt_ensemble_is_the_renormalised_mean_of_normalised_prompts():
    exp = _load("sweep.tau=[0.07]", "sweep.tau_mode=['fixed']")
    rows = config.members(exp)
    task = CLIP(exp, rows, CPU)
    prompts = task.prompts["ensemble"]  # [P, 10, V]
    classes = task._classes(task.params, prompts)  # [K, 10, D]
    each = F.normalize(torch.stack([encode_text(task.params, task.members(p)) for p in prompts]), dim=-1)
    torch.testing.assert_close(classes, F.normalize(each.mean(0), dim=-1))
    single = task._classes(task.params, task.prompts["single"])
    one = F.normalize(encode_text(task.params, task.members(task.prompts["single"][0])), dim=-1)
    torch.testing.assert_close(single, one)
    # zero-shot accuracy is the accuracy of the nearest class embedding
    u = F.normalize(encode_image(task.params, task.members(task.test_x)), dim=-1)
    got = task.evaluate(task.params)["zero_shot_ensemble"]
    torch.testing.assert_close(got, metrics.accuracy(u @ classes.transpose(1, 2), task.test_y))


def test_member_reproduces_standalone_training_float64():
    with default_float64():
        exp = _load(
            "steps=6",
            "optimizer.name='sgd'",
            "optimizer.lr=0.1",
            "sweep.tau=[0.07]",
            "sweep.tau_mode=['fixed', 'learnable', 'linear']",
            "sweep.caption_noise=[0.0, 0.3]",
            "sweep.seeds=[0, 1]",
        )
        assert_population_matches_reference(exp, train_reference, rtol=1e-9, atol=1e-12)


def test_a_batch_larger_than_the_training_images_is_clamped_and_recorded(capsys):
    exp = _load("data.batch_size=5000")
    n_train = len(load_digits(0.25, 0).train_y)
    assert exp.data.batch_size == n_train
    assert capsys.readouterr().err == (
        f"warning: data.batch_size = 5000 is larger than the {n_train} training images: using batch_size = {n_train}\n"
    )
    assert f"batch_size = {n_train}" in config.dumps(exp)


def _member_network(task: CLIP, exp: config.Experiment, k: int) -> MiniCLIP:
    """Member ``k`` of the population as its own ``nn.Module``: an independent forward pass."""
    net = MiniCLIP(len(task.vocab), **exp.model.model_dump())
    net.load_state_dict({name: p[k] for name, p in task.params.items()})
    return net


def test_geometry_is_measured_on_the_joint_space_z_and_the_image_towers_h():
    with default_float64():
        exp = _load("sweep.tau=[0.07]", "sweep.tau_mode=['fixed']", "sweep.seeds=[0, 1]")
        task = CLIP(exp, config.members(exp), CPU)
        out = task.evaluate(task.params)
        y = task.test_y
        for k in (0, 1):
            net = _member_network(task, exp, k)
            h = F.relu(net.image(task.test_x))
            u, v = net.image_projection(h), net.encode_text(task.test_bags)
            expected = {
                "alignment.z": metrics.alignment(u, v),
                "uniformity.z": metrics.uniformity(u),
                "tolerance.z": metrics.tolerance(u, y),
                "uniformity.h": metrics.uniformity(h),
                "tolerance.h": metrics.tolerance(h, y),
            }
            for name, value in expected.items():
                assert out[name][k].item() == pytest.approx(value.item(), rel=1e-12), name
        # no plain names, and no alignment of h: the text tower's features are another space before projection
        assert not {"uniformity", "tolerance", "alignment", "alignment.h"} & set(out)


def test_false_negative_mass_on_a_hand_made_batch():
    # rows positive first; column 0 never counts, even when it has the anchor's class
    sims = torch.tensor([[[0.9, 0.5, 0.1], [0.8, 0.2, 0.7]]])
    same = torch.tensor([[[True, True, False], [True, False, True]]])
    e = math.exp
    row0 = e(1.0) / (e(1.8) + e(1.0) + e(0.2))  # s / 0.5
    row1 = e(1.4) / (e(1.6) + e(0.4) + e(1.4))
    got = contrastive.false_negative_mass(sims, same, torch.tensor([0.5]))
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_false_negative_mass_weighs_each_images_same_digit_captions():
    exp = _load("data.batch_size=6", "sweep.tau=[0.07, 1.0]", "sweep.tau_mode=['fixed']", "sweep.caption_noise=[0.3]")
    rows = config.members(exp)
    task = CLIP(exp, rows, CPU)
    tau = torch.tensor([0.07, 1.0])
    got = task.diagnostics(task.params, tau, step=2)["false_negative_mass"]
    idx = task.indices(2)[0]
    images, texts = task.train_y[idx].tolist(), task.caption_digit[0, idx].tolist()
    net = _member_network(task, exp, 0)
    u = F.normalize(net.encode_image(task.train_x[idx]), dim=-1)
    v = F.normalize(net.encode_text(task.caption_bag[0, idx]), dim=-1)
    for k, t in enumerate(tau.tolist()):
        masses = []
        for i in range(6):
            weight = [math.exp((u[i] @ v[j]).item() / t) for j in range(6)]
            masses.append(sum(weight[j] for j in range(6) if j != i and texts[j] == images[i]) / sum(weight))
        assert got[k].item() == pytest.approx(sum(masses) / 6, rel=1e-5)
    assert got[0] > 0  # the batch has same-digit captions


def _dropped_columns_loss(u: torch.Tensor, v: torch.Tensor, tau: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """The excluding loss written another way: each row's (column's) softmax over the kept entries only."""
    logits = F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T / tau
    b = len(logits)
    rows = [torch.logsumexp(logits[i][~exclude[i]], 0) - logits[i, i] for i in range(b)]
    cols = [torch.logsumexp(logits[:, j][~exclude[:, j]], 0) - logits[j, j] for j in range(b)]
    return (torch.stack(rows).mean() + torch.stack(cols).mean()) / 2


def test_clip_loss_rows_with_exclusions_drops_the_excluded_pairs_with_a_finite_tau_gradient():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64)
    exclude = torch.zeros(2, 5, 5, dtype=torch.bool)
    exclude[1, 0, 3] = exclude[1, 3, 0] = exclude[1, 2, 4] = exclude[1, 4, 1] = True
    tau = torch.tensor([0.07, 0.07], dtype=torch.float64, requires_grad=True)
    got = losses.clip_loss_rows(u, v, u, v, tau, 0, exclude)  # the whole batch's rows
    torch.testing.assert_close(got[0], losses.clip_loss(u[0], v[0], tau[0]), rtol=1e-13, atol=1e-13)  # none excluded
    t = tau[1].detach().requires_grad_()
    expected = _dropped_columns_loss(u[1], v[1], t, exclude[1])
    torch.testing.assert_close(got[1], expected, rtol=1e-13, atol=1e-13)
    assert got[1].item() != pytest.approx(got[0].item())  # the exclusion changed the loss
    (grad,) = torch.autograd.grad(got[1], tau)
    (grad_expected,) = torch.autograd.grad(expected, t)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[1], grad_expected, rtol=1e-12, atol=1e-12)


def test_masking_members_leave_out_same_digit_pairs_and_the_others_train_on_the_clip_loss():
    grid = ["sweep.tau=[0.07]", "sweep.tau_mode=['fixed']", "sweep.caption_noise=[0.0]"]
    exp = _load(*grid, "sweep.mask_false_negatives=[false, true]")
    rows = config.members(exp)
    assert [r["mask_false_negatives"] for r in rows] == [False, True]
    task = CLIP(exp, rows, CPU)
    batch = task.batch(4)
    tau = torch.tensor([0.07, 0.07])
    out = task.step(task.params, tau, batch)
    u, v = encode_image(task.params, batch.images), encode_text(task.params, batch.bags)
    torch.testing.assert_close(out.loss[0], losses.clip_loss(u[0], v[0], 0.07))
    exclude = batch.same[1] & ~torch.eye(32, dtype=torch.bool)
    torch.testing.assert_close(out.loss[1], _dropped_columns_loss(u[1], v[1], torch.tensor(0.07), exclude))
    assert out.loss[1] < out.loss[0]  # fewer negatives in the denominators
    assert torch.isfinite(out.grad_tau).all()
