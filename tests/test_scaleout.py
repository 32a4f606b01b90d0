"""tau-lab sweep --storage: workers that share a sweep's populations through an Optuna study, from the command
line and from Python (``tau_lab.sweep(..., storage=...)``), with their TensorBoard series in one run's folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState
from test_tensorboard import _assert_matches
from typer.testing import CliRunner

import tau_lab
from tau_lab import cli, config, engine, scaleout, search
from tau_lab.errors import UserError
from tau_lab.tasks import TASKS

GRID = ["steps=20", "log_every=10", "eval_every=10", "sweep.tau=[0.5,0.05]", "sweep.seeds=[0,1]"]  # 2 τ × 2 modes × 2


def budget_for(members: int) -> float:
    """The ``memory_budget_mb`` that fits ``members`` quadrants members per population."""
    spec, _ = config.load_experiment("quadrants", GRID)
    return members * TASKS["quadrants"].member_bytes(spec) / 2**20


OVERRIDES = [*GRID, f"memory_budget_mb={budget_for(2)}"]  # 8 members in 4 populations of 2


def make_plan(tmp_path: Path, *extra: str, tensorboard: Path | None = None) -> scaleout.Plan:
    spec, _ = config.load_experiment("quadrants", [*OVERRIDES, *extra])
    return scaleout.plan(spec, str(tmp_path / "journal.log"), tmp_path / "results", tensorboard)


def assert_tensorboard_matches(logdir: Path, run_dir: Path) -> None:
    """One event file per member under ``logdir`` (each member trained once), read back equal to the run's
    metrics table, with the member's grid values as hparams."""
    members = pd.read_parquet(run_dir / "members.parquet")
    for member in members.member:
        assert len(list((logdir / f"member-{member}").glob("events.out.tfevents.*"))) == 1
    _assert_matches(logdir, pd.read_parquet(run_dir / "metrics.parquet"), members)


def sweep_args(tmp_path: Path, *extra: str) -> list[str]:
    """``tau-lab sweep quadrants --storage <journal>`` of ``make_plan(tmp_path)``'s sweep."""
    sets = [arg for item in [*OVERRIDES, *extra] for arg in ("--set", item)]
    places = ["--storage", str(tmp_path / "journal.log"), "--results", str(tmp_path / "results")]
    return ["sweep", "quadrants", *places, *sets, "--quiet"]


def test_the_plan_has_four_populations_and_a_study_per_configuration(tmp_path):
    plan = make_plan(tmp_path)
    assert [len(p) for p in plan.populations] == [2, 2, 2, 2]
    assert plan.study_name == f"sweep-quadrants-{plan.config_hash[:12]}"
    assert make_plan(tmp_path, "device='cpu'", "compile=true").study_name == plan.study_name  # how, not what
    assert make_plan(tmp_path, "steps=30").study_name != plan.study_name


def test_two_workers_train_disjoint_chunks_and_assemble_the_tables_of_one_sweep(tmp_path):
    plan = make_plan(tmp_path)
    storage = search.open_storage(plan.storage)
    study = scaleout.open_sweep(plan, storage)
    command = [sys.executable, "-m", "tau_lab", *sweep_args(tmp_path), "--tensorboard", str(tmp_path / "tb")]
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # the tests' one thread (conftest): equal sums, equal bits
    # both workers join before either claims: the study's lock is held until they have
    with search.study_lock(plan.study_name, plan.storage, storage):
        workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)]
        workers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        for worker in workers:
            lines = iter(worker.stderr.readline, "")
            assert any("joined study" in line for line in lines), "a worker stopped before it joined"
    stdout, stderr = zip(*(worker.communicate(timeout=120) for worker in workers), strict=True)
    assert [w.returncode for w in workers] == [0, 0], stderr

    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    chunks = {
        w.pid: [t.params["chunk"] for t in trials if t.user_attrs["worker"].endswith(f":{w.pid}")] for w in workers
    }
    assert all(chunks.values()), chunks  # each worker trained something ...
    assert sorted(c for mine in chunks.values() for c in mine) == [0, 1, 2, 3]  # ... and no chunk twice

    (run_dir,) = [p.parent for p in (tmp_path / "results" / "quadrants").glob("2*/members.parquet")]  # one assembly
    # the worker that trained the last chunk assembled; the other one said why it did not
    assert sorted(stdout) == ["", f"8 members, 0 diverged; results in {run_dir}\n"]
    (other,) = [err for out, err in zip(stdout, stderr, strict=True) if not out]
    assert "the worker that trains the last one assembles the run" in other or "assembled the run" in other
    record = json.loads((run_dir / "scaleout.json").read_text())
    assert [c["chunk"] for c in record["chunks"]] == [0, 1, 2, 3] and record["study"] == plan.study_name
    assert {c["worker"] for c in record["chunks"]} == {t.user_attrs["worker"] for t in trials}
    assert {c["device"] for c in record["chunks"]} == {"cpu"}

    single, out = engine.run_sweep(plan.experiment, "quadrants", root=tmp_path / "single")
    assert (run_dir / "config.toml").read_text() == (single / "config.toml").read_text()
    assert json.loads((run_dir / "env.json").read_text())["device"] == "cpu"
    assert set(out) == {"members", "metrics", "embeddings"}
    for name in out:  # exactly: the same populations on the same device, stored and read back losslessly
        assembled, alone = (pd.read_parquet(d / f"{name}.parquet") for d in (run_dir, single))
        pd.testing.assert_frame_equal(assembled, alone, check_exact=True)
    assert (run_dir / "members.csv").read_text() == (single / "members.csv").read_text()
    # both workers wrote the members they trained into the one folder of the run they assembled
    assert run_dir.name == study.user_attrs["run_id"]
    assert [p.name for p in (tmp_path / "tb" / "quadrants").iterdir()] == [run_dir.name]
    assert_tensorboard_matches(tmp_path / "tb" / "quadrants" / run_dir.name, run_dir)


