"""Checkpoints: what they may hold, how they are read back, and the configuration they were trained with.

A checkpoint is a ``torch.save`` of plain tensors, lists, strings and numbers, read back with
``torch.load(weights_only=True)``: a crafted file (a pickle whose objects run code when loaded) is
refused, not executed. Any file that is not a checkpoint of this version (empty, truncated, garbage, a
directory, a pickle) is one ``CheckpointError`` line naming it and how to recover: delete it, and that
chunk trains again from step 0.

Each checkpoint also holds the resolved configuration of its run (``fingerprint``) and its hash; a resume
whose configuration differs, but for ``RESUMABLE_CHANGES``, is refused with one line naming the keys.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import tomllib
from pathlib import Path
from typing import Any

import torch

from tau_lab import config
from tau_lab.errors import UserError

CHECKPOINT_FORMAT = 2  # 1: the pickled checkpoints of tau-lab ≤ 0.1, refused
# Keys that may differ between a run and its resume: they name or place the run, or change how fast it
# trains, not what it computes (a checkpoint is saved on the CPU and loads on any device; compile traces
# the same step; a block of steps computes each of its steps as a step alone does).
RESUMABLE_CHANGES = ("name", "description", "device", "compile", "block_steps", "checkpoint_every")


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed; the message names the file and how to recover."""


def _number(value: Any) -> Any:
    """Numbers as floats, in lists too: an unvalidated default ``4096`` is the ``4096.0`` read back."""
    if isinstance(value, list | tuple):
        return [_number(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.1}}`` → ``{"optimizer.lr": "0.1"}`` (values as JSON)."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = json.dumps(_number(value))
    return out


def fingerprint(experiment: config.Experiment) -> dict[str, str]:
    """The resolved configuration as ``{dotted key: JSON value}``, without ``RESUMABLE_CHANGES``."""
    raw = tomllib.loads(config.dumps(experiment))
    return {key: value for key, value in _flat(raw).items() if key.split(".")[0] not in RESUMABLE_CHANGES}


def config_hash(identity: dict[str, str]) -> str:
    """SHA-256 of a ``fingerprint`` (and whatever else identifies a population): equal hashes, same run."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def check_same_config(where: Path, saved: dict[str, str], now: dict[str, str]) -> None:
    """Refuse to continue a run whose configuration ``saved`` differs from ``now``: one line naming the keys."""
    keys = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if not keys:
        return
    changes = "; ".join(f"{k}: {saved.get(k, '(unset)')} → {now.get(k, '(unset)')}" for k in keys[:5])
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    raise UserError(
        f"{where}: the run was trained with another configuration ({changes}{more}): resume it with its own "
        "settings, or start a new run to change them (a finished run is not extended)"
    )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's plain contents; anything else is one ``CheckpointError`` line that says how to recover."""
    recover = f"delete {path} to train that chunk again from step 0 (the other chunks keep their progress)"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refuses any object that is not a tensor, list, number, …
        raise CheckpointError(
            f"{path}: refused: it holds Python objects that loading could run as code, not a tau-lab "
            f"checkpoint; {recover}"
        ) from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint; {recover}") from None
    except Exception as err:  # an empty, truncated or garbage file: torch.load raises one of many kinds
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: truncated or corrupt); {recover}") from None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this tau-lab version; {recover}")
    return saved
