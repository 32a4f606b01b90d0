"""The samplers and pruners ``tau-lab search`` offers, apart from ``tau_lab.search`` so that the command
line can name them without importing Optuna (``tau-lab --help`` stays fast)."""

from __future__ import annotations

from enum import StrEnum


class SamplerName(StrEnum):
    tpe = "tpe"
    random = "random"
    cmaes = "cmaes"
    grid = "grid"


class PrunerName(StrEnum):
    median = "median"
    hyperband = "hyperband"
    none = "none"
