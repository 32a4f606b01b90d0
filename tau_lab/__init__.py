"""tau-lab: a command-line laboratory for softmax-temperature studies.

``tau_lab.sweep(...)`` runs a study from Python (``tau_lab.api``; ``tau_lab.assemble`` and ``SweepPending`` for
a sweep scaled out with ``storage=``); it is imported on first use, so that
``import tau_lab`` (and ``tau-lab --version``) stays instant.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("sweep", "assemble", "SweepResult"):
        from tau_lab import api

        return getattr(api, name)
    if name == "SweepPending":  # a scaled-out sweep's worker that did not write the run directory
        from tau_lab.scaleout import Pending

        return Pending
    raise AttributeError(f"module 'tau_lab' has no attribute {name!r}")
