"""tau-lab from Python: ``tau_lab.sweep`` runs a study as ``tau-lab sweep`` does and returns its tables.

import tau_lab
run = tau_lab.sweep("examples/digits_cnn.toml", model=my_model, data=my_pairs, overrides=["steps=100"])
run.members.groupby("tau_init").recall_a2b.mean()

With ``storage=`` (``tau-lab sweep NAME --storage URL``) the call is one worker of a sweep split over
processes or machines; it returns the tables when it trained the last chunk, else a ``SweepPending``:

run = tau_lab.sweep("quadrants", storage="results/quadrants.journal")
if isinstance(run, tau_lab.SweepPending):  # other workers still train (run.missing), or one assembled it
    run = tau_lab.assemble("quadrants", storage="results/quadrants.journal")  # once run.complete
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd

from tau_lab.errors import UserError

if TYPE_CHECKING:
    from tau_lab import config
    from tau_lab.scaleout import Pending as SweepPending


class SweepResult(NamedTuple):
    """A finished sweep: its run directory and the tables it wrote there."""

    run_dir: Path
    members: pd.DataFrame
    metrics: pd.DataFrame
    embeddings: pd.DataFrame | None


def _spec(factory: str | Callable[..., Any], key: str) -> str:
    """A factory as ``module:qualname``, which ``tasks.module.resolve`` finds again in this process."""
    if isinstance(factory, str):
        return factory
    from tau_lab.tasks.module import resolve

    spec = f"{factory.__module__}:{factory.__qualname__}"
    try:
        found = resolve(spec, key)
    except UserError:
        found = None
    if found is not factory:
        raise UserError(f"{key}: {spec} cannot be found again by name: define it at the top level of a module")
    return spec


def _experiment(
    experiment: str | Path | dict[str, Any],
    model: str | Callable[..., Any] | None,
    data: str | Callable[..., Any] | None,
    overrides: Sequence[str],
) -> config.Experiment:
    """The experiment as ``tau-lab sweep EXPERIMENT --set ...`` loads it, the factories given as overrides."""
    from tau_lab import config

    overrides = list(overrides)
    if model is not None:
        overrides.append(f"model.factory={_spec(model, 'model')!r}")
    if data is not None:
        overrides.append(f"data.factory={_spec(data, 'data')!r}")
    if isinstance(experiment, dict):
        raw = config.apply_overrides(dict(experiment), overrides)
        spec = config.validate(raw, "the experiment dict")
        spec.name = spec.name or "study"
        return spec
    return config.load_experiment(str(experiment), overrides)[0]


def sweep(
    experiment: str | Path | dict[str, Any],
    *,
    model: str | Callable[..., Any] | None = None,
    data: str | Callable[..., Any] | None = None,
    overrides: Sequence[str] = (),
    results: Path | str | None = None,
    progress: bool = False,
    tensorboard: Path | str | None = None,
    storage: Path | str | None = None,
) -> SweepResult | SweepPending:
    """Train every member of ``experiment`` and return the tables ``tau-lab sweep`` writes.

    Args:
        experiment: a study's name, a TOML path, or the experiment as a dict (the TOML's tables as dicts).
        model, data: for ``task = "module"``, the factories of ``[model]`` / ``[data]``: a function defined at
            the top level of a module (a notebook's too), or its ``"package.module:function"`` name.
        overrides: ``--set`` style ``key=value`` strings.
        results: where run directories go (default: as the CLI).
        tensorboard: a folder where every member's metrics are written while it trains, as
            ``tensorboard/<experiment>/<run-id>/member-<id>`` (needs ``pip install 'tau-lab[tensorboard]'``);
            with ``storage``, the members this call trains, under the run id the run directory gets.
        storage: scale out, as ``tau-lab sweep --storage``: a journal file path or a ``postgresql://`` URL that
            the workers of this sweep share (``tau_lab.scaleout``). This call trains the populations no other
            worker has claimed. When it trains the last one it writes the run directory and returns its
            ``SweepResult``; otherwise it returns a ``SweepPending`` (``tau_lab.SweepPending``): the study,
            the chunks it trained, those still ``missing`` (training elsewhere or failed), and, once every
            chunk is trained (``complete``), the worker that assembled it; ``tau_lab.assemble`` then gives the
            tables here.

    Returns: the ``SweepResult`` (always without ``storage``), or a ``SweepPending``.
    """
    from tau_lab import config, engine
    from tau_lab import results as results_mod

    spec = _experiment(experiment, model, data, overrides)
    root = results_mod.RESULTS_DIR if results is None else Path(results)
    if tensorboard is not None:
        from tau_lab import monitor

        monitor.require()  # before anything is written
    if storage is not None:
        from tau_lab import scaleout

        plan = scaleout.plan(spec, str(storage), root, None if tensorboard is None else Path(tensorboard))
        done = scaleout.work(plan, progress)
        if isinstance(done, scaleout.Pending):
            return done
        run_dir, out = done
        return SweepResult(run_dir, out["members"], out["metrics"], out.get("embeddings"))
    sink = run_dir = None
    if tensorboard is not None:
        from tau_lab import monitor

        # the run directory first, as the CLI makes it: the TensorBoard runs are named after it
        files = results_mod.run_files(config.dumps(spec), engine.resolve_device(spec.device))
        run_dir = results_mod.new_run_dir(spec.name, root, files)
        sink = monitor.TensorBoardSink(monitor.logdir(Path(tensorboard), run_dir), config.members(spec))
    run_dir, out = engine.run_sweep(spec, spec.name, run_dir=run_dir, root=root, progress=progress, sink=sink)
    return SweepResult(run_dir, out["members"], out["metrics"], out.get("embeddings"))


def assemble(
    experiment: str | Path | dict[str, Any],
    *,
    storage: Path | str,
    model: str | Callable[..., Any] | None = None,
    data: str | Callable[..., Any] | None = None,
    overrides: Sequence[str] = (),
    results: Path | str | None = None,
) -> SweepResult:
    """The run directory and tables of a scaled-out sweep whose every chunk is trained, written here from
    ``storage`` (``tau-lab sweep --storage URL --assemble``): a copy when a worker assembled it already.

    The arguments name the sweep as its workers' ``sweep(..., storage=...)`` did. A sweep that is not
    finished, or none of this configuration in ``storage``, is a ``UserError`` saying what is missing.
    """
    from tau_lab import results as results_mod
    from tau_lab import scaleout

    spec = _experiment(experiment, model, data, overrides)
    root = results_mod.RESULTS_DIR if results is None else Path(results)
    run_dir, out = scaleout.assemble_only(scaleout.plan(spec, str(storage), root))
    return SweepResult(run_dir, out["members"], out["metrics"], out.get("embeddings"))
