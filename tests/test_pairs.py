"""Bring-your-own pairs: a known result on separable pairs, one-line errors for bad files, the split,
and retrieval recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tau_lab import config, engine, metrics
from tau_lab.cli import app
from tau_lab.data.pairs import load_pairs, split
from tau_lab.errors import UserError


def _separable(path: Path, n: int = 80, d: int = 8, labels: bool = True) -> Path:
    """Pairs whose ``b`` is a rotation of ``a``: a linear head on each side can align them exactly."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, d))
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    arrays = {"a": a.astype(np.float32), "b": (a @ rotation).astype(np.float32)}
    if labels:
        arrays["labels"] = np.arange(n) % 4
    np.savez(path, **arrays)
    return path


def _experiment(tmp_path: Path, data: Path, *extra: str) -> Path:
    toml = tmp_path / "pairs.toml"
    toml.write_text(
        "\n".join(
            [
                'task = "pairs"',
                "steps = 150",
                "log_every = 50",
                "eval_every = 150",
                "[optimizer]",
                'name = "adamw"',
                "lr = 0.01",
                "[data]",
                f'path = "{data}"',
                "[sweep]",
                "tau = [0.1, 0.3]",
                'tau_mode = ["fixed", "learnable"]',
                *extra,
            ]
        )
        + "\n"
    )
    return toml


@pytest.mark.parametrize("loss", ["clip", "info_nce"])
def test_separable_pairs_reach_recall_one_both_ways(tmp_path, loss):
    toml = _experiment(tmp_path, _separable(tmp_path / "pairs.npz"))
    exp, _ = config.load_experiment(str(toml), [f"model.loss='{loss}'"])
    _, out = engine.run_sweep(exp, "pairs", root=tmp_path / "runs")
    members = out["members"]
    assert (members.status == "ok").all()
    assert (members.recall_a2b == 1.0).all(), members.recall_a2b.tolist()
    assert (members.recall_b2a == 1.0).all(), members.recall_b2a.tolist()
    assert (members.alignment < 0.5).all()
    assert members.tolerance.notna().all()


def test_recall_before_training_is_far_from_one(tmp_path):
    # the known result above is learned, not given: untrained heads do not align the pairs
    exp, _ = config.load_experiment(str(_experiment(tmp_path, _separable(tmp_path / "pairs.npz"))), ["steps=1"])
    rows = config.members(exp)
    log = engine.train_population(exp, rows, torch.device("cpu"))["log"].frame()
    first = log[(log.step == 0) & (log.metric == "recall_a2b")].value
    assert (first < 0.8).all()