def test_the_python_api_is_a_worker_that_returns_the_tables_when_it_completes_the_sweep(tmp_path):
    journal, results, tb = str(tmp_path / "journal.log"), tmp_path / "results", tmp_path / "tb"
    plan = make_plan(tmp_path, tensorboard=tb)
    storage = search.open_storage(plan.storage)
    study = scaleout.open_sweep(plan, storage)
    outputs = optuna.create_study(storage=storage, study_name=plan.outputs_name)
    held = scaleout.claim(plan, study, storage)  # another worker's chunk, claimed by this live process
    kwargs = {"overrides": OVERRIDES, "results": results, "storage": journal, "tensorboard": tb}

    first = tau_lab.sweep("quadrants", **kwargs)  # trains the three other chunks; one is missing
    assert isinstance(first, tau_lab.SweepPending) and not first.complete
    others = [c for c in range(4) if c != held.params["chunk"]]
    assert (first.study, sorted(first.trained), first.missing) == (plan.study_name, others, (held.params["chunk"],))
    assert first.assembled_by is None and first.run_id == study.user_attrs["run_id"]
    assert "the worker that trains the last one assembles the run" in first.message
    assert not list(results.glob("quadrants/2*"))  # no run directory yet
    with pytest.raises(UserError, match=f"chunks {held.params['chunk']} of 4 are not trained"):
        tau_lab.assemble("quadrants", storage=journal, overrides=OVERRIDES, results=results)

    assert scaleout.train_chunk(plan, study, outputs, held)  # the other worker finishes its chunk
    second = tau_lab.sweep("quadrants", **kwargs)  # nothing left to train: this call assembles
    assert isinstance(second, tau_lab.SweepResult) and second.run_dir.name == first.run_id
    plain = tau_lab.sweep("quadrants", overrides=OVERRIDES, results=tmp_path / "plain")
    for name in ("members", "metrics", "embeddings"):
        pd.testing.assert_frame_equal(getattr(second, name), getattr(plain, name), check_exact=True)
    assert_tensorboard_matches(tb / "quadrants" / first.run_id, second.run_dir)

    third = tau_lab.sweep("quadrants", **kwargs)  # complete, and assembled by the call before
    assert isinstance(third, tau_lab.SweepPending) and third.complete
    assert third.trained == third.missing == () and third.assembled_by == search.worker_id()
    copy = tau_lab.assemble("quadrants", storage=journal, overrides=OVERRIDES, results=results)
    assert copy.run_dir != second.run_dir  # the run id is taken here: the copy gets another
    for name in ("members", "metrics", "embeddings"):
        pd.testing.assert_frame_equal(getattr(copy, name), getattr(plain, name), check_exact=True)


def test_a_worker_of_another_configuration_is_refused(tmp_path):
    plan = make_plan(tmp_path)
    scaleout.open_sweep(plan, search.open_storage(plan.storage))  # a sweep that no worker has finished
    result = CliRunner().invoke(cli.app, sweep_args(tmp_path, "steps=30", "optimizer.lr=0.01"))
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert f"it holds an unfinished sweep of 'quadrants' with another configuration (study {plan.study_name}; " in (
        result.output
    )
    assert "optimizer.lr: 0.0003 → 0.01; steps: 20.0 → 30.0" in result.output


