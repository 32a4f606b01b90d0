"""Optuna over populations: ask K trials, train them together as one population, tell K results.

A study searches some axes of an experiment's ``[sweep]`` (τ, ``tau_mode``, α, ...) for the best
value of one metric the task evaluates. Its ``[search]`` table::

    [search]
    objective = "accuracy"          # a metric of the members table that the task evaluates
    direction = "maximize"
    [search.space]
    tau = { low = 1.0, high = 20.0, log = true }   # a range (grid = 5 points for --sampler grid)
    alpha = { low = 0.0, high = 1.0 }
    tau_mode = ["fixed", "learnable"]              # choices

Axes it does not search keep their one value from ``[sweep]``, and every trial trains with the
experiment's seed. Each batch of K trials is one population and one ordinary run directory under
``results/<experiment>/search-<study>/``, whose members table has a ``trial`` column. Every
member's objective is reported at each evaluation (``trial.report``), the pruner's verdict
freezes it from that step on (status ``pruned``), and at the end each trial is told COMPLETE,
PRUNED or FAIL (diverged, with the reason in its user attribute ``fail_reason``).

N, the number of trials, is the study's total: workers stop when the study holds N trials that
finished or are running, so running the command again continues toward N. Counting and asking
happen under one lock per study (a file lock beside a journal file, an advisory lock on
PostgreSQL), so that workers that ask at the same moment cannot overshoot N.

Each trial records its worker (``hostname:pid``) and start time as user attributes. Optuna's
heartbeat does not cover ask-and-tell, so before each batch a worker fails the RUNNING trials whose
worker is gone (same host, no such process) or that started more than ``stale_after`` seconds
ago, and re-queues their parameters (``study.enqueue_trial``, user attribute ``retry_of``); a
failed trial that was retried no longer counts toward N.

With ``--workers N`` the workers stop with their parent: Ctrl-C (which the whole process group
gets) makes each hand its running trials back (failed and re-queued) and exit quietly, and a worker
whose parent was killed does the same on its own. On PostgreSQL, Optuna's tables are created under
an advisory lock, so that workers starting together on a fresh database do not race to create them.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import fcntl
import logging
import math
import multiprocessing
import os
import re
import shlex
import socket
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import sqlalchemy
import tomli_w
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from tau_lab import config, engine, results
from tau_lab.config import ConfigError
from tau_lab.errors import UserError
from tau_lab.search_choices import PrunerName, SamplerName

logger = logging.getLogger(__name__)
LOG_FORMAT = "[%(levelname).1s %(asctime)s] %(message)s"  # Optuna's own

SCHEMA_LOCK = zlib.crc32(b"tau-lab: create Optuna's schema")  # the advisory lock key, the same in every worker
PARENT_POLL_S = 1.0  # how often a worker checks that its parent is alive
INTERRUPT_GRACE_S = 60.0  # how long an interrupted parent waits for its workers to hand their trials back
INTERRUPTED = 130  # a worker's exit code after Ctrl-C, as a shell reports a process that SIGINT ended
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# the trials table: Optuna's default columns less system_attrs (internal, and nested dicts that parquet cannot store)
TRIALS_COLUMNS = ("number", "value", "state", "params", "user_attrs", "datetime_start", "datetime_complete", "duration")


class Range(BaseModel):
    """A continuous range of one sweep axis."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False
    grid: int = Field(5, ge=2, description="points that --sampler grid tries: evenly spaced, geometric if log")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low = {self.low:g} must be smaller than high = {self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"low = {self.low:g} is not allowed on a log scale: it must be > 0")
        return self

    def points(self) -> list[float]:
        spaced = np.geomspace if self.log else np.linspace
        return [float(x) for x in spaced(self.low, self.high, self.grid)]


