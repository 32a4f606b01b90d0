"""The ``tau-lab`` command: a thin shell over the library.

Only ``UserError`` (bad input: an experiment file, an override, data, a run directory, a path that
cannot be written) is shown as one line with exit code 2; anything else is a bug and shows its
traceback. Ctrl-C prints the command that resumes and exits 130; SIGTERM (a scheduler's stop, ``timeout``,
``kill``) does the same and exits 143: 128 + the signal's number, as shells report it. torch, pandas, Optuna
and the plots are imported inside the commands, so that ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import signal
import threading
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from tau_lab import __version__, results
from tau_lab.errors import UserError
from tau_lab.search_choices import PrunerName, SamplerName

if TYPE_CHECKING:
    import pandas as pd

    from tau_lab import config

app = typer.Typer(
    help="tau-lab: a laboratory for softmax-temperature studies (contrastive learning, distillation).\n\n"
    "Results go to --results (default: $TAU_LAB_RESULTS, else ./results); the distillation teacher is "
    "cached in $TAU_LAB_CACHE, else $XDG_CACHE_HOME/tau-lab (~/.cache/tau-lab).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_debug = {"on": False}
UNBOUNDED = 100_000  # the width of a "console" that is a file: tables keep their natural width


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn bad input (``UserError``) into one line on stderr and exit code 2 (a traceback with ``--debug``)."""
    try:
        yield
    except UserError as err:
        if _debug["on"]:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun bad input is the same on every process: one line
            typer.echo(f"error: {results.redact(str(err))}", err=True)
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tau-lab {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    _debug["on"] = debug


def print_frame(df: pd.DataFrame, title: str | None = None) -> None:
    """A table, numbers to 4 significant digits: as wide as the terminal allows (rich wraps the cells
    to fit), at its natural width when stdout is a file or a pipe (lines are not cut there)."""
    rich_table = Table(title=title)
    for column in df.columns:
        rich_table.add_column(str(column), justify="right")
    for row in df.itertuples(index=False):
        rich_table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    console = Console()
    if not console.is_terminal:  # a file keeps whole lines: as wide as the table wants
        console = Console(width=UNBOUNDED)
    console.print(rich_table)


def _floats(option: str, text: str) -> list[float]:
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise UserError(f"{option} {text!r}: {item.strip()!r} is not a number") from None
        if not math.isfinite(value):
            raise UserError(f"{option} {text!r}: {item.strip()} is not allowed: values must be finite")
        values.append(value)
    return values


class TableFormat(StrEnum):
    table = "table"
    csv = "csv"
    markdown = "markdown"


@app.command("table")
def table_command(
    logits: Annotated[str, typer.Option(help="Comma-separated logits or similarities, e.g. 0.5,0.25,-0.45,-0.1")],
    tau: Annotated[str, typer.Option(help="Comma-separated temperatures τ > 0, e.g. 1,0.5,0.05,0.01")],
    target: Annotated[int | None, typer.Option(help="Index of the positive; adds the cross-entropy column.")] = None,
    format: Annotated[
        TableFormat, typer.Option("--format", help="table (terminal), csv or markdown.")
    ] = TableFormat.table,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also draw p_i against τ to this .png/.svg/.pdf.")] = None,
) -> None:
    """Softmax probabilities (and cross-entropy) of LOGITS at each τ, as in the quadrants study's blog post."""
    from tau_lab import figures, table

    with user_errors():
        df = table.softmax_table(_floats("--logits", logits), _floats("--tau", tau), target)
        if plot is not None:
            figures.plot_softmax(_floats("--logits", logits), _floats("--tau", tau), plot, target)
            typer.echo(f"figure: {plot}", err=True)  # stderr: stdout may be a CSV or markdown table
    if format is TableFormat.csv:
        typer.echo(df.to_csv(index=False), nl=False)
    elif format is TableFormat.markdown:
        typer.echo(table.to_markdown(df), nl=False)
    else:
        print_frame(df, title="softmax(z / τ)")


@app.command("experiments")
def experiments_command() -> None:
    """List the studies with their descriptions: those shipped with tau-lab and ./experiments/*.toml."""
    from tau_lab import config

    for name, path in config.known_experiments().items():
        try:
            description = config.read_toml(path).get("description", "")
        except config.ConfigError as err:
            description = f"(not readable: {err})"
        typer.echo(f"{name:<24} {description}")


# The columns of the summary table: the member, its grid axes (the task's own among them), and what it reached.
MEMBER_COLUMNS = ["member", "tau_mode", "tau_init"]
OUTCOME_COLUMNS = ["seed", "status", "loss", "tau"]
# Shown for a task without headline metrics (quadrants: its geometry is its answer); a prefix stands for every
# column it starts.
GEOMETRY_COLUMNS = ["alignment", "uniformity", "tolerance", "cross_similarity"]


def summary_columns(task: str, members: pd.DataFrame) -> list[str]:
    """The terminal summary's columns: member, τ mode and start, the task's own grid axes that vary,
    seed, status, final loss and τ, then the task's headline metrics (``analysis.headline``), or its geometry
    when it has none."""
    from tau_lab.analysis.headline import headlines
    from tau_lab.tasks import TASKS
    from tau_lab.tasks.base import Sweep

    axes = [key for key in TASKS[task].Sweep.model_fields if key not in Sweep.model_fields]
    varying = [axis for axis in axes if axis in members and members[axis].astype(str).nunique() > 1]
    metrics = [h.column for h in headlines(task)]
    if not metrics:
        metrics = [c for prefix in GEOMETRY_COLUMNS for c in members.columns if c.startswith(prefix)]
    wanted = [*MEMBER_COLUMNS, *varying, *OUTCOME_COLUMNS, *metrics]
    return [c for c in dict.fromkeys(wanted) if c in members.columns]


def _task_axes() -> str:
    """The grid axes each task adds to ``[sweep]``, with their descriptions: the epilog of ``sweep --help``."""
    from tau_lab.tasks import TASKS
    from tau_lab.tasks.base import Sweep

    axes: dict[str, tuple[list[str], str]] = {}  # key -> (tasks, description)
    for name, task in TASKS.items():
        for key, field in task.Sweep.model_fields.items():
            if key not in Sweep.model_fields:
                axes.setdefault(key, ([], field.description or ""))[0].append(name)
    lines = [f"sweep.{key} ({', '.join(tasks)}): {text}".rstrip(": ") for key, (tasks, text) in axes.items()]
    return "\n\n".join(escape(line) for line in ["Grid axes beside tau, tau_mode and seeds:", *lines])


class _SweepCommand(TyperCommand):
    """``sweep``, whose help ends with the tasks' grid axes: read from the tasks (torch) only when shown."""

    @property
    def epilog(self) -> str:
        return _task_axes()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass  # computed when the help is drawn


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the command as Ctrl-C does (during training the engine checkpoints the step first);
    before a run exists there is nothing to resume: exit code 143 alone."""
    from tau_lab.engine import Stopped

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Stopped as stop:  # the commands turn a stop during a run into the resume command
        typer.echo("terminated", err=True)
        raise typer.Exit(128 + stop.signum) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(resume: str, stop: KeyboardInterrupt) -> typer.Exit:
    """The resume command on stderr; exit code 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    signum = getattr(stop, "signum", signal.SIGINT)
    typer.echo(f"{'interrupted' if signum == signal.SIGINT else 'terminated'}: resume with: {resume}", err=True)
    return typer.Exit(128 + signum)


def _load_for_resume(run_dir: Path, experiment: str | None, overrides: list[str]) -> config.Experiment:
    """The experiment recorded in ``run_dir``; an EXPERIMENT given beside it must be the same study."""
    from tau_lab import config

    recorded = run_dir / "config.toml"
    if not recorded.is_file():
        raise UserError(f"--resume {run_dir}: not a run directory (no config.toml in it)")
    spec, _ = config.load_experiment(str(recorded), overrides)
    if experiment is not None:
        given, _ = config.load_experiment(experiment)
        if given.name != spec.name:
            raise UserError(
                f"--resume {run_dir}: that run is of experiment '{spec.name}', not '{given.name}': "
                f"leave out EXPERIMENT (the run records its own)"
            )
    return spec


@app.command("sweep", cls=_SweepCommand)
def sweep_command(
    experiment: Annotated[
        str | None,
        typer.Argument(
            help="A study (see `tau-lab experiments`; ./experiments/NAME.toml first) or a TOML path; "
            "optional with --resume."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a value: --set steps=200 --set sweep.tau=[0.1,0.2]")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the interrupted run in this run directory (it records its study).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (auto picks CUDA when present).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | bf16 (bf16 autocast; losses stay fp32).")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the step.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (same as --set steps=N).")] = None,
    results_dir: Annotated[
        Path, typer.Option("--results", envvar="TAU_LAB_RESULTS", help="Where run directories go.")
    ] = Path("results"),
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar and no summary table.")] = False,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            help="Write every member's metrics to this TensorBoard folder as it trains: DIR/<experiment>/<run-id>/"
            "member-<id> (open with tensorboard --logdir DIR); with --storage, each worker the members it trains."
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Scale out: train the populations that no other worker of this storage (a journal file path "
            "or postgresql://user@host/db) has claimed; the worker that trains the last one writes the run "
            "directory. Run the same command on every machine (docs/search.md).",
        ),
    ] = None,
    assemble: Annotated[
        bool, typer.Option("--assemble", help="With --storage: only write the run directory of a finished sweep.")
    ] = False,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="TAU_LAB_THREADS",
            help="torch CPU threads (recorded in env.json). 1 by default: more were measured slower on a "
            "shared CPU (benchmarks/bench_threads.py, docs/benchmarks.md).",
        ),
    ] = 1,
) -> None:
    """Train every member of EXPERIMENT's grid (τ × mode × seeds) as one population.

    Each run gets results/<experiment>/<run-id>/; Ctrl-C or SIGTERM prints the command that resumes it. Under
    `torchrun --nproc-per-node P -m tau_lab sweep ...` the clip, simclr and module tasks split each
    (global) batch over the P processes and gather their negatives; process 0 writes the run.
    """
    import torch

    from tau_lab import config

    torch.set_num_threads(threads)  # before run_files: env.json records the count the run trains with

    overrides = list(set_ or [])
    for key, value in [("device", device), ("precision", precision), ("steps", steps)]:
        if value is not None:
            overrides.append(f"{key}={value}")
    if compile is not None:
        overrides.append(f"compile={str(compile).lower()}")
    with user_errors(), _stop_on_sigterm():
        if tensorboard is not None:
            from tau_lab import monitor

            monitor.require()  # before anything is written
        if assemble and storage is None:
            raise UserError("--assemble needs --storage: the storage that the sweep's workers share")
        if storage is not None and resume is not None:
            raise UserError("--resume and --storage do not go together: a scaled-out sweep resumes by running it again")
        if resume is not None:
            spec = _load_for_resume(resume, experiment, overrides)
        elif experiment is None:
            raise UserError("give an EXPERIMENT (see `tau-lab experiments`) or --resume RUN_DIR")
        else:
            spec, _ = config.load_experiment(experiment, overrides)
        name = spec.name
        progress = not quiet  # a bar on a terminal, else a line every TAU_LAB_PROGRESS_EVERY seconds
        if storage is not None:
            scaled = _scale_out(spec, experiment, overrides, storage, assemble, results_dir, progress, tensorboard)
            if scaled is None:  # this worker's chunks are trained (logged); another one writes the run directory
                return
            run_dir, out = scaled
        else:
            swept = _sweep(spec, resume, results_dir, progress, tensorboard)
            if swept is None:  # under torchrun, a process other than 0: process 0 writes and prints
                return
            run_dir, out = swept
    members = out["members"]
    if not quiet:
        print_frame(members[summary_columns(spec.task, members)], title=f"{name}: final metrics")
        from tau_lab import analysis

        for title, frame in analysis.summary_tables(spec.task, members).items():  # the task's own tables
            print_frame(frame, title=f"{name}: {title}")
    diverged = int((members["status"] == "diverged").sum())
    typer.echo(f"{len(members)} members, {diverged} diverged; results in {run_dir}")


