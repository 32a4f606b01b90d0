"""Scale-out of a sweep: workers on several machines share its populations through an Optuna storage.

``tau-lab sweep NAME --storage URL`` run on several machines (or several times on one) trains disjoint
populations of one sweep, and the worker that finishes the last one assembles the ordinary run
directory (``members``, ``metrics``, ``embeddings``, ``config.toml``, ``env.json``) that a single
``tau-lab sweep NAME`` writes. It is an Optuna study, not a scheduler of its own:

- **One study per configuration.** The study is ``sweep-<name>-<hash>``, ``hash`` the first 12 hex
  digits of ``config_hash(fingerprint(experiment))`` (everything that changes what is computed;
  ``device`` and ``compile`` may differ between workers). Workers of one configuration join one study;
  a worker whose configuration differs from an unfinished sweep of the same name in the storage is
  refused with one line naming the keys that differ.
- **A trial is a population.** ``engine.chunks`` splits the members into populations that fit
  ``memory_budget_mb``; a ``GridSampler`` over the chunk indices (``params["chunk"]``) hands each
  unclaimed one to the next worker that asks, so a population is trained as one batched computation.
  Asking happens under the study's lock (``search.study_lock``: ``flock`` beside a journal file, an
  advisory lock on PostgreSQL), so two workers never claim the same chunk.
- **Outputs live in the storage**, since machines need not share a file system: each chunk's per-member
  status, metric log and embeddings, as a compressed ``.npz`` in base64, are the user attribute
  ``output`` of one trial in the companion study ``<study>.outputs`` (kept apart so that claiming a
  chunk does not load every output). Only then is the chunk's trial told ``COMPLETE`` (value: its
  training seconds).
- **Failures are retried.** An error or Ctrl-C tells the trial ``FAIL`` (``fail_reason``); a worker
  that dies leaves it ``RUNNING``. While it trains, a worker writes the time into the trial's user
  attribute ``heartbeat`` every ``HEARTBEAT_S`` seconds (Optuna's own heartbeat exists only for RDB
  storages under ``study.optimize``; this one works on a journal file too); a ``RUNNING`` trial whose
  worker is a gone process on this host, or whose heartbeat is older than ``STALE_AFTER_S``, is failed
  by the next worker that claims. The grid counts a failed point as visited, so a failed chunk is
  queued again (``study.enqueue_trial``, user attribute ``retry_of``) before the next claim. A worker
  resumes a chunk from its own checkpoint when it trained part of it before (``--resume``'s checkpoints
  in ``results/<name>/scaleout-<hash>/``); another machine starts it from step 0.
- **One run id.** The first claim draws the run id (``results.new_run_id``) and keeps it in the study's user
  attribute ``run_id``; the assembled run directory is ``results/<name>/<run-id>`` (a new id only where that
  folder exists already, as when ``--assemble`` copies a run assembled into the same results folder). With
  ``--tensorboard DIR`` each worker writes the members it trains to ``DIR/<name>/<run-id>/member-<id>``, the
  layout of a plain sweep, so workers that share ``DIR`` fill one run's folder.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna
import pandas as pd
import sqlalchemy
import torch
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from tau_lab import config, engine, monitor, results, search
from tau_lab.checkpoint import config_hash, fingerprint
from tau_lab.errors import UserError

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30.0  # how often a training worker records that it is alive
STALE_AFTER_S = 300.0  # a RUNNING chunk without a heartbeat for this long is failed and queued again
HASH_DIGITS = 12  # of the configuration's SHA-256 in the study's name: 48 bits, no collision in practice


@dataclass(frozen=True)
class Plan:
    """One sweep split over workers: the experiment, its populations, its study and where things go."""

    experiment: config.Experiment
    storage: str  # a postgresql:// URL or the path of a journal file
    identity: dict[str, str]  # checkpoint.fingerprint: what must be equal in every worker
    config_hash: str
    rows: list[dict[str, Any]]  # every member, as config.members lists them
    populations: list[list[dict[str, Any]]]  # engine.chunks(rows): one trial each
    root: Path  # --results
    tensorboard: Path | None = None  # --tensorboard: where this worker writes the series of its members

    @property
    def study_name(self) -> str:
        return f"sweep-{self.experiment.name}-{self.config_hash[:HASH_DIGITS]}"

    @property
    def outputs_name(self) -> str:
        return f"{self.study_name}.outputs"

    @property
    def workdir(self) -> Path:
        """This machine's checkpoints and metric parts of the chunks it trains."""
        return self.root / self.experiment.name / f"scaleout-{self.config_hash[:HASH_DIGITS]}"

    @property
    def distributions(self) -> dict[str, CategoricalDistribution]:
        return {"chunk": CategoricalDistribution(list(range(len(self.populations))))}