def test_assembling_an_unfinished_sweep_says_what_is_missing(tmp_path):
    plan = make_plan(tmp_path)
    storage = search.open_storage(plan.storage)
    study = scaleout.open_sweep(plan, storage)
    outputs = optuna.create_study(storage=storage, study_name=plan.outputs_name)
    trained = scaleout.claim(plan, study, storage)
    assert scaleout.train_chunk(plan, study, outputs, trained)
    running = scaleout.claim(plan, study, storage)  # claimed by this live process, not finished
    result = CliRunner().invoke(cli.app, [*sweep_args(tmp_path), "--assemble"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    missing = sorted({0, 1, 2, 3} - {trained.params["chunk"]})
    where = "; ".join(
        f"{c}: training on {socket.gethostname()}:{os.getpid()}" if c == running.params["chunk"] else f"{c}: unclaimed"
        for c in missing
    )
    assert f"chunks {', '.join(map(str, missing))} of 4 are not trained ({where}): run the same" in result.output
    result = CliRunner().invoke(cli.app, [*sweep_args(tmp_path, "steps=30"), "--assemble"])
    assert result.exit_code == 2 and "no sweep of this configuration in it" in result.output


def test_an_interrupted_chunk_fails_and_is_claimed_again(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    storage = search.open_storage(plan.storage)
    study = scaleout.open_sweep(plan, storage)
    outputs = optuna.create_study(storage=storage, study_name=plan.outputs_name)
    trial = scaleout.claim(plan, study, storage)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train_population", interrupted)
        with pytest.raises(KeyboardInterrupt):
            scaleout.train_chunk(plan, study, outputs, trial)
    failed = study.get_trials()[0]
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted"
    again = scaleout.claim(plan, study, storage)  # the grid counts it visited: it is queued again first
    assert again.params["chunk"] == trial.params["chunk"] and again.user_attrs["retry_of"] == trial.number
    others = [scaleout.claim(plan, study, storage) for _ in range(3)]
    assert sorted(t.params["chunk"] for t in [again, *others]) == [0, 1, 2, 3]
    assert scaleout.claim(plan, study, storage) is None  # all four are training


def test_stale_chunks_are_those_of_gone_workers_or_without_a_heartbeat(tmp_path):
    plan = make_plan(tmp_path)
    storage = search.open_storage(plan.storage)
    study = scaleout.open_sweep(plan, storage)
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: no process has its pid now
    here = socket.gethostname()
    cases = {  # worker, seconds since its last heartbeat, stale
        "gone worker here": (f"{here}:{dead.pid}", 0, True),
        "live worker here": (f"{here}:{os.getpid()}", 0, False),
        "recent worker elsewhere": ("another-host:1", 10, False),
        "silent worker elsewhere": ("another-host:1", scaleout.STALE_AFTER_S + 10, True),
    }
    trials = {}
    for name, (worker, age, _) in cases.items():
        trials[name] = study.ask(plan.distributions)  # not claim(): it would recover the ones before
        trials[name].set_user_attr("worker", worker)
        trials[name].set_user_attr("heartbeat", time.time() - age)
    failed = scaleout.recover_stale(study, study.get_trials())
    assert sorted(failed) == sorted(trials[name].number for name, (*_, stale) in cases.items() if stale)
    assert scaleout.recover_stale(study, study.get_trials()) == []  # failed once


def test_heartbeats_are_recorded_while_a_chunk_trains(tmp_path):
    plan = make_plan(tmp_path)
    storage = search.open_storage(plan.storage)
    study = scaleout.open_sweep(plan, storage)
    trial = scaleout.claim(plan, study, storage)
    first = study.get_trials()[0].user_attrs["heartbeat"]
    with scaleout.heartbeat(trial, every=0.05):
        time.sleep(0.3)
    assert study.get_trials()[0].user_attrs["heartbeat"] > first + 0.1


def test_a_chunks_stored_output_gives_the_tables_of_its_population(tmp_path):
    plan = make_plan(tmp_path)
    rows = plan.populations[1]
    output = engine.train_population(plan.experiment, rows, engine.resolve_device("cpu"))
    # a diverged and a pruned member, as the engine marks them: the statuses must come back too
    output["alive"][:] = False
    output["diverged_step"][0] = 7
    output["pruned"][1] = True
    stored = scaleout.decode(scaleout.encode(output))
    expected, got = engine.tables(rows, [output]), engine.tables(rows, [stored])
    assert got["members"]["status"].tolist() == ["diverged", "pruned"]
    assert got["members"]["diverged_step"].tolist() == [7, pd.NA]
    for name in expected:
        pd.testing.assert_frame_equal(got[name], expected[name], check_exact=True)


def test_cli_scale_out_errors_are_one_line_with_exit_code_2(tmp_path):
    runner = CliRunner()
    cases = {
        "--assemble needs --storage": ["sweep", "quadrants", "--assemble"],
        "--resume and --storage do not go together": [*sweep_args(tmp_path), "--resume", str(tmp_path)],
        "tau-lab takes on a journal file or PostgreSQL only": ["sweep", "quadrants", "--storage", "sqlite:///x.db"],
    }
    for message, args in cases.items():
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 2 and result.output.count("\n") == 1 and message in result.output, result.output


def test_ctrl_c_in_a_worker_prints_the_command_that_continues(tmp_path, monkeypatch):
    def interrupted(plan, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(scaleout, "work", interrupted)
    result = CliRunner().invoke(cli.app, [*sweep_args(tmp_path, "steps=30"), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 130
    (line,) = result.output.splitlines()
    again = line.removeprefix("interrupted: resume with: ").split()
    assert again[:5] == ["tau-lab", "sweep", "quadrants", "--storage", str(tmp_path / "journal.log")]
    assert again[-4:] == ["--set", "steps=30", "--tensorboard", str(tmp_path / "tb")]
    assert "memory_budget_mb=" + str(budget_for(2)) in again
