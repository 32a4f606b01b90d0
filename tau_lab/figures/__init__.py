"""Figures of run and search directories (``tau-lab plot``) and of the softmax (``tau-lab table --plot``).

Each kind of figure is a ``FigureSpec`` beside its drawing function, in the module of what it shows:

- ``curves``: training curves (loss, gradient norm, τ over steps);
- ``vs_tau``: final metrics and the headline metrics against τ, the alignment–uniformity and
  uniformity–tolerance planes;
- ``quadrants``: the quadrants study's embedded points before and after training;
- ``distill``: student accuracy over T × α, the soft term's gradient against T;
- ``clip``: zero-shot accuracy against τ, the learnable logit_scale over steps;
- ``search``: a search directory's history, importances and searched space;
- ``softmax``: p_i against τ for given logits; ``style``: the common look.

A spec is drawn for the tasks it names (the task recorded in each run's ``config.toml``; every spec is
tried for a run without one) and only when the tables hold its inputs (``draw`` returns ``None``).
Adding a figure is adding a function and its spec to one module's ``FIGURES``. The drawing modules
import seaborn and matplotlib; this package imports them only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tau_lab import results
from tau_lab.errors import UserError

DPI = 120
FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class FigureSpec:
    """A kind of figure: its file name, its caption (the report's), the tasks it is drawn for (empty: every
    task) and ``draw(runs)`` (``draw(runs, run)`` when ``per_run``: one figure per run directory), which
    returns ``None`` when its inputs are absent."""

    name: str
    caption: str
    tasks: tuple[str, ...]
    draw: Callable[..., Any]
    per_run: bool = False

    def drawn_for(self, tasks: set[str] | None) -> bool:
        """Whether runs of ``tasks`` get this figure (``None``: the task is unknown, try it)."""
        return not self.tasks or tasks is None or bool(tasks & set(self.tasks))


def run_figures() -> list[FigureSpec]:
    """Every figure of a run directory, in the order they are drawn and reported."""
    from tau_lab.figures import clip, curves, distill, quadrants, vs_tau

    return [*curves.FIGURES, *vs_tau.FIGURES, *quadrants.FIGURES, *distill.FIGURES, *clip.FIGURES]


def search_figures() -> list[FigureSpec]:
    """Every figure of a search directory; ``draw(search)`` takes a ``search.SearchDir``."""
    from tau_lab.figures import search

    return list(search.FIGURES)


def caption(name: str) -> str:
    """The caption of a figure file's stem (``quadrants-run-2`` is a ``quadrants`` figure); the stem if unknown."""
    specs = sorted(run_figures() + search_figures(), key=lambda s: -len(s.name))
    return next((s.caption for s in specs if name.startswith(s.name)), name)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"format = {fmt!r} is not allowed: use one of {', '.join(FORMATS)}")


def _write(figures: Sequence[tuple[str, Callable[[], Any]]], out: Path, fmt: str) -> list[Path]:
    """Draw each figure (``None``: skipped) in the theme and write it to ``out/<name>.<fmt>``."""
    from tau_lab.figures import style

    written = []
    for name, draw in figures:
        with style.theme():
            fig = draw()
            if fig is None:
                continue
            path = out / f"{name}.{fmt}"
            # write beside the target, then rename: a reader never sees half a figure
            results.atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format=fmt, dpi=DPI))
        written.append(path)
    return written


def plot_search(directories: Sequence[Path], out: Path | None = None, fmt: str = "png") -> list[Path]:
    """The figures of search directories, into each one's ``figures/`` (or ``out``, names suffixed by the
    directory's when several share it)."""
    from tau_lab.figures.search import load_search

    _check_format(fmt)
    written = []
    for directory in directories:
        found = load_search(Path(directory))
        suffix = f"-{Path(directory).name}" if out is not None and len(directories) > 1 else ""
        figures = [(spec.name + suffix, lambda spec=spec, found=found: spec.draw(found)) for spec in search_figures()]
        written += _write(figures, Path(out) if out is not None else Path(directory) / "figures", fmt)
    return written


def plot_run(run_dirs: Sequence[Path], out: Path | None = None, fmt: str = "png") -> list[Path]:
    """Draw every figure that the runs' tasks and tables support and return the written files.

    Several run directories are compared in one set of figures (and one per-run figure each); files go to
    ``out``, by default the first run's ``figures/``. ``fmt`` is png, svg or pdf. Search directories
    (``results/<experiment>/search-<study>``, found by their ``trials.parquet``) get the search's figures.
    """
    from tau_lab.figures.runs import load_runs
    from tau_lab.figures.search import is_search_dir

    _check_format(fmt)
    run_dirs = [Path(d) for d in run_dirs]
    searches = [d for d in run_dirs if is_search_dir(d)]
    if searches:
        if len(searches) < len(run_dirs):
            raise UserError("search directories and run directories cannot be drawn together: plot them apart")
        return plot_search(searches, out, fmt)
    runs = load_runs(run_dirs)
    out = Path(out) if out is not None else run_dirs[0] / "figures"
    labels = list(dict.fromkeys(runs.members["run"]))
    figures: list[tuple[str, Callable[[], Any]]] = []
    for spec in run_figures():
        if not spec.drawn_for(runs.tasks):
            continue
        if not spec.per_run:
            figures.append((spec.name, lambda spec=spec: spec.draw(runs)))
            continue
        for label in labels:
            name = spec.name if len(labels) == 1 else f"{spec.name}-{label.replace('/', '-')}"
            figures.append((name, lambda spec=spec, label=label: spec.draw(runs, label)))
    return _write(figures, out, fmt)


def plot_softmax(logits: list[float], taus: list[float], path: Path, target: int | None = None) -> Path:
    """Write ``softmax.softmax_curves`` to ``path``, its format from the suffix (png, svg or pdf); return the path."""
    from tau_lab.figures import softmax, style

    path = Path(path)
    fmt = path.suffix.lower().removeprefix(".")
    if fmt not in FORMATS:
        raise UserError(f"--plot {path}: the suffix must be one of {', '.join('.' + f for f in FORMATS)}")
    with style.theme():
        fig = softmax.softmax_curves(logits, taus, target)
        results.atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI))
    return path