def _sweep(
    spec: config.Experiment, resume: Path | None, results_dir: Path, progress: bool, tensorboard: Path | None
) -> tuple[Path, dict[str, pd.DataFrame]] | None:
    """A sweep on this machine: a new run directory (or ``--resume``'s), trained to the end; with
    ``tensorboard``, every member's metrics are written there too as they are logged. Under torchrun only
    process 0 writes and returns the tables; the others return ``None``."""
    from tau_lab import config, distributed, engine

    device = engine.resolve_device(spec.device)
    with distributed.init_from_env(spec, device):
        main = distributed.is_main()  # under torchrun only process 0 writes and prints
        run_dir = resume
        if run_dir is None and main:  # created whole, config and environment in it: --resume accepts it at once
            run_dir = results.new_run_dir(spec.name, results_dir, results.run_files(config.dumps(spec), device))
        sink = None
        if tensorboard is not None and main:
            from tau_lab import monitor

            sink = monitor.TensorBoardSink(monitor.logdir(tensorboard, run_dir), config.members(spec))
        try:
            run_dir, out = engine.run_sweep(
                spec, spec.name, run_dir=run_dir, root=results_dir, progress=progress, sink=sink
            )
        except KeyboardInterrupt as stop:
            if not main:  # process 0 prints the command (under torchrun: the same torchrun, with --resume)
                raise typer.Exit(128 + getattr(stop, "signum", signal.SIGINT)) from None
            resume_args = ["tau-lab", "sweep", "--resume", str(run_dir)]
            if tensorboard is not None:
                resume_args += ["--tensorboard", str(tensorboard)]
            raise _interrupted(shlex.join(resume_args), stop) from None
    return (run_dir, out) if main else None


