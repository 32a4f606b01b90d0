"""Live monitoring: the TensorBoard series of every member equal the metrics table, resumed runs included."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from typer.testing import CliRunner

import tau_lab
from tau_lab import config, engine, monitor, results
from tau_lab.cli import app
from tau_lab.errors import UserError
from tau_lab.tasks.quadrants import Quadrants

SMALL = ["steps=40", "log_every=10", "eval_every=20", "sweep.tau=[0.05, 0.5]", "sweep.seeds=[0]"]
ALL = {"scalars": 0, "tensors": 0}  # EventAccumulator keeps every event, not a reservoir sample


def _run(*args: str):
    return CliRunner().invoke(app, list(args), env={"_TYPER_FORCE_DISABLE_TERMINAL": "1", "NO_COLOR": "1"})


def _series(run: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, object]]:
    """A TensorBoard run's scalar series (tag → [(step, value)]) and the hparams of its session start."""
    events = EventAccumulator(str(run), size_guidance=ALL)
    events.Reload()
    series = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    (content,) = events.PluginTagToContent("hparams").values()
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    return series, hparams


def _assert_run_matches(run: Path, metrics: pd.DataFrame, grid: dict[str, object]) -> None:
    """A TensorBoard run holds each metric of a member's table (``metrics``), at the table's steps, with its
    float32 values, and the member's grid values as hparams."""
    series, hparams = _series(run)
    assert set(series) == set(metrics.metric)
    for metric, table in metrics.groupby("metric"):
        steps, values = zip(*series[metric], strict=True)
        assert list(steps) == table.step.tolist()  # each step once, in order
        np.testing.assert_array_equal(np.float32(values), table.value.to_numpy())  # NaN where NaN
    assert hparams == grid


def _assert_matches(logdir: Path, metrics: pd.DataFrame, members: pd.DataFrame) -> None:
    """Every member of a sweep has its run ``member-<id>`` matching the metrics table."""
    assert sorted(p.name for p in logdir.iterdir()) == sorted(f"member-{m}" for m in members.member)
    for row in members.itertuples():
        grid = {"tau_mode": row.tau_mode, "tau_init": row.tau_init, "seed": row.seed}
        _assert_run_matches(logdir / f"member-{row.member}", metrics[metrics.member == row.member], grid)


def test_sweep_writes_every_members_series_equal_to_the_metrics_table(tmp_path):
    # a memory budget of two members per chunk: two populations, each closing its writers when it ends
    budget = 2.5 * Quadrants.member_bytes(config.load_experiment("quadrants", SMALL)[0]) / 2**20
    args = [arg for item in [*SMALL, f"memory_budget_mb={budget}"] for arg in ("--set", item)]
    result = _run(
        "sweep", "quadrants", *args, "--results", str(tmp_path / "r"), "--tensorboard", str(tmp_path / "tb"), "--quiet"
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "r" / "quadrants").iterdir()
    metrics, members = pd.read_parquet(run_dir / "metrics.parquet"), pd.read_parquet(run_dir / "members.parquet")
    assert len(members) == 4 and {"loss", "grad_norm", "tau", "alignment"} <= set(metrics.metric)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["chunk-0.pt", "chunk-1.pt"]
    _assert_matches(tmp_path / "tb" / "quadrants" / run_dir.name, metrics, members)


