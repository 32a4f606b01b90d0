"""Batch size as a sweep axis of the contrastive tasks: each size a population of its own, equal to the run
with that ``data.batch_size``; the chunking by size and memory; the members table; bad sizes refused."""

from __future__ import annotations

import tomllib

import pandas as pd
import pytest
import torch
from conftest import default_float64
from test_cli import run
from test_module_task import RAW as MODULE_RAW

from tau_lab import config, engine
from tau_lab.tasks import TASKS
from tau_lab.tasks.simclr import SimCLR

CPU = torch.device("cpu")
SIMCLR = [
    "steps=4",
    "log_every=2",
    "eval_every=4",
    "sweep.seeds=[0, 1]",
    "sweep.tau=[0.1, 0.5]",
    "sweep.tau_mode=['fixed', 'learnable']",
    "data.probe_steps=3",
    "model.hidden=16",
    "model.features=8",
    "model.projection=8",
]
CLIP = [
    "steps=4",
    "log_every=2",
    "eval_every=4",
    "sweep.seeds=[0, 1]",
    "sweep.tau=[0.1, 0.5]",
    "sweep.caption_noise=[0.0]",
    "model.hidden=16",
    "model.width=8",
    "model.embed_dim=8",
]


def _load(study: str, *overrides: str) -> config.Experiment:
    return config.load_experiment(study, list(overrides))[0]


def _sized(experiment: config.Experiment, batch_size: int) -> config.Experiment:
    """``experiment`` without the batch-size axis, at ``data.batch_size = batch_size``."""
    raw = experiment.model_dump(exclude_none=True)
    raw["sweep"].pop("batch_size")
    raw["data"]["batch_size"] = batch_size
    return config.validate(raw, "test")


def _key(row: dict) -> tuple:
    """A member's place in the grid but for its number and batch size."""
    return tuple(sorted((k, v) for k, v in row.items() if k not in ("member", "batch_size")))


@pytest.mark.parametrize(
    ("experiment", "sizes"),
    [
        (lambda: _load("digits_simclr", *SIMCLR, "sweep.batch_size=[16, 40]"), [16, 40]),
        (lambda: _load("digits_clip", *CLIP, "sweep.batch_size=[12, 30]"), [12, 30]),
        (lambda: config.validate(MODULE_RAW | {"sweep": MODULE_RAW["sweep"] | {"batch_size": [4, 10]}}, "t"), [4, 10]),
    ],
    ids=["simclr", "clip", "module"],
)
def test_a_population_of_batch_size_b_is_the_run_with_data_batch_size_b(experiment, sizes):
    with default_float64():
        exp = experiment()
        rows = config.members(exp)
        populations = engine.chunks(exp, rows)
        assert [{r["batch_size"] for r in p} for p in populations] == [{b} for b in sizes]
        for b, population in zip(sizes, populations, strict=True):
            alone = _sized(exp, b)
            alone_rows = config.members(alone)
            assert [_key(r) for r in population] == [_key(r) for r in alone_rows]
            ours = engine.train_population(exp, population, CPU)
            theirs = engine.train_population(alone, alone_rows, CPU)
            for name, p in theirs["params"].items():
                assert torch.equal(ours["params"][name], p), (b, name)
            log, alone_log = ours["log"].frame(), theirs["log"].frame()
            assert log.value.equals(alone_log.value) and log.metric.equals(alone_log.metric)


def test_sizes_are_paired_same_seed_same_initial_weights_and_nested_batches():
    exp = _load("digits_simclr", *SIMCLR, "sweep.batch_size=[16, 40]")
    small, large = engine.chunks(exp, config.members(exp))
    a, b = SimCLR(exp, small, CPU), SimCLR(exp, large, CPU)
    assert (a.batch_size, b.batch_size) == (16, 40)
    for name, p in a.params.items():
        assert torch.equal(p, b.params[name])  # same rows but the size: same weights
    assert a.batch(0).shape[-2] == 16 and b.batch(0).shape[-2] == 40
    assert torch.equal(a.indices(3), b.indices(3)[:, :16])  # a seed's 16 images are the first 16 of its 40
    seed0, seed1 = a.indices(3)[0], a.indices(3)[-1]
    assert not torch.equal(seed0, seed1)


def test_one_population_never_mixes_batch_sizes():
    exp = _load("digits_simclr", *SIMCLR, "sweep.batch_size=[16, 40]")
    with pytest.raises(ValueError, match=r"batch sizes \[16, 40\]"):
        SimCLR(exp, config.members(exp), CPU)