def _scale_out(
    spec: config.Experiment,
    experiment: str | None,
    overrides: list[str],
    storage: str,
    assemble: bool,
    results_dir: Path,
    progress: bool,
    tensorboard: Path | None,
) -> tuple[Path, dict[str, pd.DataFrame]] | None:
    """``--storage``: this process is one worker of the sweep (``tau_lab.scaleout``), or only assembles it;
    ``None`` when this worker did not write the run directory. With ``tensorboard``, the worker writes the
    series of the members it trains under the run id the run directory gets."""
    from tau_lab import scaleout, search

    plan = scaleout.plan(spec, storage, results_dir, tensorboard)
    if assemble:
        return scaleout.assemble_only(plan)
    logging.basicConfig(level=logging.INFO, format=search.LOG_FORMAT)  # a line per chunk, as Optuna logs
    try:
        done = scaleout.work(plan, progress)
    except KeyboardInterrupt as stop:
        command = ["tau-lab", "sweep", str(experiment), "--storage", results.redact(storage)]
        command += ["--results", str(results_dir), *(arg for item in overrides for arg in ("--set", item))]
        if tensorboard is not None:
            command += ["--tensorboard", str(tensorboard)]
        raise _interrupted(shlex.join(command), stop) from None
    return None if isinstance(done, scaleout.Pending) else done