def plan(
    experiment: config.Experiment, storage: str, root: Path = results.RESULTS_DIR, tensorboard: Path | None = None
) -> Plan:
    """The ``Plan`` of ``experiment`` over ``storage``: a journal file path or a PostgreSQL URL; with
    ``tensorboard``, the worker writes its members' series there (``monitor.TensorBoardSink``).

    Other databases are refused: claiming needs a lock that tau-lab takes on these two only.
    """
    if "://" in storage:
        try:
            backend = sqlalchemy.engine.make_url(storage).get_backend_name()
        except sqlalchemy.exc.ArgumentError:
            backend = None
        if backend != "postgresql":
            raise UserError(
                f"--storage {results.redact(storage)}: workers of a sweep claim populations under a lock that "
                "tau-lab takes on a journal file or PostgreSQL only: give a file path or a postgresql:// URL"
            )
    identity = fingerprint(experiment)
    rows = config.members(experiment)
    populations = engine.chunks(experiment, rows)
    return Plan(experiment, storage, identity, config_hash(identity), rows, populations, root, tensorboard)


class _ChunkSampler(optuna.samplers.GridSampler):
    """``GridSampler`` without its ``study.stop()`` once every point is visited: outside ``study.optimize``
    that raises, and the workers see for themselves when no chunk is left (``claim``)."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        pass


def _chunks_done(storage: BaseStorage, study_id: int) -> set[int]:
    return {t.params["chunk"] for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))}


def _refuse_other_configs(plan: Plan, storage: BaseStorage) -> None:
    """A storage that holds an unfinished sweep of this name with another configuration is refused:
    the worker would train a sweep of its own beside it, and neither would get its help."""
    for other in storage.get_all_studies():
        attrs = other.user_attrs
        if other.study_name == plan.study_name or attrs.get("experiment") != plan.experiment.name:
            continue
        if "config" not in attrs or len(_chunks_done(storage, other._study_id)) >= attrs["chunks"]:
            continue
        held = json.loads(attrs["config"])
        keys = sorted(k for k in held.keys() | plan.identity.keys() if held.get(k) != plan.identity.get(k))
        changes = "; ".join(f"{k}: {held.get(k, '(unset)')} → {plan.identity.get(k, '(unset)')}" for k in keys[:5])
        changes += f" and {len(keys) - 5} more" if len(keys) > 5 else ""
        raise UserError(
            f"--storage {results.redact(plan.storage)}: it holds an unfinished sweep of '{plan.experiment.name}' "
            f"with another configuration (study {other.study_name}; {changes}): run every worker with the same "
            f"experiment and --set options, finish or delete that study (optuna delete-study --study-name "
            f"{other.study_name} --storage URL), or name this sweep apart (--set name=...)"
        )


def open_sweep(plan: Plan, storage: BaseStorage) -> optuna.Study:
    """Create the sweep's study or join it; refuse a storage that holds an unfinished sweep of the same
    name with another configuration."""
    _refuse_other_configs(plan, storage)
    sampler = _ChunkSampler({"chunk": list(range(len(plan.populations)))})
    study = optuna.create_study(
        storage=storage, study_name=plan.study_name, direction="minimize", sampler=sampler, load_if_exists=True
    )
    # two configurations whose hashes share the 12 digits of the name: 2^-48 odds, but refused rather than mixed
    if study.user_attrs.get("config_hash", plan.config_hash) != plan.config_hash:
        raise UserError(f"study {plan.study_name}: it holds another configuration under the same hash prefix")
    if "config" not in study.user_attrs:  # the first worker describes the study for the others
        study.set_user_attr("experiment", plan.experiment.name)
        study.set_user_attr("config_hash", plan.config_hash)
        study.set_user_attr("config", json.dumps(plan.identity, sort_keys=True))
        study.set_user_attr("members", len(plan.rows))
        study.set_user_attr("chunks", len(plan.populations))
    return study


def _chunk(trial: FrozenTrial) -> int | None:
    """A trial's chunk; a WAITING (re-queued) trial holds it in its fixed parameters."""
    if "chunk" in trial.params:
        return trial.params["chunk"]
    return trial.system_attrs.get("fixed_params", {}).get("chunk")