class SearchSettings(BaseModel):
    """The ``[search]`` table; ``space`` maps sweep axes to a ``Range`` table or a list of choices."""

    model_config = ConfigDict(extra="forbid")
    objective: str = Field(min_length=1, description="a metric the task evaluates (a members-table column)")
    direction: Literal["minimize", "maximize"]
    stale_after: float = Field(86400.0, gt=0, description="seconds after which a RUNNING trial counts as dead")
    space: dict[str, Any] = Field(min_length=1)


@dataclass(frozen=True)
class Search:
    """A study and how to run it: everything a worker needs (picklable: spawned workers get a copy)."""

    experiment: config.Experiment
    settings: SearchSettings
    space: dict[str, Range | list[Any]]
    source: str  # the experiment file, for error messages
    command: str  # EXPERIMENT as the user gave it, for the command that reproduces a trial
    overrides: tuple[str, ...]
    study_name: str
    storage: str  # an Optuna RDB URL, or the path of a journal file
    directory: Path  # results/<experiment>/search-<study>/: batches, trials table, default journal
    n_trials: int
    batch_size: int
    sampler: SamplerName
    pruner: PrunerName
    seed: int | None
    tensorboard: Path | None = None  # --tensorboard: each trial's metrics as a TensorBoard run (tau_lab.monitor)

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return {
            name: FloatDistribution(dim.low, dim.high, log=dim.log)
            if isinstance(dim, Range)
            else CategoricalDistribution(dim)
            for name, dim in self.space.items()
        }

    @property
    def grid(self) -> dict[str, list[Any]]:
        return {name: dim.points() if isinstance(dim, Range) else dim for name, dim in self.space.items()}


def parse_space(experiment: config.Experiment, source: str) -> tuple[SearchSettings, dict[str, Range | list[Any]]]:
    """Validate ``[search]`` against the experiment: every searched key is a sweep axis whose extreme
    values pass the task's own checks, and every axis not searched has one value."""
    if experiment.search is None:
        raise ConfigError(f"{source}: no [search] table: tau-lab search needs one (see docs/search.md)")
    try:
        settings = SearchSettings.model_validate(experiment.search)
    except ValidationError as err:
        raise ConfigError(config._one_line(err, source, "search")) from None
    grid = experiment.sweep.model_dump()  # the task's Sweep: the axes it was given
    axes = [axis for axis in grid if axis != "seeds"]
    space: dict[str, Range | list[Any]] = {}
    for name, value in settings.space.items():
        key = f"search.space.{name}"
        if name not in axes:
            raise ConfigError(
                f"{source}: {key}: not a sweep axis of task {experiment.task}: use one of {', '.join(axes)}"
            )
        if isinstance(value, dict):
            try:
                space[name] = Range.model_validate(value)
            except ValidationError as err:
                raise ConfigError(config._one_line(err, source, key)) from None
        elif isinstance(value, list) and value:
            space[name] = value
        else:
            raise ConfigError(
                f"{source}: {key} = {value!r}: use a range {{low = ..., high = ..., log = ...}} or a list of choices"
            )
    for axis in ["seeds", *axes]:
        values = grid[axis]
        if axis not in space and len(values) != 1:
            raise ConfigError(
                f"{source}: sweep.{axis} = {values!r}: a search trains one value of each axis it does not "
                f"search: give one value, or search it in [search.space]"
            )
    # The extremes of each range and every choice must pass the checks a sweep over them would pass.
    extremes = {name: [dim.low, dim.high] if isinstance(dim, Range) else dim for name, dim in space.items()}
    raw = experiment.model_dump(exclude_none=True)
    try:
        config.validate(raw | {"sweep": raw["sweep"] | extremes}, source)
    except ConfigError as err:
        raise ConfigError(str(err).replace(f"{source}: sweep.", f"{source}: search.space.", 1)) from None
    return settings, space


