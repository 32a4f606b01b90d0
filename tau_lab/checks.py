"""Argument checks shared by the library and the CLI.

Each check raises ``UserError`` (a ``ValueError``) with one line naming the argument, the bad value and what is
allowed; the CLI prints that line and exits with code 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from tau_lab.errors import UserError


def _values(value: float | Iterable[float] | torch.Tensor) -> list[float]:
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(-1).tolist()
    if isinstance(value, int | float):
        return [float(value)]
    return [float(v) for v in value]


def check_positive(name: str, value: float | Iterable[float] | torch.Tensor) -> None:
    """Every value must be finite and > 0 (a temperature τ or T)."""
    for v in _values(value):
        if not (math.isfinite(v) and v > 0):
            raise UserError(f"{name} = {v:g} is not allowed: it must be a finite number > 0")


def check_unit_interval(name: str, value: float | Iterable[float] | torch.Tensor) -> None:
    """Every value must lie in [0, 1] (a weight such as the distillation α)."""
    for v in _values(value):
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise UserError(f"{name} = {v:g} is not allowed: it must lie in [0, 1]")


def check_finite(name: str, value: torch.Tensor) -> None:
    """No NaN or infinity anywhere in ``value``."""
    if not torch.isfinite(value).all():
        bad = value[~torch.isfinite(value)].reshape(-1)[0].item()
        raise UserError(f"{name} contains {bad} values: every entry must be finite")


def check_shape(name: str, actual: tuple[int, ...], expected: str, ok: bool) -> None:
    """Raise when ``ok`` is false, describing the shape that was expected."""
    if not ok:
        raise UserError(f"{name} has shape {list(actual)}: expected {expected}")
