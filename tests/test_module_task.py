"""The generic module task: any nn.Module as a population via torch.func, member k = its standalone run."""

from __future__ import annotations

import tomllib

import pytest
import torch
from conftest import assert_population_matches_reference, default_float64
from torch import nn

from tau_lab import config, engine
from tau_lab.errors import UserError
from tau_lab.tasks.module import ModuleTask, train_reference

CPU = torch.device("cpu")


class Towers(nn.Module):
    """Two small towers with a nonlinearity and a LayerNorm, forward(a, b) -> (u, v)."""

    def __init__(self, d_in: int = 6, dim: int = 4) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(d_in, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, dim))
        self.b = nn.Sequential(nn.Linear(d_in, dim))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(a), self.b(b)


def towers(dim: int = 4) -> nn.Module:
    return Towers(dim=dim)


def with_batchnorm(dim: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(6, dim), nn.BatchNorm1d(dim))


CALLS = {"pairs": 0}


def pairs(n: int = 60) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    CALLS["pairs"] += 1
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, 6, generator=g)
    a = centres[labels] + 0.5 * torch.randn(n, 6, generator=g)
    b = centres[labels] + 0.5 * torch.randn(n, 6, generator=g)
    return a, b, labels


class PairsDataset(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.a, self.b, self.labels = pairs()

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.a[i], self.b[i], self.labels[i]


def dataset() -> torch.utils.data.Dataset:
    return PairsDataset()


RAW = {
    "task": "module",
    "steps": 6,
    "log_every": 2,
    "eval_every": 3,
    "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
    "model": {"factory": "test_module_task:towers", "kwargs": {"dim": 4}, "loss": "clip"},
    "data": {"factory": "test_module_task:pairs", "batch_size": 8},
    "sweep": {"tau": [0.1, 0.5], "tau_mode": ["fixed", "learnable", "cosine"], "seeds": [0, 1]},
}


def _experiment(**changes) -> config.Experiment:
    raw = {**RAW, **changes}
    return config.validate(raw, "test")


@pytest.mark.parametrize("loss", ["clip", "nt_xent", "info_nce", "siglip"])
def test_member_reproduces_standalone_training_float64(loss):  # siglip: logit_bias too, without weight decay
    with default_float64():
        exp = _experiment(model={**RAW["model"], "loss": loss})
        assert_population_matches_reference(exp, train_reference, rtol=1e-9, atol=1e-12)


def test_a_sweep_writes_the_contrastive_tables_and_loads_its_data_once(tmp_path):
    exp = _experiment(memory_budget_mb=0.06)  # two members per chunk: every chunk's task reads the data
    exp.name = "module"
    before = CALLS["pairs"]
    _, out = engine.run_sweep(exp, "module", root=tmp_path)
    assert len(engine.chunks(exp, config.members(exp))) > 1
    assert CALLS["pairs"] == before + 1  # the memory estimate and every chunk share one call of the factory
    members = out["members"]
    assert len(members) == 2 * 2 * 2 + 2  # (τ × fixed/learnable + cosine once) × seeds
    assert (members.status == "ok").all()
    for column in ["recall_a2b", "recall_b2a", "alignment", "uniformity", "tolerance"]:
        assert members[column].notna().all(), column
    assert members.recall_a2b.between(0, 1).all()


def test_members_of_one_seed_share_their_initial_weights_and_seeds_differ():
    exp = _experiment()
    rows = config.members(exp)
    task = ModuleTask(exp, rows, CPU)
    w = task.params["a.0.weight"]  # [K, 8, 6]
    seeds = [r["seed"] for r in rows]
    same = [k for k, s in enumerate(seeds) if s == 0]
    other = seeds.index(1)
    assert all(torch.equal(w[same[0]], w[k]) for k in same)
    assert not torch.equal(w[same[0]], w[other])
    torch.manual_seed(0)
    torch.testing.assert_close(w[same[0]], Towers().a[0].weight.detach())


def test_a_dataset_gives_the_same_pairs_as_tensors():
    from_tensors = ModuleTask(_experiment(), config.members(_experiment()), CPU)
    exp = _experiment(data={**RAW["data"], "factory": "test_module_task:dataset"})
    from_dataset = ModuleTask(exp, config.members(exp), CPU)
    torch.testing.assert_close(from_dataset.train_a, from_tensors.train_a)
    torch.testing.assert_close(from_dataset.test_labels, from_tensors.test_labels)


@pytest.mark.parametrize(
    ("section", "factory", "message"),
    [
        ("model", "test_module_task:with_batchnorm", "the module has buffers .*running_mean"),
        ("model", "test_module_task:nowhere", "has no attribute 'nowhere'"),
        ("model", "no_such_package.models:net", "cannot import no_such_package"),
        ("data", "missing/file.py:pairs", "no file missing/file.py"),
        ("data", "towers", "expected 'package.module:function'"),
        ("model", "test_module_task:pairs", "unexpected keyword argument 'dim'"),
    ],
)
def test_a_bad_factory_is_one_line_naming_the_key(section, factory, message):
    exp = _experiment(**{section: {**RAW[section], "factory": factory}})
    with pytest.raises(UserError, match=f"{section}.factory = .*{message}"):
        ModuleTask(exp, config.members(exp), CPU)


def test_the_python_api_runs_a_study_with_functions_passed_in(tmp_path):
    import tau_lab

    raw = {**RAW, "model": {"loss": "clip", "kwargs": {"dim": 4}}, "data": {"batch_size": 8}}
    raw["sweep"] = {"tau": [0.1], "tau_mode": ["fixed"], "seeds": [0, 1]}
    run = tau_lab.sweep(raw, model=towers, data=pairs, results=tmp_path)
    assert run.run_dir.parent == tmp_path / "study"
    assert (run.run_dir / "config.toml").read_text().count("test_module_task:towers") == 1
    assert list(run.members.seed) == [0, 1]
    assert run.members.recall_a2b.between(0, 1).all()
    with pytest.raises(UserError, match="define it at the top level"):
        tau_lab.sweep(raw, model=lambda: Towers(), data=pairs, results=tmp_path)


def test_a_learning_rate_axis_gives_each_member_its_own_rate_float64():
    with default_float64():
        sweep = {"tau": [0.1], "tau_mode": ["fixed", "learnable"], "seeds": [0], "lr": [0.003, 0.03]}
        exp = _experiment(sweep=sweep)
        rows = config.members(exp)
        assert sorted({r["lr"] for r in rows}) == [0.003, 0.03]
        assert tomllib.loads(config.dumps(exp))["sweep"]["lr"] == [0.003, 0.03]
        assert_population_matches_reference(exp, train_reference, rtol=1e-9, atol=1e-12)
        # the rate matters: the two rates end apart
        out = engine.train_population(exp, rows, CPU)["params"]["a.0.weight"]
        assert (out[0] - out[1]).abs().max() > 1e-3