def load(
    experiment: str,
    overrides: list[str] | None = None,
    *,
    n_trials: int,
    batch_size: int,
    sampler: SamplerName = SamplerName.tpe,
    pruner: PrunerName = PrunerName.median,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int | None = None,
    root: Path = results.RESULTS_DIR,
    tensorboard: Path | None = None,
) -> Search:
    """A ``Search`` from an experiment name or path, ``--set`` overrides and the command's options.

    The study is named after the experiment unless ``study_name`` is given; its default storage is
    the journal file ``results/<experiment>/search-<study>/journal.log``. A grid search runs at most
    one trial per grid point. With ``tensorboard`` (a folder) each trial's metrics are written there live
    (``tau_lab.monitor``).
    """
    if tensorboard is not None:
        from tau_lab import monitor

        monitor.require()
    overrides = list(overrides or [])
    spec, path = config.load_experiment(experiment, overrides)
    settings, space = parse_space(spec, str(path))
    study_name = study_name or path.stem
    if not STUDY_NAME.fullmatch(study_name):
        raise UserError(f"--study {study_name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    directory = root / path.stem / f"search-{study_name}"
    search = Search(
        experiment=spec,
        settings=settings,
        space=space,
        source=str(path),
        command=experiment,
        overrides=tuple(overrides),
        study_name=study_name,
        storage=storage or str(directory / "journal.log"),
        directory=directory,
        n_trials=n_trials,
        batch_size=batch_size,
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        tensorboard=tensorboard,
    )
    if sampler is SamplerName.grid:
        grid_size = math.prod(len(values) for values in search.grid.values())
        return dataclasses.replace(search, n_trials=min(n_trials, grid_size))
    return search


def open_storage(storage: str) -> BaseStorage:
    """An RDB URL (``postgresql://...``, ``sqlite:///...``), or else the path of a journal file.

    On PostgreSQL the first connection creates Optuna's tables; workers that start together on a
    fresh database would race to create them (``DuplicateTable``, or ``IntegrityError`` on
    ``alembic_version``), so creation happens under a database-wide advisory lock: the first
    worker creates the schema, the others wait and find it. A storage that cannot be opened is one
    line, its password hidden.
    """
    if "://" not in storage:
        with results.writing(Path(storage)):
            Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(storage))
    try:
        url = sqlalchemy.engine.make_url(storage)
        if url.get_backend_name() != "postgresql":
            return RDBStorage(storage)
        locker = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with locker.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
                try:
                    return RDBStorage(storage)
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
        finally:
            locker.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:  # a bad URL, no driver, no server, refused login
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise UserError(f"--storage {results.redact(storage)}: cannot open it: {results.redact(reason)}") from None


def check_workers(storage: str, workers: int) -> None:
    """Several workers need a storage that tau-lab can lock to keep N exact: a journal file or PostgreSQL."""
    if workers == 1 or "://" not in storage:
        return
    backend = sqlalchemy.engine.make_url(storage).get_backend_name()
    if backend == "sqlite":
        raise UserError(
            f"--storage {results.redact(storage)} with --workers {workers}: SQLite serves one process at a time "
            f"('database is locked'): leave out --storage for the journal file, or use a PostgreSQL URL"
        )
    if backend != "postgresql":
        raise UserError(
            f"--storage {results.redact(storage)} with --workers {workers}: several workers need the journal file "
            f"(leave out --storage) or a PostgreSQL URL"
        )


def ask_lock(search: Search, storage: BaseStorage) -> contextlib.AbstractContextManager[None]:
    """Hold the study's lock while counting its trials and asking new ones (``study_lock``)."""
    return study_lock(search.study_name, search.storage, storage)


