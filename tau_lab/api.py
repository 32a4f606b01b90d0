"""tau-lab from Python: ``tau_lab.sweep`` runs a study as ``tau-lab sweep`` does and returns its tables.

import tau_lab
run = tau_lab.sweep("examples/digits_cnn.toml", model=my_model, data=my_pairs, overrides=["steps=100"])
run.members.groupby("tau_init").recall_a2b.mean()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from tau_lab.errors import UserError


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


def sweep(
    experiment: str | Path | dict[str, Any],
    *,
    model: str | Callable[..., Any] | None = None,
    data: str | Callable[..., Any] | None = None,
    overrides: Sequence[str] = (),
    results: Path | str | None = None,
    progress: bool = False,
    tensorboard: Path | str | None = None,
) -> SweepResult:
    """Train every member of ``experiment`` and return the tables ``tau-lab sweep`` writes.

    Args:
        experiment: a study's name, a TOML path, or the experiment as a dict (the TOML's tables as dicts).
        model, data: for ``task = "module"``, the factories of ``[model]`` / ``[data]``: a function defined at
            the top level of a module (a notebook's too), or its ``"package.module:function"`` name.
        overrides: ``--set`` style ``key=value`` strings.
        results: where run directories go (default: as the CLI).
        tensorboard: a folder where every member's metrics are written while it trains, as
            ``tensorboard/<experiment>/<run-id>/member-<id>`` (needs ``pip install 'tau-lab[tensorboard]'``).
    """
    from tau_lab import config, engine
    from tau_lab import results as results_mod

    overrides = list(overrides)
    if model is not None:
        overrides.append(f"model.factory={_spec(model, 'model')!r}")
    if data is not None:
        overrides.append(f"data.factory={_spec(data, 'data')!r}")
    if isinstance(experiment, dict):
        raw = config.apply_overrides(dict(experiment), overrides)
        spec = config.validate(raw, "the experiment dict")
        spec.name = spec.name or "study"
    else:
        spec, _ = config.load_experiment(str(experiment), overrides)
    root = results_mod.RESULTS_DIR if results is None else Path(results)
    sink = run_dir = None
    if tensorboard is not None:
        from tau_lab import monitor

        monitor.require()
        # the run directory first, as the CLI makes it: the TensorBoard runs are named after it
        files = results_mod.run_files(config.dumps(spec), engine.resolve_device(spec.device))
        run_dir = results_mod.new_run_dir(spec.name, root, files)
        sink = monitor.TensorBoardSink(monitor.logdir(Path(tensorboard), run_dir), config.members(spec))
    run_dir, out = engine.run_sweep(spec, spec.name, run_dir=run_dir, root=root, progress=progress, sink=sink)
    return SweepResult(run_dir, out["members"], out["metrics"], out.get("embeddings"))
