"""tau-lab search and sweep --storage against a real PostgreSQL server, as workers on several machines share a study.

The test starts a throw-away server on 127.0.0.1 with a temporary data directory and stops it at
the end. Without PostgreSQL's binaries it is skipped, except in CI (env CI set), where it fails:
``.ci/run`` installs Debian's postgresql so that CI always runs it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.synchronize
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
import sqlalchemy
from test_scaleout import make_plan
from test_search import assert_each_trial_evaluated_once, assert_no_worker_asks_while_the_lock_is_held, load, trials_of
from typer.testing import CliRunner

from tau_lab import cli, engine, scaleout, search


def server_binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # Debian links them from its versioned folder
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: float(p.parts[-3]))
    return found[-1].parent if found else None


def missing() -> str | None:
    """Why the test cannot run here, or None."""
    if server_binaries() is None:
        return "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the server as"
    try:
        sqlalchemy.engine.make_url("postgresql://").get_dialect().import_dbapi()
    except ImportError:
        return "no driver for postgresql:// URLs (SQLAlchemy 2.1 uses psycopg 3)"
    return None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    reason = missing()
    if reason and os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run this test (.ci/run installs Debian's postgresql)")
    if reason:
        pytest.skip(reason)
    binaries = server_binaries()
    # The server refuses to run as root: as root, run it as Debian's 'postgres' user, owner of the data folder.
    as_server = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="tau-lab-postgres-"))  # not under pytest's tmp_path: 'postgres' must enter it
    if as_server:
        shutil.chown(home, "postgres")
    data = home / "data"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def server(tool: str, *args: str) -> None:
        subprocess.run([*as_server, str(binaries / tool), *args], check=True, capture_output=True)

    server("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-h 127.0.0.1 -p {port} -k {home}"  # loopback only; its socket in the throw-away folder
    server("pg_ctl", "-D", str(data), "-l", str(home / "server.log"), "-o", options, "-w", "start")
    try:
        server("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "tau_lab")
        yield f"postgresql://postgres@127.0.0.1:{port}/tau_lab"
    finally:
        server("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(home)


def test_two_workers_share_a_study_on_postgresql(tmp_path, postgres_url):
    # a batch trains for about 2 s, longer than a worker takes to start on a loaded machine: at 100 steps
    # (0.2 s a batch) the first worker sometimes finished every batch before the second joined
    spec = load(tmp_path, "steps=5000", "eval_every=2500", n_trials=8, batch_size=3, storage=postgres_url)
    search.run(spec, workers=2)
    assert_each_trial_evaluated_once(spec, 8)
    assert len({t.user_attrs["worker"] for t in trials_of(spec)}) == 2


def test_the_ask_lock_holds_off_a_worker_on_postgresql(tmp_path, postgres_url):
    assert_no_worker_asks_while_the_lock_is_held(load(tmp_path, storage=postgres_url, study_name="locked"), tmp_path)


def _join_study(
    spec: search.Search, barrier: multiprocessing.synchronize.Barrier, errors: multiprocessing.Queue
) -> None:
    """A worker's start: open the storage (the first one creates Optuna's tables) and join the study."""
    try:
        barrier.wait()
        search.open_study(spec, search.open_storage(spec.storage))
    except BaseException as err:
        errors.put(f"{type(err).__name__}: {err}".splitlines()[0])
        raise


def test_two_workers_starting_together_on_a_fresh_database_both_start(tmp_path, postgres_url):
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    context = multiprocessing.get_context("fork")  # a copy of this process: no second import of torch
    failures = []
    for attempt in range(6):
        database = f"fresh_{attempt}"
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
        url = sqlalchemy.engine.make_url(postgres_url).set(database=database).render_as_string(hide_password=False)
        spec = load(tmp_path / database, storage=url)
        barrier, errors = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_join_study, args=(spec, barrier, errors)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        failures += [errors.get() for worker in workers if worker.exitcode != 0]
        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == [spec.study_name]
    admin.dispose()
    assert failures == []


def test_a_password_is_never_written_nor_printed(tmp_path, postgres_url):
    password = "hunter2-s3cret"  # the server trusts loopback: any password logs in
    url = postgres_url.replace("postgres@", f"postgres:{password}@")
    options = ["--trials", "2", "--batch", "2", "--pruner", "none", "--study", "secret", "--results", str(tmp_path)]
    options += [arg for item in ["steps=20", "eval_every=10", "log_every=10"] for arg in ("--set", item)]
    runner = CliRunner()
    by_option = runner.invoke(cli.app, ["search", "quadrants_search", *options, "--storage", url])
    assert by_option.exit_code == 0, by_option.output
    by_env = runner.invoke(cli.app, ["search", "quadrants_search", *options], env={"TAU_LAB_STORAGE": url})
    assert by_env.exit_code == 0, by_env.output
    assert "2 complete trials" in by_env.output  # the same study, found through the environment variable
    for result in (by_option, by_env):
        assert password not in result.output
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "env.json" for path in files)
    for path in files:
        assert password.encode() not in path.read_bytes(), path


def test_a_sweep_scaled_out_on_postgresql_assembles_the_tables_of_one_sweep(tmp_path, postgres_url):
    plan = dataclasses.replace(make_plan(tmp_path), storage=postgres_url)
    storage = search.open_storage(postgres_url)
    study = scaleout.open_sweep(plan, storage)
    outputs = optuna.create_study(storage=storage, study_name=plan.outputs_name)
    first = scaleout.claim(plan, study, storage)  # a first worker trains one chunk ...
    assert scaleout.train_chunk(plan, study, outputs, first)
    run_dir, out = scaleout.work(plan)  # ... a second one the other three, and assembles
    chunks = sorted(t.params["chunk"] for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE)
    assert chunks == [0, 1, 2, 3] and len(study.get_trials()) == 4
    single, _ = engine.run_sweep(plan.experiment, "quadrants", root=tmp_path / "single")
    for name in out:
        assembled, alone = (pd.read_parquet(d / f"{name}.parquet") for d in (run_dir, single))
        pd.testing.assert_frame_equal(assembled, alone, check_exact=True)