@contextlib.contextmanager
def study_lock(study_name: str, url: str, storage: BaseStorage) -> Iterator[None]:
    """Hold one study's lock in the storage at ``url`` (opened as ``storage``).

    Both locks die with their holder (a killed worker cannot leave the study locked): ``flock`` on
    a file beside the journal, a session-level advisory lock on PostgreSQL keyed by the study's
    name (crc32: the same number on every machine, unlike Python's salted ``hash``).
    """
    if isinstance(storage, RDBStorage):
        if storage.engine.dialect.name != "postgresql":  # one worker (check_workers): nothing to exclude
            yield
            return
        key = zlib.crc32(study_name.encode())
        with storage.engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    with open(f"{url}.ask-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def make_sampler(search: Search, seed: int | None) -> optuna.samplers.BaseSampler:
    if search.sampler is SamplerName.tpe:
        # constant_liar: trials of the same batch see each other as running, so TPE spreads them
        return optuna.samplers.TPESampler(constant_liar=True, seed=seed)
    if search.sampler is SamplerName.random:
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler is SamplerName.cmaes:
        # CMA-ES models numbers only; choices (tau_mode) are drawn at random, as expected, so no warning
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.GridSampler(search.grid, seed=seed)


def make_pruner(search: Search) -> optuna.pruners.BasePruner:
    if search.pruner is PrunerName.median:
        return optuna.pruners.MedianPruner()
    if search.pruner is PrunerName.hyperband:
        # the resource is the training step, reported at every evaluation
        steps = search.experiment.steps
        return optuna.pruners.HyperbandPruner(min_resource=min(search.experiment.eval_every, steps), max_resource=steps)
    return optuna.pruners.NopPruner()


def worker_seed(seed: int | None, worker: int, n_existing: int) -> int | None:
    """The sampler seed of one worker: ``seed`` mixed with the worker's index and the number of trials
    the study held when it joined, so that a second worker or a resumed study does not replay the same
    proposals (a seeded sampler restarts its random stream in every process)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])


def open_study(search: Search, storage: BaseStorage, worker: int = 0) -> optuna.Study:
    """Create the study or join it; refuse one that optimises something else."""
    study = optuna.create_study(
        storage=storage,
        study_name=search.study_name,
        direction=search.settings.direction,
        pruner=make_pruner(search),
        load_if_exists=True,
    )
    objective, direction = search.settings.objective, search.settings.direction
    held = study.user_attrs.get("objective", objective), study.direction.name.lower()
    if held != (objective, direction):
        raise UserError(
            f"study '{search.study_name}' in {results.redact(search.storage)} optimises {held[0]} ({held[1]}), but "
            f"{search.source} asks for {objective} ({direction}): pick another --study"
        )
    study.set_user_attr("objective", objective)
    if study.metric_names != [objective]:
        with warnings.catch_warnings():  # experimental in Optuna 4, and what optuna-dashboard labels its axes with
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([objective])
    # set once the study is open: the seed depends on how many trials it holds
    study.sampler = make_sampler(search, worker_seed(search.seed, worker, len(study.trials)))
    return study


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool:
    """Whether ``host:pid`` may still run: only a process on this host can be seen to be gone."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        pass
    return True


def requeue(study: optuna.Study, trial: FrozenTrial | Trial) -> bool:
    """Fail a RUNNING trial and queue its parameters again; False if it finished meanwhile."""
    try:
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, UpdateFinishedTrialError):  # its worker, or another recoverer, finished it first
        return False
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return True


def recover_stale(study: optuna.Study, stale_after: float) -> list[int]:
    """Fail and re-queue the RUNNING trials of dead workers; returns their numbers."""
    now, recovered = time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        started = trial.user_attrs.get("started", trial.datetime_start.timestamp())
        dead = worker is not None and not _alive(worker)
        if (dead or now - started > stale_after) and requeue(study, trial):
            why = f"its worker {worker} is gone" if dead else f"it started more than {stale_after:g} s ago"
            logger.info("trial %d failed and re-queued: %s", trial.number, why)
            recovered.append(trial.number)
    return recovered


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward N: finished or running, less failed ones whose parameters were retried."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return [t for t in trials if t.state != TrialState.WAITING and t.number not in retried]


def ask(study: optuna.Study, search: Search) -> list[Trial]:
    """Up to ``batch_size`` trials, as many as the study lacks toward N (re-queued ones first)."""
    n = min(search.batch_size, search.n_trials - len(counted(study.get_trials(deepcopy=False))))
    trials = [study.ask(search.distributions) for _ in range(n)]
    for trial in trials:
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("started", time.time())  # epoch seconds: comparable across time zones
    return trials


