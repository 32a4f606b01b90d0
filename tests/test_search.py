"""tau-lab search: batched ask-and-tell over populations, resuming, pruning, workers, stale trials."""

from __future__ import annotations

import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import optuna
import pandas as pd
import pytest
import tomli_w
from optuna.trial import TrialState
from typer.testing import CliRunner

from tau_lab import cli, config, engine, search
from tau_lab.search import PrunerName, SamplerName

FAST = ["steps=20", "eval_every=10", "log_every=10"]
EVALUATED = ["alignment", "uniformity", "tolerance", "cross_similarity"]  # what the quadrants task evaluates


def load(root: Path, *overrides: str, n_trials: int = 8, batch_size: int = 4, **options) -> search.Search:
    options = {"pruner": PrunerName.none, "seed": 0} | options
    return search.load(
        "quadrants_search", [*FAST, *overrides], n_trials=n_trials, batch_size=batch_size, root=root, **options
    )


def trials_of(spec: search.Search) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=spec.study_name, storage=search.open_storage(spec.storage)).trials


def members_of(spec: search.Search) -> pd.DataFrame:
    """Every trained member of every batch of the search (a killed batch's grid says ``running``)."""
    members = pd.concat([pd.read_parquet(p) for p in sorted(spec.directory.glob("*/members.parquet"))])
    return members[members.status != "running"].reset_index(drop=True)


def assert_each_trial_evaluated_once(spec: search.Search, n_trials: int) -> None:
    """Exactly N trials count, all finished, none lost; each trained as exactly one member, with its own params."""
    trials = trials_of(spec)
    counted = search.counted(trials)
    assert len(counted) == n_trials
    assert all(t.state.is_finished() for t in trials)
    members = members_of(spec)
    by_trial = members.set_index("trial")
    assert sorted(members["trial"]) == sorted(t.number for t in counted)  # each counted trial once
    for t in counted:
        assert by_trial.loc[t.number, "tau_init"] == t.params["tau"]
        assert by_trial.loc[t.number, "tau_mode"] == t.params["tau_mode"]
    params = [(t.params["tau"], t.params["tau_mode"]) for t in counted]
    assert len(set(params)) == n_trials  # no proposal evaluated twice


@pytest.mark.parametrize("sampler", list(SamplerName))
def test_search_end_to_end(tmp_path, sampler):
    grid = "search.space.tau={ low = 0.01, high = 1.0, log = true, grid = 4 }"  # 4 τ × 2 modes = 8 points
    spec = load(tmp_path, grid, sampler=sampler, n_trials=8 if sampler is not SamplerName.grid else 20)
    assert spec.n_trials == 8  # a grid search runs each point once
    search.run(spec)

    assert_each_trial_evaluated_once(spec, 8)
    trials = trials_of(spec)
    batches = sorted(p.parent for p in spec.directory.glob("*/members.parquet"))
    assert len(batches) == 2  # two populations of four members
    for t in trials:
        members = pd.read_parquet(Path(t.user_attrs["run_dir"]) / "members.parquet").set_index("member")
        member = members.loc[t.user_attrs["member"]]
        assert member["trial"] == t.number and member["seed"] == 0
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(member["cross_similarity"], rel=1e-6)
            assert list(t.intermediate_values) == [0, 10, 20]
    table = pd.read_parquet(spec.directory / "trials.parquet")
    assert len(table) == 8 and {"params_tau", "params_tau_mode", "user_attrs_worker"} <= set(table.columns)
    assert len(pd.read_csv(spec.directory / "trials.csv")) == 8
    if sampler is SamplerName.grid:
        assert {(t.params["tau"], t.params["tau_mode"]) for t in trials} == {
            (tau, mode) for tau in spec.grid["tau"] for mode in ("fixed", "learnable")
        }


def test_resuming_a_finished_study_adds_no_trial(tmp_path):
    spec = load(tmp_path)
    search.run(spec)
    before = [(t.number, t.state, t.params) for t in trials_of(spec)]
    search.run(spec)
    assert [(t.number, t.state, t.params) for t in trials_of(spec)] == before
    assert len(list(spec.directory.glob("*/members.parquet"))) == 2  # no new batch


