"""Experiment files: the schema, TOML loading, ``--set`` overrides and grid expansion.

An experiment is a TOML file: a path, ``experiments/NAME.toml`` in the working directory, or a
study shipped with tau-lab (``tau_lab/experiments/NAME.toml``, package data). Its ``[sweep]``
table holds lists whose product with ``seeds`` gives the members of the population. Every error is one line naming the
file, the key, the value and what is allowed (``ConfigError``, a ``ValueError``).
"""

from __future__ import annotations

import importlib.resources
import itertools
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from tau_lab.errors import UserError
from tau_lab.tasks import TASKS
from tau_lab.temperature import NEEDS_PERIOD, start_tau

# The shipped studies: package data (in a source checkout, tau_lab/experiments links to the top-level experiments/).
EXPERIMENTS_DIR = Path(str(importlib.resources.files("tau_lab") / "experiments"))
# A run's folder is results/<name>/: one path component, no separators, not '.' or '..'.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConfigError(UserError):
    """A bad experiment file or override; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Optimizer(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    tau_lr: float | None = Field(None, gt=0, description="learning rate of logit_scale (default: lr)")
    tau_weight_decay: float = Field(0.0, ge=0, description="weight decay of logit_scale (default: none)")
    bias_lr: float | None = Field(None, gt=0, description="learning rate of SigLIP's logit_bias (default: lr)")


class TemperatureSettings(_Strict):
    tau_min: float = Field(0.01, gt=0, description="clamp of learnable τ, low end of schedules")
    tau_max: float = Field(1.0, gt=0, description="clamp of learnable τ, high end of schedules")
    period: int | None = Field(None, gt=0, description="steps of one schedule period (default: steps)")

    @model_validator(mode="after")
    def _ordered(self) -> TemperatureSettings:
        if not self.tau_min < self.tau_max:
            raise ValueError(f"tau_min = {self.tau_min:g} must be smaller than tau_max = {self.tau_max:g}")
        return self


# Read as plain tables, then replaced by ``validate`` with the task's own schemas (``Task.Data``, …)
Section = dict[str, Any] | SerializeAsAny[BaseModel]


class Experiment(_Strict):
    """A whole study; ``data``, ``model`` and ``sweep`` are checked by the task's own schemas (``validate``)
    and hold instances of them: ``experiment.sweep.tau``. The base grid is ``tau_lab.tasks.base.Sweep``."""

    name: str = Field("", description="the study's name (default: the file's stem); names results/<name>/")
    description: str = ""
    task: str
    steps: int = Field(1000, gt=0)
    log_every: int = Field(100, gt=0)
    eval_every: int = Field(1000, gt=0)
    checkpoint_every: int = Field(0, ge=0, description="0 writes a checkpoint only at the end")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    block_steps: int = Field(
        64, ge=1, description="steps between logging, evaluation and checkpoints run as one call (1: one at a time)"
    )
    memory_budget_mb: float = Field(4096, gt=0, description="members per chunk are sized to fit")
    optimizer: Optimizer = Optimizer()
    temperature: TemperatureSettings = TemperatureSettings()
    data: Section = {}
    model: Section = {}
    sweep: Section = {}
    search: dict[str, Any] | None = Field(None, description="tau-lab search's table, checked by tau_lab.search")

    @field_validator("name")
    @classmethod
    def _one_folder(cls, name: str) -> str:
        # '' is the default (the file's stem); anything else names one folder under --results
        if name and (not NAME.fullmatch(name) or ".." in name):
            raise ValueError("use letters, digits, '.', '_' and '-', no '..' (it names a folder under --results)")
        return name


def _one_line(error: ValidationError, source: str, section: str = "") -> str:
    first = error.errors()[0]
    key = ".".join([section, *map(str, first["loc"])] if section else map(str, first["loc"])) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{source}: {key}{shown}: {message}"


def _where(data: bytes, start: int) -> str:
    """Byte offset ``start`` of ``data`` as line and column (1-based, columns in bytes) and offset."""
    line = data.count(b"\n", 0, start) + 1
    column = start - (data.rfind(b"\n", 0, start) + 1) + 1
    return f"line {line}, column {column} (byte {start})"


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; bad bytes or syntax are one line naming the file and where (``ConfigError``)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: byte 0x{data[err.start]:02x} at {_where(data, err.start)} is not UTF-8: TOML files are "
            "UTF-8 text (save it as UTF-8)"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``200``, ``[0.1, 0.2]``, ``true``), else as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys reach into tables) to a raw config dict."""
    for item in overrides:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as err:  # an argument's undecodable byte arrives as a lone surrogate
            char = item[err.start]
            byte = f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else f"{char!r}"
            raise ConfigError(f"--set {item!r}: {byte} at position {err.start} is not UTF-8 text") from None
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set steps=200")
        *tables, leaf = key.strip().split(".")
        node = raw
        for name in tables:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{name}' is a value, not a table")
        node[leaf] = parse_value(text.strip())
    return raw