def member_rows(search: Search, trials: list[Trial]) -> list[dict[str, Any]]:
    """One member per trial: its parameters on top of the experiment's one-value sweep."""
    rows = []
    for member, trial in enumerate(trials):
        sweep = search.experiment.sweep.model_copy(update={name: [value] for name, value in trial.params.items()})
        (row,) = config.members(search.experiment.model_copy(update={"sweep": sweep}))
        rows.append(row | {"member": member, "trial": trial.number})
    return rows


def _tell(study: optuna.Study, trial: Trial, value: float | None = None, state: TrialState | None = None) -> None:
    try:
        study.tell(trial, value, state)
    except RuntimeError:
        # GridSampler calls study.stop() once the grid is covered, which raises outside study.optimize;
        # the trial is stored before that
        if not isinstance(study.sampler, optuna.samplers.GridSampler):
            raise


def run_batch(study: optuna.Study, search: Search, trials: list[Trial]) -> Path:
    """Train the trials as one population, report every evaluation, tell each result; the run directory."""
    objective, start = search.settings.objective, time.perf_counter()
    pruned: set[int] = set()

    def on_eval(chunk: list[dict[str, Any]], step: int, evaluation: dict[str, Tensor]) -> Tensor:
        if objective not in evaluation:
            raise ConfigError(
                f"{search.source}: search.objective = {objective!r} is not allowed: "
                f"the task evaluates {', '.join(evaluation)}"
            )
        prune = torch.zeros(len(chunk), dtype=torch.bool)
        for i, (row, value) in enumerate(zip(chunk, evaluation[objective].tolist(), strict=True)):
            trial = trials[row["member"]]
            if trial.number in pruned or not math.isfinite(value):  # frozen, or diverged: told at the end
                continue
            trial.report(value, step)
            # at the last step pruning saves nothing: the trial completes, and the sampler learns from its value
            if step < search.experiment.steps and trial.should_prune():
                pruned.add(trial.number)
                prune[i] = True
        return prune

    try:
        rows, sink = member_rows(search, trials), None
        if search.tensorboard is not None:
            from tau_lab import monitor

            sink = monitor.TensorBoardSink(monitor.logdir(search.tensorboard, search.directory), rows)
        device = engine.resolve_device(search.experiment.device)
        files = results.run_files(config.dumps(search.experiment), device)
        run_dir, out = engine.run_sweep(
            search.experiment,
            search.directory.name,
            run_dir=results.new_run_dir(search.directory.name, search.directory.parent, files),
            root=search.directory.parent,
            rows=rows,
            on_eval=on_eval,
            sink=sink,
        )
    except BaseException as err:  # interrupted or broken: the next worker runs these parameters again
        for trial in trials:
            trial.set_user_attr("fail_reason", results.redact(f"{type(err).__name__}: {err}"))
            requeue(study, trial)
        raise
    states = []
    for trial, member in zip(trials, out["members"].to_dict("records"), strict=True):
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("member", member["member"])
        value = float(member[objective])
        if member["status"] == "pruned":
            state = TrialState.PRUNED
        elif member["status"] == "diverged":
            state = TrialState.FAIL
            trial.set_user_attr("fail_reason", f"diverged at step {member['diverged_step']}")
        elif not math.isfinite(value):
            state = TrialState.FAIL
            trial.set_user_attr("fail_reason", f"{objective} = {value}")
        else:
            state = TrialState.COMPLETE
        _tell(study, trial, value if state == TrialState.COMPLETE else None, state)
        states.append(state.name.lower())
    best = best_trial(study)
    logger.info(
        "trials %s: %s in %.1f s (%s); best so far: %s",
        ", ".join(str(t.number) for t in trials),
        ", ".join(f"{states.count(state)} {state}" for state in dict.fromkeys(states)),
        time.perf_counter() - start,
        run_dir,
        "none" if best is None else f"{objective} = {best.value:.4g} (trial {best.number})",
    )
    return run_dir