def test_a_run_resumed_after_a_crash_holds_each_step_once(tmp_path, monkeypatch):
    # a checkpoint at step 20; the crash in step 37 (in the block of steps 36–39: blocks of 5 steps) comes after
    # step 30 was logged (and written to TensorBoard): the resume starts again from the checkpoint of step 20 and
    # logs steps 20 and 30 a second time
    experiment, _ = config.load_experiment("quadrants", [*SMALL, "checkpoint_every=20", "block_steps=5"])
    rows = config.members(experiment)
    real_batches = Quadrants.batches

    def batches_then_crash(task, start, n):
        if start <= 37 < start + n:
            raise RuntimeError("the machine went away")
        return real_batches(task, start, n)

    monkeypatch.setattr(Quadrants, "batches", batches_then_crash)
    files = results.run_files(config.dumps(experiment), engine.resolve_device("cpu"))
    run_dir, tb = results.new_run_dir("quadrants", tmp_path, files), tmp_path / "tb"
    with pytest.raises(RuntimeError):
        engine.run_sweep(experiment, "quadrants", run_dir=run_dir, sink=monitor.TensorBoardSink(tb, rows))
    crashed, _ = _series(tb / "member-0")
    assert [step for step, _ in crashed["loss"]] == [0, 10, 20, 30]
    monkeypatch.undo()
    time.sleep(1.05)  # event files are ordered by their name, which starts with the second they were opened in
    _, out = engine.run_sweep(experiment, "quadrants", run_dir=run_dir, sink=monitor.TensorBoardSink(tb, rows))
    _, full = engine.run_sweep(experiment, "quadrants", root=tmp_path / "full")
    pd.testing.assert_frame_equal(out["metrics"], full["metrics"])
    _assert_matches(tb, out["metrics"], out["members"])


def test_the_python_api_writes_the_same_series(tmp_path):
    run = tau_lab.sweep("quadrants", overrides=SMALL, results=tmp_path / "r", tensorboard=tmp_path / "tb")
    _assert_matches(tmp_path / "tb" / "quadrants" / run.run_dir.name, run.metrics, run.members)


def test_search_writes_one_run_per_trial(tmp_path):
    options = ["--trials", "3", "--batch", "2", "--seed", "0", "--pruner", "none", "--set", "steps=20"]
    result = _run(
        "search", "quadrants_search", *options, "--results", str(tmp_path / "r"), "--tensorboard", str(tmp_path / "tb")
    )
    assert result.exit_code == 0, result.output
    study = (tmp_path / "r" / "quadrants_search" / "search-quadrants_search").name
    logdir = tmp_path / "tb" / "quadrants_search" / study
    trials = pd.read_parquet(tmp_path / "r" / "quadrants_search" / study / "trials.parquet")
    assert sorted(p.name for p in logdir.iterdir()) == ["trial-0", "trial-1", "trial-2"]
    for trial in trials.itertuples():
        run_dir, member = Path(trial.user_attrs_run_dir), trial.user_attrs_member
        metrics = pd.read_parquet(run_dir / "metrics.parquet")
        grid = {"tau_mode": trial.params_tau_mode, "tau_init": trial.params_tau, "seed": 0, "trial": trial.number}
        _assert_run_matches(logdir / f"trial-{trial.number}", metrics[metrics.member == member], grid)


@pytest.mark.parametrize("command", [["sweep", "quadrants"], ["search", "quadrants_search", "--trials", "1"]])
def test_without_the_package_one_line_names_the_extra_and_nothing_is_written(tmp_path, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import torch.utils.tensorboard fails
    result = _run(*command, "--results", str(tmp_path / "r"), "--tensorboard", str(tmp_path / "tb"))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --tensorboard needs the tensorboard package: pip install 'tau-lab[tensorboard]'"
    ]
    assert not (tmp_path / "r").exists() and not (tmp_path / "tb").exists()
    with pytest.raises(UserError, match=r"pip install 'tau-lab\[tensorboard\]'"):
        tau_lab.sweep("quadrants", overrides=SMALL, results=tmp_path / "r", tensorboard=tmp_path / "tb")


@given(st.binary(max_size=2000))
@settings(max_examples=200, deadline=None)
def test_the_fast_checksum_is_tensorboards(data):
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    # the other tests read the event files back through TensorBoard's reader, which checks every record's
    # checksums with this pure-Python function (a mismatch ends the file there)
    assert monitor.masked_crc32c(data) == masked_crc32c(data)