class FigureFormat(StrEnum):
    png = "png"
    svg = "svg"
    pdf = "pdf"


@app.command("plot")
def plot_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (several are compared).")],
    out: Annotated[Path | None, typer.Option(help="Where the figures go (default: RUN_DIR/figures/).")] = None,
    format: Annotated[FigureFormat, typer.Option("--format", help="png, svg or pdf.")] = FigureFormat.png,
) -> None:
    """Draw a run's figures: training curves, metrics against τ, the alignment–uniformity planes, …"""
    from tau_lab import figures

    with user_errors():
        paths = figures.plot_run(run_dirs, out, format.value)
    for path in paths:
        typer.echo(str(path))


@app.command("report")
def report_command(run_dir: Annotated[Path, typer.Argument(help="A run or search directory.")]) -> None:
    """Write RUN_DIR/report.md and a self-contained report.html: config, summary, figures, findings."""
    from tau_lab import report

    with user_errors():
        paths = report.write_report(run_dir)
    for path in paths:
        typer.echo(str(path))


def _search_again(command: dict[str, Any], storage_option: bool) -> str:
    """The ``tau-lab search`` command that continues an interrupted study (running it again continues
    toward N); a storage URL from ``$TAU_LAB_STORAGE`` stays there, one from ``--storage`` is shown redacted."""
    args = ["tau-lab", "search", command["experiment"], "--trials", str(command["trials"])]
    args += ["--batch", str(command["batch"]), "--sampler", command["sampler"], "--pruner", command["pruner"]]
    args += ["--study", command["study"], "--results", str(command["results"])]
    if storage_option:
        args += ["--storage", results.redact(command["storage"])]
    if command["seed"] is not None:
        args += ["--seed", str(command["seed"])]
    args += [arg for item in command["set"] for arg in ("--set", item)]
    if command["tensorboard"] is not None:
        args += ["--tensorboard", str(command["tensorboard"])]
    return shlex.join(args)