def optimize(search: Search, storage: BaseStorage, study: optuna.Study) -> None:
    """One worker's loop: recover stale trials, ask a batch, train it, tell; until the study has N trials."""
    while True:
        with ask_lock(search, storage):
            recover_stale(study, search.settings.stale_after)
            trials = ask(study, search)
        if not trials:
            return
        run_batch(study, search, trials)


def _stop_with(parent: int) -> None:
    """Interrupt this worker's main thread once its parent is gone (killed, so ``run`` could not stop it):
    the worker hands its running trials back to the study and exits, instead of training on alone."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    _thread.interrupt_main()


def _work(search: Search, worker: int, threads: int, parent: int) -> None:
    """A spawned worker: its share of the CPU, the parent's log format; bad input is one line and exit
    code 2, Ctrl-C (which the whole process group gets) a quiet exit once its trials are handed back."""
    threading.Thread(target=_stop_with, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        storage = open_storage(search.storage)
        optimize(search, storage, open_study(search, storage, worker))
    except UserError as err:
        print(f"error: worker {worker}: {results.redact(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(INTERRUPTED) from None


def _run_workers(search: Search, workers: int) -> None:
    """``workers`` spawned worker processes sharing the study, stopped with this one whatever stops it."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch or locks
    threads = max(1, torch.get_num_threads() // workers)
    processes = [context.Process(target=_work, args=(search, w, threads, os.getpid())) for w in range(workers)]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group: give the workers time to hand their trials back
        for process in processes:
            process.join(timeout=INTERRUPT_GRACE_S)
        raise
    finally:
        for process in processes:  # a parent that stops for any reason stops its workers
            if process.is_alive():
                process.terminate()
                process.join()
    codes = [p.exitcode for p in processes if p.exitcode]
    if INTERRUPTED in codes:  # someone interrupted the workers alone: the study is resumable all the same
        raise KeyboardInterrupt
    if codes and all(code == 2 for code in codes):  # each printed its one-line error
        raise UserError(f"{len(codes)} of {workers} workers stopped on the error above")
    if codes:  # a worker's traceback is above it
        raise RuntimeError(f"{len(codes)} of {workers} workers failed (exit codes {', '.join(map(str, codes))})")


def write_trials(search: Search, study: optuna.Study) -> None:
    """``trials.parquet`` + ``trials.csv`` in the search's folder: one row per trial, as the study holds them now."""
    trials = study.trials_dataframe(attrs=TRIALS_COLUMNS)
    # with metric names set Optuna calls the column value_<objective>: the table keeps its plain 'value'
    trials = trials.rename(columns={f"value_{search.settings.objective}": "value"})
    results.write_table(trials, search.directory / "trials", csv=True)


def run(search: Search, workers: int = 1) -> optuna.Study:
    """Run ``workers`` worker processes (this one alone when 1) until the study has N trials; then
    write its trials table and return the study. Interrupted, it writes the table as it stands
    (running trials handed back) before letting the interruption through."""
    check_workers(search.storage, workers)
    storage = open_storage(search.storage)
    study = open_study(search, storage)  # created (or refused) once, before any worker joins
    try:
        if workers == 1:
            optimize(search, storage, study)
        else:
            _run_workers(search, workers)
    except KeyboardInterrupt:
        write_trials(search, study)
        raise
    write_trials(search, study)
    return study


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if completed else None


def _toml(value: Any) -> str:
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def reproduce(search: Search, trial: FrozenTrial) -> str:
    """The ``tau-lab sweep`` command that trains ``trial`` alone (its member reproduces a standalone run)."""
    sets = [*search.overrides, *(f"sweep.{name}=[{_toml(value)}]" for name, value in trial.params.items())]
    return shlex.join(["tau-lab", "sweep", search.command, *(arg for s in sets for arg in ("--set", s))])
