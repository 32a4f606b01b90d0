"""Checkpoints: plain tensors only (a crafted file runs no code), one line for a bad file, the configuration
a run was trained with, metrics appended as parts, the last finite τ, progress lines off a terminal."""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from tau_lab import checkpoint, config, engine, results
from tau_lab.errors import UserError
from tau_lab.tasks.quadrants import Quadrants

QUICK = ["steps=40", "log_every=10", "eval_every=20", "checkpoint_every=10", "sweep.tau=[0.1, 0.5]", "sweep.seeds=[0]"]


def _experiment(*overrides: str) -> config.Experiment:
    experiment, _ = config.load_experiment("quadrants", [*QUICK, *overrides])
    return experiment


def _run(tmp_path: Path, *overrides: str) -> tuple[Path, dict[str, pd.DataFrame]]:
    return engine.run_sweep(_experiment(*overrides), "quadrants", root=tmp_path)


class _Payload:
    """What an attacker pickles: unpickling calls ``os.system`` (here: creating a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_pickle_in_a_checkpoint_runs_no_code(tmp_path):
    run_dir, _ = _run(tmp_path)
    path = run_dir / "checkpoints" / "chunk-0.pt"
    marker = tmp_path / "pwned"
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "step": _Payload(marker)}, path)
    with pytest.raises(checkpoint.CheckpointError) as err:
        engine.run_sweep(_experiment(), "quadrants", run_dir=run_dir)
    assert not marker.exists()
    message = str(err.value)
    assert str(path) in message and "delete" in message and "\n" not in message


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b""),  # empty
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(os.urandom(4096)),  # garbage
        lambda p: (p.unlink(), p.mkdir()),  # a directory
        lambda p: p.write_bytes(pickle.dumps({"step": 3}, protocol=2)),  # a plain pickle, not a torch checkpoint
        lambda p: torch.save({"step": 3}, p),  # a torch file, but not a tau-lab checkpoint
    ],
    ids=["empty", "truncated", "garbage", "directory", "pickle", "foreign"],
)
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_the_recovery(tmp_path, damage):
    run_dir, _ = _run(tmp_path)
    checkpoint = run_dir / "checkpoints" / "chunk-0.pt"
    damage(checkpoint)
    with pytest.raises(UserError) as err:
        engine.run_sweep(_experiment(), "quadrants", run_dir=run_dir)
    message = str(err.value)
    assert message.startswith(f"{checkpoint}: ") and "delete" in message and "\n" not in message


def test_deleting_the_damaged_checkpoint_restarts_that_chunk_to_the_same_tables(tmp_path):
    run_dir, full = _run(tmp_path)
    checkpoint = run_dir / "checkpoints" / "chunk-0.pt"
    checkpoint.write_bytes(b"junk")
    checkpoint.unlink()  # what the error line says to do
    _, again = engine.run_sweep(_experiment(), "quadrants", run_dir=run_dir)
    for name in ("members", "metrics", "embeddings"):
        pd.testing.assert_frame_equal(again[name], full[name])


def test_checkpoints_hold_plain_tensors_and_no_metric_log(tmp_path):
    run_dir, out = _run(tmp_path)
    saved = torch.load(run_dir / "checkpoints" / "chunk-0.pt", weights_only=True)
    assert saved["step"] == 41  # finished: steps + 1
    assert "log" not in saved and "output" not in saved
    parts = sorted((run_dir / "metrics").glob("chunk-0-*.parquet"))
    assert len(parts) >= 4  # one per checkpoint and evaluation that had new records
    assert sum(len(pd.read_parquet(p)) for p in parts) == len(out["metrics"])


def test_resume_with_another_configuration_is_refused_naming_the_keys(tmp_path):
    run_dir, _ = _run(tmp_path)
    with pytest.raises(UserError, match=r"steps: 40\.0 → 80\.0.*start a new run") as err:
        engine.run_sweep(_experiment("steps=80"), "quadrants", run_dir=run_dir)  # extending a finished run
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"optimizer\.lr"):
        engine.run_sweep(_experiment("optimizer.lr=0.5"), "quadrants", run_dir=run_dir)
    # the checkpoint holds the configuration too: an edited config.toml does not slip through
    results.write_text(run_dir / "config.toml", config.dumps(_experiment("sweep.tau=[0.1, 0.2]")))
    with pytest.raises(UserError, match=r"chunk-0\.pt: .*members"):
        engine.run_sweep(_experiment("sweep.tau=[0.1, 0.2]"), "quadrants", run_dir=run_dir)


def test_resume_may_change_where_and_how_fast_it_trains(tmp_path):
    run_dir, full = _run(tmp_path)
    moved = _experiment("device='cpu'", "checkpoint_every=5", "description='again'")
    _, again = engine.run_sweep(moved, "quadrants", run_dir=run_dir)
    pd.testing.assert_frame_equal(again["metrics"], full["metrics"])


def test_a_running_run_has_readable_metrics(tmp_path, monkeypatch):
    real_save = torch.save

    def save_then_die(obj, path):
        real_save(obj, path)
        if obj["step"] == 30:
            raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    monkeypatch.undo()
    run_dir = next((tmp_path / "quadrants").iterdir())
    running = results.read_metrics(run_dir)
    assert set(running.step) == {0, 10, 20}  # logged up to the checkpoint at step 30
    _, full = engine.run_sweep(_experiment(), "quadrants", run_dir=run_dir)
    pd.testing.assert_frame_equal(running, full["metrics"][full["metrics"].step < 30].reset_index(drop=True))
    pd.testing.assert_frame_equal(results.read_metrics(run_dir), full["metrics"])


def test_a_diverged_learnable_member_reports_its_last_finite_tau():
    # lr 1e20 blows the model up at the first update, and τ's learning rate sends logit_scale to −∞ with it;
    # the clamp then puts it at τ_max = 1, where the member never trained: it diverges at the next step
    small = ["sweep.seeds=[0]", "data.batch_size=16", "model.hidden=8", "model.width=8", "sweep.caption_noise=[0.0]"]
    grid = ["steps=8", "log_every=8", "eval_every=8", "sweep.tau=[0.02]", "sweep.tau_mode=['learnable']"]
    exp, _ = config.load_experiment(
        "digits_clip", [*small, *grid, "optimizer.name='sgd'", "optimizer.lr=1e20", "optimizer.tau_lr=1e30"]
    )
    rows = config.members(exp)
    out = engine.tables(rows, [engine.train_population(exp, rows, torch.device("cpu"))])
    member = out["members"].iloc[0]
    assert (member["status"], member["diverged_step"]) == ("diverged", 1)
    assert member["logit_scale"] == 0.0  # clamped to ln(1/τ_max)
    assert member["tau"] == pytest.approx(0.02)  # the τ of step 0, its last finite step


@pytest.mark.parametrize(("block_steps", "updates"), [(1, 2), (32, 1)])  # after steps 0–1 and 2; after 0–2
def test_progress_lines_when_stderr_is_not_a_terminal(block_steps, updates, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TAU_LAB_PROGRESS_EVERY", "0")
    engine.run_sweep(_experiment("steps=3", f"block_steps={block_steps}"), "quadrants", root=tmp_path, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == updates
    assert lines[-1].startswith("chunk 1/1: step 3/3 · 4/4 alive · loss ")
    assert "steps/s" in lines[-1] and lines[-1].endswith("left")


def _signal_at(monkeypatch, step: int, signum: int) -> None:
    """``signum`` delivered while the batch of ``step`` is drawn: alone, or in its block's batches."""
    real_batch, real_batches = Quadrants.batch, Quadrants.batches

    def batch_then_signal(task, s):
        if s == step:
            os.kill(os.getpid(), signum)
        return real_batch(task, s)

    def batches_then_signal(task, start, n):
        if start <= step < start + n:
            os.kill(os.getpid(), signum)
        return real_batches(task, start, n)

    monkeypatch.setattr(Quadrants, "batch", batch_then_signal)
    monkeypatch.setattr(Quadrants, "batches", batches_then_signal)