@app.command("search")
def search_command(
    ctx: typer.Context,
    experiment: Annotated[
        str, typer.Argument(help="A study (see `tau-lab experiments`) or a TOML path, with a search table.")
    ],
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="N, the study's total: running again continues toward N.")
    ] = 32,
    batch: Annotated[int, typer.Option("--batch", min=1, help="K trials trained together as one population.")] = 8,
    sampler: Annotated[SamplerName, typer.Option(help="tpe (constant liar), random, cmaes or grid.")] = SamplerName.tpe,
    pruner: Annotated[
        PrunerName, typer.Option(help="Freezes members that fall behind: median, hyperband or none.")
    ] = PrunerName.median,
    storage: Annotated[
        str | None,
        typer.Option(
            envvar="TAU_LAB_STORAGE",
            show_envvar=True,
            help="An Optuna storage URL (postgresql://user:password@host/db) or a journal file path; default: a "
            "journal file in the search's results folder. Set $TAU_LAB_STORAGE to keep a password off the "
            "command line; passwords are never written or printed.",
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="The study's name (default: the experiment's); same name + storage = same study.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine, sharing the study.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler (default: fresh randomness).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: --set steps=200")] = None,
    results_dir: Annotated[
        Path, typer.Option("--results", envvar="TAU_LAB_RESULTS", help="Where run directories go.")
    ] = Path("results"),
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            help="Write every trial's metrics to this TensorBoard folder as it trains: "
            "DIR/<experiment>/search-<study>/trial-<n>."
        ),
    ] = None,
) -> None:
    """Optuna over EXPERIMENT's search space: ask K trials, train them as one population, tell K results."""
    import pandas as pd

    from tau_lab import distributed, search

    with user_errors(), _stop_on_sigterm():
        if distributed.torchrun_processes() > 1:  # each process would run the whole search
            raise UserError("tau-lab search does not run under torchrun: use --workers, or one command per machine")
        spec = search.load(
            experiment,
            set_,
            n_trials=trials,
            batch_size=batch,
            sampler=sampler,
            pruner=pruner,
            storage=storage,
            study_name=study,
            seed=seed,
            root=results_dir,
            tensorboard=tensorboard,
        )
        if spec.n_trials < trials:
            typer.echo(f"the grid has {spec.n_trials} points: N = {spec.n_trials}")
        logging.basicConfig(level=logging.INFO, format=search.LOG_FORMAT)  # one line per batch, as Optuna logs
        try:
            finished = search.run(spec, workers)
        except KeyboardInterrupt as stop:
            command = {
                "experiment": experiment,
                "trials": trials,
                "batch": batch,
                "sampler": sampler.value,
                "pruner": pruner.value,
                "study": spec.study_name,
                "results": results_dir,
                "storage": storage,
                "seed": seed,
                "set": set_ or [],
                "tensorboard": tensorboard,
            }
            # a URL from $TAU_LAB_STORAGE comes from there again; one given as --storage is repeated, redacted
            source = ctx.get_parameter_source("storage")
            from_option = source is not None and source.name == "COMMANDLINE"
            raise _interrupted(_search_again(command, storage is not None and from_option), stop) from None
    states = pd.Series([t.state.name.lower() for t in search.counted(finished.trials)]).value_counts()
    counts = ", ".join(f"{n} {state}" for state, n in states.items())
    typer.echo(f"study {spec.study_name}: {counts} trials; in {spec.directory}")
    best = search.best_trial(finished)
    if best is None:
        typer.echo("no trial completed")
        return
    params = ", ".join(
        f"{name} = {value:.4g}" if isinstance(value, float) else f"{name} = {value}"
        for name, value in best.params.items()
    )
    typer.echo(f"best trial {best.number}: {spec.settings.objective} = {best.value:.4g} with {params}")
    typer.echo(f"reproduce: {search.reproduce(spec, best)}")


def main() -> None:
    app()