def known_experiments() -> dict[str, Path]:
    """The studies by name: the shipped ones, overridden by the working directory's ``experiments/*.toml``."""
    found = {}
    for folder in (EXPERIMENTS_DIR, Path("experiments")):
        found |= {path.stem: path for path in sorted(folder.glob("*.toml"))}
    return dict(sorted(found.items()))


def resolve_path(name_or_path: str) -> Path:
    """A path (``*.toml``, or any existing file) is taken as it is; a name is looked up in the
    working directory's ``experiments/NAME.toml``, then among the shipped studies."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"experiment '{name_or_path}' not found: no file {path}")
        return path
    known = known_experiments()
    if name_or_path not in known:
        raise ConfigError(
            f"experiment '{name_or_path}' not found: not a file, nor a study in ./experiments or "
            f"the shipped ones (known: {', '.join(known)})"
        )
    return known[name_or_path]


def load_experiment(name_or_path: str, overrides: list[str] | None = None) -> tuple[Experiment, Path]:
    """Read, override and validate an experiment file, task settings included."""
    path = resolve_path(name_or_path)
    raw = read_toml(path)
    experiment = validate(apply_overrides(raw, overrides or []), str(path))
    experiment.name = experiment.name or path.stem
    return experiment, path


def validate(raw: dict[str, Any], source: str) -> Experiment:
    """``raw`` checked: the experiment's own keys, then ``data``, ``model`` and ``sweep`` by the task's schemas."""
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None
    if experiment.task not in TASKS:
        raise ConfigError(f"{source}: task = {experiment.task!r} is not allowed: use one of {', '.join(TASKS)}")
    task = TASKS[experiment.task]
    for section in ("data", "model", "sweep"):
        schema = getattr(task, section.capitalize())
        try:
            # the sweep sees the validated [data]: an axis may be checked against it (contrastive.Sweep.batch_size)
            context = {"data": experiment.data}
            setattr(experiment, section, schema.model_validate(getattr(experiment, section), context=context))
        except ValidationError as err:
            raise ConfigError(_one_line(err, source, section)) from None
    t, sweep = experiment.temperature, experiment.sweep
    if any(m in NEEDS_PERIOD for m in sweep.tau_mode) and t.period is None:
        t.period = experiment.steps
    if "learnable" in sweep.tau_mode:
        for tau in sweep.tau:
            if not t.tau_min <= tau <= t.tau_max:
                raise ConfigError(
                    f"{source}: sweep.tau = {tau:g} with tau_mode 'learnable' lies outside the clamp "
                    f"[temperature.tau_min, temperature.tau_max] = [{t.tau_min:g}, {t.tau_max:g}]"
                )
    return experiment


def members(experiment: Experiment) -> list[dict[str, Any]]:
    """The grid: one dict per member (``member``, ``tau_mode``, ``tau_init``, the task's own axes,
    ``seed``), numbered from 0, seeds varying slowest, then the axes in the order declared; a
    ``batch_size`` axis varies slower still, so that each size's members are consecutive rows: the
    populations ``engine.chunks`` cuts keep the grid's order.

    Scheduled and ctkd members ignore ``tau``, so each appears once per combination with
    ``tau_init`` set to where it starts (``temperature.start_tau``: τ_max for a schedule, the
    middle of [τ_min, τ_max] for ctkd).
    """
    sweep = experiment.sweep.model_dump()
    seeds, modes, taus = sweep.pop("seeds"), sweep.pop("tau_mode"), sweep.pop("tau")
    sizes = {"batch_size": sweep.pop("batch_size")} if "batch_size" in sweep else {}
    rows, seen = [], set()
    t = experiment.temperature
    for *size, seed, mode, tau, extra in itertools.product(
        *sizes.values(), seeds, modes, taus, itertools.product(*sweep.values())
    ):
        tau = start_tau(mode, tau, t.tau_min, t.tau_max)
        key = (*size, seed, mode, tau, *extra)
        if key in seen:
            continue
        seen.add(key)
        rows.append(
            {
                "member": len(rows),
                "tau_mode": mode,
                "tau_init": tau,
                **dict(zip(sweep, extra, strict=True)),
                **dict(zip(sizes, size, strict=True)),
                "seed": seed,
            }
        )
    return rows


def dumps(experiment: Experiment) -> str:
    """The resolved configuration as TOML (``config.toml`` of a run)."""
    return tomli_w.dumps(experiment.model_dump(exclude_none=True))