def test_running_again_with_a_larger_n_continues_toward_it(tmp_path):
    search.run(load(tmp_path, n_trials=4))
    spec = load(tmp_path, n_trials=6)
    search.run(spec)
    assert_each_trial_evaluated_once(spec, 6)


def test_an_interrupted_search_completes_to_exactly_n(tmp_path, monkeypatch):
    spec = load(tmp_path)
    real_run_sweep, calls = engine.run_sweep, []

    def interrupted_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_sweep(*args, **kwargs)

    monkeypatch.setattr(engine, "run_sweep", interrupted_second_batch)
    with pytest.raises(KeyboardInterrupt):
        search.run(spec)
    trials = trials_of(spec)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(failed) == len(waiting) == 4
    assert [t.user_attrs["retry_of"] for t in waiting] == [t.number for t in failed]
    assert [t.user_attrs["fail_reason"] for t in failed] == ["KeyboardInterrupt: "] * 4

    monkeypatch.setattr(engine, "run_sweep", real_run_sweep)
    search.run(spec)
    assert_each_trial_evaluated_once(spec, 8)
    retries = {t.user_attrs["retry_of"]: t for t in trials_of(spec) if "retry_of" in t.user_attrs}
    assert all(retries[t.number].params == t.params and retries[t.number].state.is_finished() for t in failed)


def test_pruned_members_stop_changing(tmp_path):
    spec = load(
        tmp_path, "steps=40", "eval_every=5", "log_every=5", n_trials=12, batch_size=4, pruner=PrunerName.median
    )
    search.run(spec)
    trials = trials_of(spec)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, "the median pruner pruned nothing: the test needs a pruned member"
    for t in pruned:
        run_dir, member = Path(t.user_attrs["run_dir"]), t.user_attrs["member"]
        assert pd.read_parquet(run_dir / "members.parquet").set_index("member").loc[member, "status"] == "pruned"
        metrics = pd.read_parquet(run_dir / "metrics.parquet")
        at = max(t.intermediate_values)  # the step it was pruned at
        assert at < 40
        values = metrics[metrics["metric"].isin([*EVALUATED, "tau", "logit_scale"])]
        table = values.pivot_table(index="step", columns=["metric", "member"], values="value")
        after = table.loc[table.index >= at]
        frozen = after.xs(member, level="member", axis=1)
        assert (frozen == frozen.iloc[0]).all().all()  # its parameters, so every measure of them, stopped
        live = after.drop(columns=member, level="member")["alignment"]
        assert (live.iloc[-1] != live.iloc[0]).any()  # while the others went on training
        loss = metrics[(metrics["member"] == member) & (metrics["metric"] == "loss") & (metrics["step"] > at)]
        assert loss["value"].isna().all()  # masked out of the population's updates


def test_two_workers_on_one_journal_finish_exactly_n(tmp_path):
    # K = 3 does not divide N = 8: the last batch is contested, and the ask lock keeps N exact
    # a batch trains for about 2 s, longer than a worker takes to start on a loaded machine: at 100 steps
    # (0.2 s a batch) the first worker sometimes finished every batch before the second joined
    spec = load(tmp_path, "steps=5000", "eval_every=2500", n_trials=8, batch_size=3)
    search.run(spec, workers=2)
    assert_each_trial_evaluated_once(spec, 8)
    workers = {t.user_attrs["worker"] for t in trials_of(spec)}
    assert len(workers) == 2 and os.getpid() not in {int(w.rpartition(":")[2]) for w in workers}


def worker_command(root: Path, n_trials: int, *options: str) -> list[str]:
    """``tau-lab search`` of ``load(root)``'s study, as a separate process."""
    command = [sys.executable, "-m", "tau_lab", "search", "quadrants_search", "--trials", str(n_trials), "--batch", "4"]
    return [*command, "--results", str(root), "--pruner", "none", *(a for s in FAST for a in ("--set", s)), *options]