def _fail(study: optuna.Study, trial: FrozenTrial | Trial, reason: str) -> bool:
    """Tell a running trial FAIL with its reason; False if it finished meanwhile (another worker failed it)."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", results.redact(reason))
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, UpdateFinishedTrialError):
        return False
    return True


def recover_stale(study: optuna.Study, trials: list[FrozenTrial], stale_after: float = STALE_AFTER_S) -> list[int]:
    """Fail the RUNNING trials of dead workers: a gone process on this host, or no heartbeat for ``stale_after``
    seconds (another host's processes cannot be seen). Returns their numbers."""
    now, failed = time.time(), []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        worker = trial.user_attrs.get("worker")
        beat = trial.user_attrs.get("heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else now)
        dead = worker is not None and not search._alive(worker)
        if dead or now - beat > stale_after:
            why = f"its worker {worker} is gone" if dead else f"no heartbeat for {now - beat:.0f} s"
            if _fail(study, trial, why):
                logger.info("chunk %s (trial %d) failed: %s", _chunk(trial), trial.number, why)
                failed.append(trial.number)
    return failed


@dataclass(frozen=True)
class Chunks:
    """Where each chunk stands: done (its first COMPLETE trial), running (workers), queued, failed."""

    done: dict[int, FrozenTrial]
    running: dict[int, list[str]]
    waiting: set[int]
    failed: dict[int, int]  # chunk -> its last failed trial
    chunks: int

    @classmethod
    def of(cls, trials: list[FrozenTrial], chunks: int) -> Chunks:
        done: dict[int, FrozenTrial] = {}
        running: dict[int, list[str]] = {}
        waiting, failed = set(), {}
        for trial in sorted(trials, key=lambda t: t.number):
            chunk = _chunk(trial)
            if trial.state == TrialState.COMPLETE:
                done.setdefault(chunk, trial)
            elif trial.state == TrialState.RUNNING:
                running.setdefault(chunk, []).append(trial.user_attrs.get("worker", "a worker"))
            elif trial.state == TrialState.WAITING:
                waiting.add(chunk)
            elif trial.state == TrialState.FAIL:
                failed[chunk] = trial.number
        return cls(done, running, waiting, failed, chunks)

    @property
    def missing(self) -> list[int]:
        """Chunks neither trained nor training: the ones a worker may claim."""
        return [c for c in range(self.chunks) if c not in self.done and c not in self.running]

    def describe(self) -> str:
        """What is missing, in one line: ``chunks 1, 3 of 4 are not trained (1: training on h:12; 3: unclaimed)``."""
        missing = [c for c in range(self.chunks) if c not in self.done]
        where = []
        for c in missing:
            if c in self.running:
                where.append(f"{c}: training on {', '.join(self.running[c])}")
            elif c in self.failed:
                where.append(f"{c}: failed, queued again" if c in self.waiting else f"{c}: failed")
            else:
                where.append(f"{c}: unclaimed")
        return f"chunks {', '.join(map(str, missing))} of {self.chunks} are not trained ({'; '.join(where)})"


def claim(plan: Plan, study: optuna.Study, storage: BaseStorage) -> Trial | None:
    """Under the study's lock: fail stale trials, queue failed chunks again, and ask the next chunk (queued
    ones first, then the grid's unvisited ones); None when every chunk is trained or training. The first
    claim draws the sweep's run id (user attribute ``run_id``), under the lock: one for every worker."""
    with search.study_lock(plan.study_name, plan.storage, storage):
        trials = study.get_trials(deepcopy=False)
        if recover_stale(study, trials):
            trials = study.get_trials(deepcopy=False)
        progress = Chunks.of(trials, len(plan.populations))
        if not progress.missing:
            return None
        if "run_id" not in study.user_attrs:
            study.set_user_attr("run_id", results.new_run_id())
        # the grid counts a failed point as visited: queue it again, or no one would ask for it
        for chunk in progress.missing:
            if chunk in progress.failed and chunk not in progress.waiting:
                study.enqueue_trial({"chunk": chunk}, user_attrs={"retry_of": progress.failed[chunk]})
        trial = study.ask(plan.distributions)
        trial.set_user_attr("worker", search.worker_id())
        trial.set_user_attr("started", time.time())  # epoch seconds: comparable across machines' time zones
        trial.set_user_attr("heartbeat", time.time())
        return trial


@contextlib.contextmanager
def heartbeat(trial: Trial, every: float = HEARTBEAT_S) -> Iterator[None]:
    """Record ``time.time()`` in the trial's user attribute ``heartbeat`` every ``every`` seconds, from a thread."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                trial.set_user_attr("heartbeat", time.time())
            except UpdateFinishedTrialError:  # another worker failed it as stale: its chunk is queued again
                return
            except Exception as err:  # a storage hiccup must not stop the training: try again at the next beat
                logger.warning("chunk heartbeat not recorded: %s", results.redact(str(err)))

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def tensorboard_dir(tensorboard: Path, plan: Plan, run_id: str) -> Path:
    """``--tensorboard DIR``'s folder of the sweep, ``DIR/<name>/<run-id>`` with the study's run id: that of
    the run directory ``assemble`` writes, as ``monitor.logdir`` names a plain sweep's."""
    return monitor.logdir(tensorboard, plan.root / plan.experiment.name / run_id)


# ----------------------------------------------------------------------------- a chunk's outputs in the storage


class StoredLog:
    """A chunk's metric log read back from the storage: what ``engine.tables`` asks of a ``MetricLog``."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def frame(self) -> pd.DataFrame:
        return self._frame


def encode(output: dict[str, Any]) -> str:
    """``train_population``'s output, less the weights, as base64 of a compressed ``.npz``: per member
    ``alive``, ``pruned``, ``diverged_step`` ``[K]``; the metric log as parquet bytes (read back exactly as
    the run's own parts are); the embeddings ``[evaluations, K, points, dim]`` and their steps."""
    buffer = io.BytesIO()
    output["log"].frame().to_parquet(buffer, index=False)
    arrays = {name: output[name].numpy() for name in ("alive", "pruned", "diverged_step")}
    arrays["metrics"] = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    if output["embeddings"]:
        arrays["embedding_steps"] = np.array([step for step, _ in output["embeddings"]], dtype=np.int64)
        arrays["embeddings"] = np.stack([e.numpy() for _, e in output["embeddings"]])
    packed = io.BytesIO()
    np.savez_compressed(packed, **arrays)
    return base64.b64encode(packed.getvalue()).decode("ascii")


def decode(text: str) -> dict[str, Any]:
    """The inverse of ``encode``, as ``engine.tables`` takes it (``allow_pickle=False``: data only)."""
    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as arrays:
        output: dict[str, Any] = {name: torch.from_numpy(arrays[name]) for name in ("alive", "pruned", "diverged_step")}
        output["log"] = StoredLog(pd.read_parquet(io.BytesIO(arrays["metrics"].tobytes())))
        output["embeddings"] = []
        if "embeddings" in arrays:
            steps, embeddings = arrays["embedding_steps"].tolist(), arrays["embeddings"]
            output["embeddings"] = [(step, torch.from_numpy(e)) for step, e in zip(steps, embeddings, strict=True)]
    return output


def train_chunk(plan: Plan, study: optuna.Study, outputs: optuna.Study, trial: Trial, progress: bool = False) -> bool:
    """Train the claimed chunk, store its outputs (a trial of ``outputs``) and tell COMPLETE; on any error
    or Ctrl-C tell FAIL and re-raise. False when another worker failed the trial meanwhile (its result is
    dropped). With ``plan.tensorboard``, the chunk's members are written to their TensorBoard runs as they
    train (``tensorboard_dir``)."""
    chunk = trial.params["chunk"]
    rows, start = plan.populations[chunk], time.perf_counter()
    checkpoint = plan.workdir / "checkpoints" / f"chunk-{chunk}.pt"
    label = f"chunk {chunk + 1}/{len(plan.populations)}"
    sink = None
    try:
        device = engine.resolve_device(plan.experiment.device)
        trial.set_user_attr("device", str(device))
        if plan.tensorboard is not None:
            logdir = tensorboard_dir(plan.tensorboard, plan, study.user_attrs["run_id"])
            sink = monitor.TensorBoardSink(logdir, plan.rows)
        with heartbeat(trial):
            output = engine.train_population(
                plan.experiment, rows, device, checkpoint, progress, label=label, sink=sink
            )
        payload = encode(output)
    except BaseException as err:  # interrupted or broken: the chunk is queued again at the next claim
        _fail(study, trial, "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}")
        raise
    finally:
        if sink is not None:
            sink.close()
    seconds = time.perf_counter() - start
    attrs = {"chunk": chunk, "trial": trial.number, "output": payload}
    outputs.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=float(chunk), user_attrs=attrs))
    try:
        study.tell(trial, seconds)
    except (ValueError, UpdateFinishedTrialError):
        logger.warning("chunk %d (trial %d) was failed as stale meanwhile: its result is dropped", chunk, trial.number)
        return False
    diverged = int((~output["alive"] & ~output["pruned"]).sum())
    logger.info("chunk %d: %d members (%d diverged) in %.1f s", chunk, len(rows), diverged, seconds)
    return True


# ----------------------------------------------------------------------------- assembling the run directory


def assemble(plan: Plan, study: optuna.Study, storage: BaseStorage) -> tuple[Path, dict[str, pd.DataFrame]]:
    """Write the sweep's run directory from the stored outputs of every chunk: the tables a single
    ``tau-lab sweep`` writes, with ``config.toml``, ``env.json`` and ``scaleout.json`` (which trial, worker
    and device trained each chunk), named by the study's run id. A sweep that is not finished is one line
    saying what is missing."""
    progress = Chunks.of(study.get_trials(deepcopy=False), len(plan.populations))
    if len(progress.done) < progress.chunks:
        raise UserError(
            f"study {plan.study_name} in {results.redact(plan.storage)}: {progress.describe()}: run the same "
            "tau-lab sweep command with --storage (without --assemble) to train them, then assemble"
        )
    outputs = optuna.load_study(study_name=plan.outputs_name, storage=storage)
    stored = {t.user_attrs["trial"]: t for t in outputs.get_trials(deepcopy=False)}
    trials = [progress.done[c] for c in range(progress.chunks)]
    out = engine.tables(plan.rows, [decode(stored[t.number].user_attrs["output"]) for t in trials])
    record = {
        "study": plan.study_name,
        "storage": results.redact(plan.storage),
        "chunks": [
            {
                "chunk": c,
                "trial": t.number,
                "worker": t.user_attrs.get("worker"),
                "device": t.user_attrs.get("device"),
                "seconds": t.value,
            }
            for c, t in enumerate(trials)
        ],
    }
    # env.json records the assembling process, which computes on the CPU whatever device the workers trained on
    files = results.run_files(config.dumps(plan.experiment), torch.device("cpu"))
    files |= {"scaleout.json": json.dumps(record)}
    run_id = study.user_attrs.get("run_id")  # none in a study claimed before tau-lab kept one
    run_dir = results.new_run_dir(plan.experiment.name, plan.root, files, run_id)
    if run_id is not None and run_dir.name != run_id:
        logger.warning(
            "%s exists already (assembled here before): this copy is %s; TensorBoard runs are named %s",
            run_dir.parent / run_id,
            run_dir.name,
            run_id,
        )
    for name, df in out.items():
        results.write_table(df, run_dir / name, csv=name == "members")
    return run_dir, out


def _assembler(plan: Plan, study: optuna.Study, storage: BaseStorage) -> bool:
    """Whether this worker assembles: every chunk is trained and no worker took the task before (checked and
    marked under the lock, so that two workers finishing together do not both write a run directory)."""
    with search.study_lock(plan.study_name, plan.storage, storage):
        progress = Chunks.of(study.get_trials(deepcopy=False), len(plan.populations))
        if len(progress.done) < progress.chunks or "assembled_by" in study.user_attrs:
            return False
        study.set_user_attr("assembled_by", search.worker_id())
        return True


class Pending(NamedTuple):
    """What a worker that did not assemble the run directory leaves behind (``work``; ``tau_lab.sweep`` with a
    ``storage`` returns it): the sweep is not complete yet (``complete`` False: ``missing`` chunks are
    training on other workers, or failed and queued again), or it is, and ``assembled_by`` wrote its run
    directory (``assemble_only`` / ``tau-lab sweep --assemble`` / ``tau_lab.assemble`` makes a copy here)."""

    study: str  # the Optuna study of the sweep
    trained: tuple[int, ...]  # the chunks this worker trained
    missing: tuple[int, ...]  # the chunks not trained yet
    assembled_by: str | None  # the worker that wrote the run directory, once every chunk is trained
    run_id: str | None  # the run id the run directory gets (its TensorBoard runs' folder)
    message: str  # the line the worker logs

    @property
    def complete(self) -> bool:
        """Whether every chunk is trained (and the run directory written, by ``assembled_by``)."""
        return not self.missing


def work(plan: Plan, progress: bool = False) -> tuple[Path, dict[str, pd.DataFrame]] | Pending:
    """One worker: claim and train chunks until none is left; then, if every chunk is trained and no other
    worker has done it, assemble the run directory and return it with its tables (else ``Pending``, logged)."""
    storage = search.open_storage(plan.storage)
    study = open_sweep(plan, storage)
    outputs = optuna.create_study(storage=storage, study_name=plan.outputs_name, load_if_exists=True)
    logger.info(
        "worker %s joined study %s: %d members in %d chunks",
        search.worker_id(),
        plan.study_name,
        len(plan.rows),
        len(plan.populations),
    )
    trained = []
    while (trial := claim(plan, study, storage)) is not None:
        if train_chunk(plan, study, outputs, trial, progress):
            trained.append(trial.params["chunk"])
    if _assembler(plan, study, storage):
        return assemble(plan, study, storage)
    state = Chunks.of(study.get_trials(deepcopy=False), len(plan.populations))
    mine = f"trained chunks {', '.join(map(str, trained))}" if trained else "trained no chunk"
    attrs = study.user_attrs
    missing = tuple(c for c in range(state.chunks) if c not in state.done)
    if missing:
        message = f"{mine}; {state.describe()}: the worker that trains the last one assembles the run"
    else:
        by = attrs["assembled_by"]
        message = f"{mine}; every chunk is trained and {by} assembled the run (--assemble makes a copy here)"
    logger.info("%s", message)
    return Pending(plan.study_name, tuple(trained), missing, attrs.get("assembled_by"), attrs.get("run_id"), message)


def assemble_only(plan: Plan) -> tuple[Path, dict[str, pd.DataFrame]]:
    """``--assemble``: the run directory of a finished sweep in the storage, trained by whichever workers."""
    storage = search.open_storage(plan.storage)
    if plan.study_name not in {s.study_name for s in storage.get_all_studies()}:
        raise UserError(
            f"--storage {results.redact(plan.storage)}: no sweep of this configuration in it (study "
            f"{plan.study_name}): start workers with the same command without --assemble"
        )
    return assemble(plan, optuna.load_study(study_name=plan.study_name, storage=storage), storage)
