"""tau-lab: a command-line laboratory for softmax-temperature studies.

``tau_lab.sweep(...)`` runs a study from Python (``tau_lab.api``); it is imported on first use, so that
``import tau_lab`` (and ``tau-lab --version``) stays instant.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("sweep", "SweepResult"):
        from tau_lab import api

        return getattr(api, name)
    raise AttributeError(f"module 'tau_lab' has no attribute {name!r}")
