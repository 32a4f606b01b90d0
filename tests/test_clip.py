"""CLIP in miniature: end to end, CLIP's logit_scale, caption noise per member, false negatives, prompt
ensembling, and standalone equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_population_matches_reference, default_float64

from tau_lab import config, engine, metrics
from tau_lab.data.captions import SYNONYMS
from tau_lab.data.digits import load_digits
from tau_lab.tasks.clip import CLIP, encode_image, encode_text, train_reference

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