def test_grid_has_batch_size_slowest_and_chunks_cut_each_size_to_its_memory():
    exp = _load("digits_simclr", *SIMCLR, "sweep.batch_size=[400, 1000]")
    rows = config.members(exp)
    assert len(rows) == 2 * 2 * 2 * 2  # sizes × seeds × modes × τ
    assert [r["batch_size"] for r in rows] == [400] * 8 + [1000] * 8
    assert [r["member"] for r in rows] == list(range(16))
    per_member = {b: TASKS["simclr"].member_bytes(_sized(exp, b)) for b in (400, 1000)}
    assert per_member[1000] > per_member[400]
    # a budget of 3 members of 400 fits fewer members of 1000
    exp.memory_budget_mb = 3.5 * per_member[400] / 2**20
    fits = {b: max(1, int(exp.memory_budget_mb * 2**20 // per_member[b])) for b in (400, 1000)}
    assert fits[400] == 3 and fits[1000] < 3
    populations = engine.chunks(exp, rows)
    expected = [min(fits[b], 8 - i) for b in (400, 1000) for i in range(0, 8, fits[b])]
    assert [len(p) for p in populations] == expected
    assert [r for p in populations for r in p] == rows  # in the grid's order: tables() lines them up
    assert all(len({r["batch_size"] for r in p}) == 1 for p in populations)
    # rows whose sizes interleave (a search's trials) still split by size and keep their order
    mixed = [rows[0], rows[8], rows[1], rows[2], rows[9]]
    assert [[r["member"] for r in p] for p in engine.chunks(exp, mixed)] == [[0], [8], [1, 2], [9]]


def test_the_members_table_carries_the_batch_size(tmp_path):
    exp = _load("digits_simclr", *SIMCLR, "sweep.batch_size=[16, 40]", "sweep.tau_mode=['fixed']", "steps=2")
    run_dir, out = engine.run_sweep(exp, "digits_simclr", root=tmp_path)
    members = out["members"]
    assert members.batch_size.tolist() == [16] * 4 + [40] * 4
    assert (members.status == "ok").all() and members.knn_accuracy.notna().all()
    assert tomllib.loads((run_dir / "config.toml").read_text())["sweep"]["batch_size"] == [16, 40]
    assert pd.read_parquet(run_dir / "members.parquet").batch_size.tolist() == [16] * 4 + [40] * 4
    assert pd.read_csv(run_dir / "members.csv").batch_size.tolist() == [16] * 4 + [40] * 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["chunk-0.pt", "chunk-1.pt"]


def test_a_batch_size_larger_than_the_training_set_is_clamped_with_one_warning(capsys):
    exp = _load("digits_simclr", *SIMCLR, "sweep.batch_size=[16, 5000]")
    n_train = exp.data.batch_limit()[0]
    assert exp.sweep.batch_size == [16, n_train]
    warning = capsys.readouterr().err.strip().splitlines()
    assert warning == [
        f"warning: sweep.batch_size = 5000 is larger than the {n_train} training images: using batch_size = {n_train}"
    ]
    assert config.validate(exp.model_dump(exclude_none=True), "again").sweep.batch_size == [16, n_train]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1]", "sweep.batch_size.0 = 1: Input should be greater than or equal to 2"),
        ("[64, 0]", "sweep.batch_size.1 = 0: Input should be greater than or equal to 2"),
        ("[64.5]", "sweep.batch_size.0 = 64.5: Input should be a valid integer"),
        ("[]", "sweep.batch_size = []: List should have at least 1 item"),
        ("'big'", "sweep.batch_size = 'big': Input should be a valid list"),
    ],
)
def test_bad_batch_sizes_are_one_line_and_exit_code_2(value, message):
    result = run("sweep", "digits_simclr", "--set", f"sweep.batch_size={value}", "--steps", "1")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_tasks_without_the_axis_refuse_it():
    with pytest.raises(config.ConfigError, match=r"unknown key 'sweep\.batch_size'"):
        _load("quadrants", "sweep.batch_size=[16]")


def test_pairs_clamps_a_sweep_batch_size_to_its_training_pairs_and_trains_each_size(tmp_path, capsys):
    from test_pairs import _experiment, _separable

    toml = _experiment(tmp_path, _separable(tmp_path / "p.npz"), "batch_size = [8, 500]", "seeds = [0]")
    exp = _load(str(toml), "steps=3", "log_every=1", "eval_every=3")
    assert exp.sweep.batch_size == [8, 64]  # 80 pairs, 20% held out (stratified over 4 labels)
    assert "sweep.batch_size = 500 is larger than the 64 training pairs" in capsys.readouterr().err
    _, out = engine.run_sweep(exp, "pairs", root=tmp_path)
    assert out["members"].batch_size.tolist() == [8] * 4 + [64] * 4 and (out["members"].status == "ok").all()