def _ctrl_c_at(monkeypatch, step: int) -> None:
    _signal_at(monkeypatch, step, signal.SIGINT)


# one step at a time it stops after step 23; in blocks of 4 (21–24: log_every 10) after that block
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize(("block_steps", "stopped"), [(1, 24), (4, 25)])
def test_ctrl_c_or_sigterm_checkpoints_the_step_it_stopped_at_and_the_run_resumes_exactly(
    block_steps, stopped, signum, tmp_path, monkeypatch
):
    experiment = _experiment("checkpoint_every=0", f"block_steps={block_steps}")  # only the signal's checkpoint
    _, full = engine.run_sweep(experiment, "quadrants", root=tmp_path / "full")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _signal_at(monkeypatch, 23, signum)
    with pytest.raises(engine.Interrupted) as err:
        engine.run_sweep(experiment, "quadrants", root=tmp_path / "cut")
    monkeypatch.undo()
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # restored
    run_dir = next((tmp_path / "cut" / "quadrants").iterdir())
    assert err.value.run_dir == run_dir and str(err.value).endswith(f"--resume {run_dir}")
    assert err.value.signum == signum
    assert torch.load(run_dir / "checkpoints" / "chunk-0.pt", weights_only=True)["step"] == stopped
    _, resumed = engine.run_sweep(experiment, "quadrants", run_dir=run_dir)
    for name in ("members", "metrics", "embeddings"):
        pd.testing.assert_frame_equal(resumed[name], full[name])


def test_plot_draws_the_training_curves_of_a_run_still_training(tmp_path, monkeypatch):
    from tau_lab import figures

    _ctrl_c_at(monkeypatch, 25)
    with pytest.raises(engine.Interrupted) as err:
        engine.run_sweep(_experiment("checkpoint_every=0"), "quadrants", root=tmp_path)
    run_dir = err.value.run_dir
    assert not (run_dir / "metrics.parquet").exists()
    assert set(pd.read_parquet(run_dir / "members.parquet").status) == {"running"}
    paths = figures.plot_run([run_dir])
    assert "training_curves.png" in [p.name for p in paths]