def assert_no_worker_asks_while_the_lock_is_held(spec: search.Search, root: Path) -> None:
    """Exactness under concurrency rests on this: no worker counts or asks while another holds the lock."""
    storage = search.open_storage(spec.storage)
    search.open_study(spec, storage)
    with search.ask_lock(spec, storage):
        options = ["--storage", spec.storage, "--study", spec.study_name]
        worker = subprocess.Popen(worker_command(root, 2, *options), stderr=subprocess.PIPE, bufsize=0)
        stderr, deadline = b"", time.monotonic() + 120
        # Optuna logs this when a worker joins an existing study: asking comes next
        while b"Using an existing study" not in stderr and time.monotonic() < deadline and worker.poll() is None:
            if select.select([worker.stderr], [], [], 1.0)[0]:
                stderr += os.read(worker.stderr.fileno(), 4096)
        assert b"Using an existing study" in stderr, stderr.decode()
        time.sleep(1.0)
        assert trials_of(spec) == []
    worker.communicate(timeout=120)
    assert worker.returncode == 0
    assert_each_trial_evaluated_once(spec, 2)


def test_workers_count_and_ask_under_one_lock(tmp_path):
    assert_no_worker_asks_while_the_lock_is_held(load(tmp_path), tmp_path)


def test_a_killed_workers_trials_are_failed_and_requeued(tmp_path):
    spec = load(tmp_path)
    # a worker that trains for minutes, killed while its first batch is RUNNING
    worker = subprocess.Popen(worker_command(tmp_path, 8, "--set", "steps=100000"), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (spec.directory / "journal.log").exists():
        time.sleep(0.2)
    running = []
    while time.monotonic() < deadline and len(running) < 4:
        running = [t for t in trials_of(spec) if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        time.sleep(0.2)
    worker.kill()
    worker.wait()  # reaped: its pid is gone
    assert [t.user_attrs["worker"] for t in running] == [f"{socket.gethostname()}:{worker.pid}"] * 4

    search.run(spec)
    trials = {t.number: t for t in trials_of(spec)}
    retries = {t.user_attrs["retry_of"]: t for t in trials.values() if "retry_of" in t.user_attrs}
    for t in running:
        assert trials[t.number].state == TrialState.FAIL
        assert retries[t.number].params == t.params and retries[t.number].state == TrialState.COMPLETE
    assert_each_trial_evaluated_once(spec, 8)


def test_stale_trials_are_those_of_dead_workers_or_too_old(tmp_path):
    study = optuna.create_study(storage=search.open_storage(str(tmp_path / "journal.log")))
    here, elsewhere = socket.gethostname(), "another-host"
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: no process has its pid now
    cases = {
        "dead worker here": (f"{here}:{dead.pid}", time.time(), True),
        "live worker here": (f"{here}:{os.getpid()}", time.time(), False),
        "recent worker elsewhere": (f"{elsewhere}:1", time.time(), False),
        "old worker elsewhere": (f"{elsewhere}:1", time.time() - 120, True),
    }
    numbers = {}
    for name, (worker, started, _) in cases.items():
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("started", started)
        numbers[name] = trial.number
    recovered = search.recover_stale(study, stale_after=60)
    assert sorted(recovered) == sorted(numbers[name] for name, (*_, stale) in cases.items() if stale)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(recovered)
    assert search.recover_stale(study, stale_after=60) == []  # failed once, re-queued once


def test_cli_search_prints_the_best_trial_and_a_command_that_reproduces_it(tmp_path):
    runner = CliRunner()
    options = ["--results", str(tmp_path), *(a for s in FAST for a in ("--set", s))]
    result = runner.invoke(cli.app, ["search", "quadrants_search", "--trials", "4", "--batch", "4", *options])
    assert result.exit_code == 0, result.output
    assert "study quadrants_search: 4 complete trials" in result.output
    best_line = next(line for line in result.output.splitlines() if line.startswith("best trial "))
    reproduce = next(line for line in result.output.splitlines() if line.startswith("reproduce: "))
    *_, value = best_line.partition(" = ")
    args = shlex.split(reproduce.removeprefix("reproduce: "))
    assert args[:3] == ["tau-lab", "sweep", "quadrants_search"]

    sweep = runner.invoke(cli.app, [*args[1:], "--results", str(tmp_path / "again"), "--quiet"])
    assert sweep.exit_code == 0, sweep.output
    (members,) = [pd.read_parquet(p) for p in (tmp_path / "again").glob("*/*/members.parquet")]
    assert len(members) == 1
    assert members["cross_similarity"].iloc[0] == pytest.approx(float(value.split()[0]), abs=5e-5)


@pytest.mark.parametrize(
    "path", [p for p in sorted(config.EXPERIMENTS_DIR.glob("*.toml")) if "search" in tomllib.loads(p.read_text())]
)
def test_the_shipped_searches_load(tmp_path, path):
    spec = search.load(path.stem, n_trials=8, batch_size=4, root=tmp_path)
    assert spec.distributions and spec.directory == tmp_path / path.stem / f"search-{path.stem}"


def _experiment_file(tmp_path: Path, edit) -> str:
    raw = tomllib.loads((config.EXPERIMENTS_DIR / "quadrants_search.toml").read_text())
    edit(raw)
    path = tmp_path / "edited.toml"
    path.write_text(tomli_w.dumps(raw))
    return str(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("search"), "edited.toml: no [search] table"),
        (
            lambda r: r["search"]["space"].update(lr={"low": 0.1, "high": 1.0}),
            "edited.toml: search.space.lr: not a sweep axis of task quadrants: use one of tau, tau_mode",
        ),
        (
            lambda r: r["search"]["space"].update(tau={"low": 1.0, "high": 0.1}),
            "edited.toml: search.space.tau: low = 1 must be smaller than high = 0.1",
        ),
        (
            lambda r: r["search"]["space"].update(tau={"low": 0.0, "high": 1.0, "log": True}),
            "edited.toml: search.space.tau: low = 0 is not allowed on a log scale: it must be > 0",
        ),
        (
            lambda r: r["search"]["space"].update(tau=0.5),
            "edited.toml: search.space.tau = 0.5: use a range {low = ..., high = ..., log = ...} or a list of choices",
        ),
        (
            lambda r: r["search"]["space"].update(tau={"low": 0.0001, "high": 1.0, "log": True}),
            "edited.toml: search.space.tau = 0.0001 with tau_mode 'learnable' lies outside the clamp",
        ),
        (
            lambda r: r["search"]["space"].update(tau_mode=["fixed", "hot"]),
            "edited.toml: search.space.tau_mode = ['fixed', 'hot']: tau_mode = 'hot' is not allowed",
        ),
        (
            lambda r: (r["search"]["space"].pop("tau_mode"), r["sweep"].update(tau_mode=["fixed", "learnable"])),
            "edited.toml: sweep.tau_mode = ['fixed', 'learnable']: a search trains one value of each axis it does "
            "not search",
        ),
        (lambda r: r["sweep"].update(seeds=[0, 1]), "edited.toml: sweep.seeds = [0, 1]: a search trains one value"),
        (lambda r: r["search"].update(direction="up"), "edited.toml: search.direction = 'up': Input should be"),
        (lambda r: r["search"].update(budget=3), "edited.toml: unknown key 'search.budget'"),
    ],
)
def test_bad_search_tables_are_one_line_errors(tmp_path, edit, message):
    path = _experiment_file(tmp_path, edit)
    with pytest.raises(config.ConfigError) as err:
        search.load(path, n_trials=8, batch_size=4, root=tmp_path)
    assert str(err.value).startswith(str(tmp_path / message.split(":", 1)[0]) + ":" + message.split(":", 1)[1])
    assert "\n" not in str(err.value)


