"""The ``tau-lab`` command: a thin shell over the library. Bad input is one line and exit code 2."""

from __future__ import annotations

import contextlib
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
from rich.table import Table

from tau_lab import __version__, config, engine, results, table

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
) -> None:
    """Softmax probabilities (and cross-entropy) of LOGITS at each τ, as in seed 001's table."""
    with user_errors():
        df = table.softmax_table(_floats("--logits", logits), _floats("--tau", tau), target)
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


@app.command("sweep")
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
            name = resume.parent.name
        else:
            spec, path = config.load_experiment(experiment, overrides)
            name = path.stem
        progress = not quiet and sys.stderr.isatty()
        run_dir, out = engine.run_sweep(spec, name, run_dir=resume, root=results_dir, progress=progress)
    members = out["members"]
    if not quiet:
        print_frame(members[[c for c in SUMMARY_COLUMNS if c in members.columns]], title=f"{name}: final metrics")
    diverged = int((members["status"] == "diverged").sum())
    typer.echo(f"{len(members)} members, {diverged} diverged; results in {run_dir}")


def main() -> None:
    app()
