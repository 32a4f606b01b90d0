"""The ``tau-lab`` command: a thin shell over the library.

Only ``UserError`` (bad input: an experiment file, an override, data, a run directory, a path that
cannot be written) is shown as one line with exit code 2; anything else is a bug and shows its
traceback. Ctrl-C prints the command that resumes and exits 130. torch, pandas, Optuna and the
plots are imported inside the commands, so that ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import tomllib
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
INTERRUPTED = 130  # the exit code of a command that Ctrl-C stopped, as shells report SIGINT


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
            description = tomllib.loads(path.read_text()).get("description", "")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            description = f"(not a readable TOML file: {err})"
        typer.echo(f"{name:<24} {description}")


# The columns of the summary table: the member, its grid axes (the task's own among them), and what it reached.
MEMBER_COLUMNS = ["member", "tau_mode", "tau_init"]
OUTCOME_COLUMNS = ["seed", "status", "loss", "tau"]
# Each task's headline metrics (columns of the members table); a prefix stands for every column it starts.
HEADLINE = {
    "quadrants": ["alignment", "uniformity", "tolerance", "cross_similarity"],
    "simclr": ["knn_accuracy", "probe_accuracy", "alignment", "uniformity"],
    "clip": ["recall_i2t", "recall_t2i", "zero_shot_"],
    "pairs": ["recall_a2b", "recall_b2a"],
    "distill": ["accuracy", "agreement", "ece"],
}


def summary_columns(task: str, members: pd.DataFrame) -> list[str]:
    """The terminal summary's columns: member, τ mode and start, the task's own grid axes that vary,
    seed, status, final loss and τ, then the task's headline metrics."""
    from tau_lab.tasks import TASKS
    from tau_lab.tasks.base import Sweep

    axes = [key for key in TASKS[task].Sweep.model_fields if key not in Sweep.model_fields]
    varying = [axis for axis in axes if axis in members and members[axis].astype(str).nunique() > 1]
    metrics = [c for prefix in HEADLINE.get(task, []) for c in members.columns if c.startswith(prefix)]
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


def _interrupted(resume: str) -> typer.Exit:
    typer.echo(f"interrupted: resume with: {resume}", err=True)
    return typer.Exit(INTERRUPTED)


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
) -> None:
    """Train every member of EXPERIMENT's grid (τ × mode × seeds) as one population.

    Each run gets results/<experiment>/<run-id>/; Ctrl-C prints the command that resumes it. Under
    `torchrun --nproc-per-node P -m tau_lab sweep ...` the clip, simclr and module tasks split each
    (global) batch over the P processes and gather their negatives; process 0 writes the run.
    """
    from tau_lab import config, distributed, engine

    overrides = list(set_ or [])
    for key, value in [("device", device), ("precision", precision), ("steps", steps)]:
        if value is not None:
            overrides.append(f"{key}={value}")
    if compile is not None:
        overrides.append(f"compile={str(compile).lower()}")
    with user_errors():
        if resume is not None:
            spec = _load_for_resume(resume, experiment, overrides)
        elif experiment is None:
            raise UserError("give an EXPERIMENT (see `tau-lab experiments`) or --resume RUN_DIR")
        else:
            spec, _ = config.load_experiment(experiment, overrides)
        name = spec.name
        progress = not quiet  # a bar on a terminal, else a line every TAU_LAB_PROGRESS_EVERY seconds
        device = engine.resolve_device(spec.device)
        with distributed.init_from_env(spec, device):
            main = distributed.is_main()  # under torchrun only process 0 writes and prints
            run_dir = resume
            if run_dir is None and main:  # created whole, config and environment in it: --resume accepts it
                run_dir = results.new_run_dir(name, results_dir, results.run_files(config.dumps(spec), device))
            try:
                run_dir, out = engine.run_sweep(spec, name, run_dir=run_dir, root=results_dir, progress=progress)
            except KeyboardInterrupt:
                if not main:  # process 0 prints the command (under torchrun: the same torchrun, with --resume)
                    raise typer.Exit(INTERRUPTED) from None
                raise _interrupted(shlex.join(["tau-lab", "sweep", "--resume", str(run_dir)])) from None
    if not main:
        return
    members = out["members"]
    if not quiet:
        print_frame(members[summary_columns(spec.task, members)], title=f"{name}: final metrics")
        from tau_lab import analysis

        for title, frame in analysis.summary_tables(spec.task, members).items():  # the task's own tables
            print_frame(frame, title=f"{name}: {title}")
    diverged = int((members["status"] == "diverged").sum())
    typer.echo(f"{len(members)} members, {diverged} diverged; results in {run_dir}")


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
) -> None:
    """Optuna over EXPERIMENT's search space: ask K trials, train them as one population, tell K results."""
    import pandas as pd

    from tau_lab import distributed, search

    with user_errors():
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
        )
        if spec.n_trials < trials:
            typer.echo(f"the grid has {spec.n_trials} points: N = {spec.n_trials}")
        logging.basicConfig(level=logging.INFO, format=search.LOG_FORMAT)  # one line per batch, as Optuna logs
        try:
            finished = search.run(spec, workers)
        except KeyboardInterrupt:
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
            }
            # a URL from $TAU_LAB_STORAGE comes from there again; one given as --storage is repeated, redacted
            source = ctx.get_parameter_source("storage")
            from_option = source is not None and source.name == "COMMANDLINE"
            raise _interrupted(_search_again(command, storage is not None and from_option)) from None
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