def test_pairs_without_labels_have_no_tolerance(tmp_path):
    toml = _experiment(tmp_path, _separable(tmp_path / "pairs.npz", labels=False))
    exp, _ = config.load_experiment(str(toml), ["steps=5", "model.hidden=16"])
    _, out = engine.run_sweep(exp, "pairs", root=tmp_path / "runs")
    assert "tolerance" not in out["members"].columns
    assert out["members"].recall_a2b.notna().all()


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = {"a": np.ones((10, 3), np.float32), "b": np.ones((10, 2), np.float32)}

    def npz(name: str, **arrays: np.ndarray) -> Path:
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        return path

    nan = good["a"].copy()
    nan[7, 1] = np.nan
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    single = tmp_path / "single.npy"
    np.save(single, good["a"])
    return {
        "missing file": (tmp_path / "nowhere.npz", "no such pairs file"),
        "missing array": (npz("no_b", a=good["a"]), "array 'b' is missing (found: a)"),
        "mismatched rows": (npz("rows", a=good["a"], b=good["b"][:9]), "'a' has 10 rows but 'b' has 9"),
        "NaN": (npz("nan", a=nan, b=good["b"]), "array 'a' has 1 NaN or infinite values (the first in row 7)"),
        "not a matrix": (npz("flat", a=good["a"].ravel(), b=good["b"]), "array 'a' has shape (30,)"),
        "bad labels": (npz("labels", **good, labels=np.ones(9, int)), "'labels' has shape (9,)"),
        "float labels": (npz("flabels", **good, labels=np.ones(10)), "'labels' has dtype float64"),
        "not an npz": (text, "not an .npz file"),
        "one array": (single, "holds a single array"),
        "too few": (npz("few", a=good["a"][:3], b=good["b"][:3]), "3 pairs are too few"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "missing array",
        "mismatched rows",
        "NaN",
        "not a matrix",
        "bad labels",
        "float labels",
        "not an npz",
        "one array",
        "too few",
    ],
)
def test_bad_file_is_one_line_naming_the_file_and_exit_code_2(tmp_path, case):
    path, message = _bad_files(tmp_path)[case]
    toml = _experiment(tmp_path, path)
    result = CliRunner().invoke(app, ["sweep", str(toml), "--results", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # rejected before a run directory is made


def test_loader_errors_name_the_file_directly(tmp_path):
    for path, message in _bad_files(tmp_path).values():
        with pytest.raises(UserError) as info:  # the CLI shows it as one line, not a traceback
            load_pairs(path)
        assert str(info.value).startswith(f"{path}: ")
        assert message in str(info.value)
        assert "\n" not in str(info.value)


def test_good_file_loads_as_float32_and_int64(tmp_path):
    pairs = load_pairs(_separable(tmp_path / "pairs.npz"))
    assert pairs.a.dtype == pairs.b.dtype == torch.float32
    assert pairs.labels is not None and pairs.labels.dtype == torch.int64
    assert pairs.a.shape == (80, 8) and pairs.labels.shape == (80,)


def test_split_is_seeded_and_stratified():
    labels = torch.arange(100) % 4
    test = split(100, labels, 0.2, seed=3)
    assert torch.equal(test, split(100, labels, 0.2, seed=3))
    assert not torch.equal(test, split(100, labels, 0.2, seed=4))
    assert [int(test[labels == c].sum()) for c in range(4)] == [5, 5, 5, 5]
    assert int(split(10, None, 0.2, seed=0).sum()) == 2


def test_recall_at_1_by_instance_and_by_label():
    keys = torch.eye(4)
    queries = keys[[0, 1, 3, 2]]  # rows 2 and 3 find each other's partner
    assert metrics.recall_at_1(queries, keys).item() == 0.5
    labels = torch.tensor([0, 0, 1, 1])  # by label, a swap within a class is still a match
    assert metrics.recall_at_1(queries, keys, labels, labels).item() == 1.0
    stacked = metrics.recall_at_1(torch.stack([queries, keys]), torch.stack([keys, keys]))
    assert stacked.tolist() == [0.5, 1.0]


def test_a_batch_larger_than_the_training_pairs_is_clamped_with_one_warning_and_recorded(tmp_path, capsys):
    # 80 pairs, 20% held out: 64 training pairs; the default batch of 256 cannot be drawn without replacement
    toml = _experiment(tmp_path, _separable(tmp_path / "pairs.npz"))
    exp, _ = config.load_experiment(str(toml), ["steps=2"])
    warning = capsys.readouterr().err.strip().splitlines()
    assert warning == ["warning: data.batch_size = 256 is larger than the 64 training pairs: using batch_size = 64"]
    run_dir, _ = engine.run_sweep(exp, "pairs", root=tmp_path / "runs")
    recorded, _ = config.load_experiment(str(run_dir / "config.toml"))
    assert recorded.data.batch_size == 64
    assert capsys.readouterr().err == ""  # the recorded config is the one used: no second warning


def test_contrastive_tasks_log_gradient_norms_of_their_own_parameters_only(tmp_path):
    # the temperature's logit_scale is the engine's: its gradient is grad_norm_tau, not a task parameter's
    exp, _ = config.load_experiment(str(_experiment(tmp_path, _separable(tmp_path / "pairs.npz"))), ["steps=2"])
    rows = config.members(exp)
    names = set(engine.train_population(exp, rows, torch.device("cpu"))["log"].frame().metric)
    assert "grad_norm.logit_scale" not in names
    assert {"grad_norm_tau", "grad_norm.a.0.weight", "grad_norm.b.0.bias"} <= names
