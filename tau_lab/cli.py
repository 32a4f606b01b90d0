"""The ``tau-lab`` command: a thin shell over the library. Bad input is one line and exit code 2."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import tomllib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tau_lab import __version__, analysis, config, engine, figures, report, results, search, table
from tau_lab.tasks import TASKS

app = typer.Typer(
    help="tau-lab: a laboratory for softmax-temperature studies (contrastive learning, distillation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_debug = {"on": False}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn bad input into one line on stderr and exit code 2 (a traceback with ``--debug``)."""
    try:
        yield
    except (ValueError, FileNotFoundError, tomllib.TOMLDecodeError) as err:
        if _debug["on"]:
            raise
        typer.echo(f"error: {err}", err=True)
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
    """A table in the terminal (plain text when not a terminal), numbers to 4 significant digits."""
    rich_table = Table(title=title)
    for column in df.columns:
        rich_table.add_column(str(column), justify="right")
    for row in df.itertuples(index=False):
        rich_table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    Console(width=max(160, Console().width)).print(rich_table)  # wide enough for the summary


def _floats(option: str, text: str) -> list[float]:
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{option} {text!r}: {item.strip()!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{option} {text!r}: {item.strip()} is not allowed: values must be finite")
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
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw p_i against τ (seed 003's figure) to this .png/.svg/.pdf.")
    ] = None,
) -> None:
    """Softmax probabilities (and cross-entropy) of LOGITS at each τ, as in seed 001's table."""
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
    """List the studies in experiments/ with their descriptions."""
    for path in sorted(config.EXPERIMENTS_DIR.glob("*.toml")):
        description = tomllib.loads(path.read_text()).get("description", "")
        typer.echo(f"{path.stem:<24} {description}")


SUMMARY_COLUMNS = [
    "member",
    "tau_mode",
    "tau_init",
    "seed",
    "status",
    "loss",
    "tau",
    "alignment",
    "uniformity",
    "tolerance",
    "cross_similarity",
    "effective_negatives",
]


def _task_axes() -> str:
    """The grid axes each task adds to ``[sweep]``, with their descriptions: the epilog of ``sweep --help``."""
    axes: dict[str, tuple[list[str], str]] = {}  # key -> (tasks, description)
    for name, task in TASKS.items():
        for key, field in task.Sweep.model_fields.items():
            if key not in config.Sweep.model_fields:
                axes.setdefault(key, ([], field.description or ""))[0].append(name)
    lines = [f"sweep.{key} ({', '.join(tasks)}): {text}".rstrip(": ") for key, (tasks, text) in axes.items()]
    return "\n\n".join(escape(line) for line in ["Grid axes beside tau, tau_mode and seeds:", *lines])


@app.command("sweep", epilog=_task_axes())
def sweep_command(
    experiment: Annotated[
        str, typer.Argument(help="A name in experiments/ (see `tau-lab experiments`) or a TOML path.")
    ],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a value: --set steps=200 --set sweep.tau=[0.1,0.2]")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the interrupted run in this run directory.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (auto picks CUDA when present).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 | bf16 (bf16 autocast; losses stay fp32).")] = None,
    compile: Annotated[bool | None, typer.Option("--compile/--no-compile", help="torch.compile the step.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (same as --set steps=N).")] = None,
    results_dir: Annotated[Path, typer.Option("--results", help="Where run directories go.")] = results.RESULTS_DIR,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar and no summary table.")] = False,
) -> None:
    """Train every member of EXPERIMENT's grid (τ × mode × seeds) as one population."""
    overrides = list(set_ or [])
    for key, value in [("device", device), ("precision", precision), ("steps", steps)]:
        if value is not None:
            overrides.append(f"{key}={value}")
    if compile is not None:
        overrides.append(f"compile={str(compile).lower()}")
    with user_errors():
        if resume is not None:
            if not (resume / "config.toml").is_file():
                raise FileNotFoundError(f"--resume {resume}: not a run directory (no config.toml in it)")
            spec, _ = config.load_experiment(str(resume / "config.toml"), overrides)
        else:
            spec, _ = config.load_experiment(experiment, overrides)
        name = spec.name
        progress = not quiet and sys.stderr.isatty()
        run_dir, out = engine.run_sweep(spec, name, run_dir=resume, root=results_dir, progress=progress)
    members = out["members"]
    if not quiet:
        print_frame(members[[c for c in SUMMARY_COLUMNS if c in members.columns]], title=f"{name}: final metrics")
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
    with user_errors():
        paths = figures.plot_run(run_dirs, out, format.value)
    for path in paths:
        typer.echo(str(path))


@app.command("report")
def report_command(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Write RUN_DIR/report.md and a self-contained report.html: config, summary, figures, findings."""
    with user_errors():
        paths = report.write_report(run_dir)
    for path in paths:
        typer.echo(str(path))


@app.command("search")
def search_command(
    experiment: Annotated[
        str, typer.Argument(help="A name in experiments/ or a TOML path, with a search table (docs/search.md).")
    ],
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="N, the study's total: running again continues toward N.")
    ] = 32,
    batch: Annotated[int, typer.Option("--batch", min=1, help="K trials trained together as one population.")] = 8,
    sampler: Annotated[
        search.SamplerName, typer.Option(help="tpe (constant liar), random, cmaes or grid.")
    ] = search.SamplerName.tpe,
    pruner: Annotated[
        search.PrunerName, typer.Option(help="Freezes members that fall behind: median, hyperband or none.")
    ] = search.PrunerName.median,
    storage: Annotated[
        str | None,
        typer.Option(
            help="An Optuna storage URL (postgresql://user@host/db) or a journal file path; default: a "
            "journal file in the search's results folder."
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="The study's name (default: the experiment's); same name + storage = same study.")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine, sharing the study.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler (default: fresh randomness).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a value: --set steps=200")] = None,
    results_dir: Annotated[Path, typer.Option("--results", help="Where run directories go.")] = results.RESULTS_DIR,
) -> None:
    """Optuna over EXPERIMENT's search space: ask K trials, train them as one population, tell K results."""
    with user_errors():
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
        finished = search.run(spec, workers)
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