def test_an_objective_the_task_does_not_evaluate_is_an_error_and_loses_no_trial(tmp_path):
    spec = load(tmp_path, "search.objective='accuracy'", n_trials=4)
    with pytest.raises(config.ConfigError, match=r"search\.objective = 'accuracy' is not allowed: the task evaluates "):
        search.run(spec)
    assert sorted(t.state.name for t in trials_of(spec)) == ["FAIL"] * 4 + ["WAITING"] * 4


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = runner.invoke(cli.app, ["search", "quadrants_search", "--storage", url, "--workers", "2"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "SQLite serves one process at a time" in result.output
    result = runner.invoke(cli.app, ["search", "quadrants", "--results", str(tmp_path)])
    assert result.exit_code == 2 and "no [search] table" in result.output


def test_a_study_that_optimises_something_else_is_refused(tmp_path):
    search.run(load(tmp_path, n_trials=1, batch_size=1))
    with pytest.raises(ValueError, match=r"optimises cross_similarity \(minimize\), but .* asks for tolerance"):
        search.run(load(tmp_path, "search.objective='tolerance'", "search.direction='maximize'", n_trials=1))


def test_sqlite_serves_a_single_worker(tmp_path):
    spec = load(tmp_path, storage=f"sqlite:///{tmp_path / 'study.db'}", n_trials=4)
    search.run(spec)
    assert_each_trial_evaluated_once(spec, 4)


def test_worker_seeds_differ_by_worker_and_by_how_far_the_study_got():
    seeds = {search.worker_seed(0, worker, n) for worker in range(3) for n in range(3)}
    assert len(seeds) == 9 and search.worker_seed(None, 1, 5) is None
    assert search.worker_seed(0, 0, 0) == search.worker_seed(0, 0, 0)


def test_the_study_names_its_objective_and_trials_record_when_they_started(tmp_path):
    spec = load(tmp_path, n_trials=2, batch_size=2)
    before = time.time()
    study = search.run(spec)
    assert study.metric_names == ["cross_similarity"]  # what optuna-dashboard labels the objective with
    assert all(isinstance(t.user_attrs["started"], float) and t.user_attrs["started"] >= before for t in study.trials)
    table = pd.read_parquet(spec.directory / "trials.parquet")
    assert table["user_attrs_started"].dtype == "float64"
    assert table["value"].tolist() == [t.value for t in study.trials]  # the column keeps its name


def search_process(root: Path, *options: str) -> subprocess.Popen:
    """``tau-lab search`` with minutes of training per batch, in its own process group (a terminal's Ctrl-C)."""
    command = worker_command(root, 8, "--set", "steps=100000", *options)
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_running_trials(spec: search.Search, n: int) -> list[optuna.trial.FrozenTrial]:
    deadline, running = time.monotonic() + 120, []
    while time.monotonic() < deadline and len(running) < n:
        if (spec.directory / "journal.log").exists():
            running = [t for t in trials_of(spec) if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        time.sleep(0.2)
    assert len(running) >= n
    return running


def test_ctrl_c_with_two_workers_prints_the_resume_command_once_and_no_traceback(tmp_path):
    spec = load(tmp_path)
    process = search_process(tmp_path, "--workers", "2")
    running = wait_for_running_trials(spec, 8)  # both workers are training a batch of 4
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    resume = [line for line in stderr.splitlines() if line.startswith("interrupted: resume with: ")]
    assert len(resume) == 1
    args = shlex.split(resume[0].removeprefix("interrupted: resume with: "))
    assert args[:3] == ["tau-lab", "search", "quadrants_search"] and "--trials" in args and "8" in args
    # every running trial was handed back: failed, and its parameters queued again; the table says so
    trials = {t.number: t for t in trials_of(spec)}
    table = pd.read_parquet(spec.directory / "trials.parquet").set_index("number")
    assert table["state"].to_dict() == {number: t.state.name for number, t in trials.items()}
    assert all(trials[t.number].state == TrialState.FAIL for t in running)
    assert sorted(t.user_attrs["retry_of"] for t in trials.values() if t.state == TrialState.WAITING) == sorted(
        t.number for t in running
    )


def test_killing_the_parent_stops_its_workers(tmp_path):
    spec = load(tmp_path)
    process = search_process(tmp_path, "--workers", "2")
    running = wait_for_running_trials(spec, 8)
    workers = {int(t.user_attrs["worker"].rpartition(":")[2]) for t in running}
    assert len(workers) == 2 and process.pid not in workers
    process.kill()  # SIGKILL: the parent cannot stop anyone
    process.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    for pid in alive:  # leave nothing behind, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert alive == []
    # and they handed their trials back on the way out
    assert all(t.state == TrialState.FAIL for t in trials_of(spec) if t.number in {r.number for r in running})
