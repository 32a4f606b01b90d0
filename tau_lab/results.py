"""Run directories and their tables; every write is atomic (temporary file, then rename).

``results/<experiment>/<run-id>/`` holds ``config.toml``, ``env.json``, ``members.parquet`` +
``members.csv``, ``metrics.parquet`` (long: member, step, metric, value), ``embeddings.parquet``
and ``checkpoints/``. The run id sorts by time: ``YYYYmmdd-HHMMSS-xxxx``. The results folder is
``--results``, else ``$TAU_LAB_RESULTS``, else ``./results``.

A run directory appears whole: it is filled under a hidden temporary name and renamed into place,
so a kill leaves either nothing or a directory that ``--resume`` accepts. Files are created with
the permissions the umask allows (as ``open`` would), not only for their owner. A write that the
file system refuses (no such folder, read-only, disk full) is a one-line ``UserError`` naming the path.

pandas and torch are imported inside the functions that need them: the command line imports this
module for ``--help``, which must stay fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tau_lab
from tau_lab.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    import torch

RESULTS_DIR = Path(os.environ.get("TAU_LAB_RESULTS", "results"))
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")  # scheme://… up to whitespace or a quote
ATTEMPTS = 100  # run ids tried before giving up: two runs of one experiment in one second share 1/65536 odds


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (SQLAlchemy's rendering).

    ``postgresql://me:secret@host/db`` → ``postgresql://me:***@host/db``; text without a URL is returned as is.
    """

    def hide(match: re.Match[str]) -> str:
        import sqlalchemy  # only when there is a URL: it takes a third of a second to import

        url = match[0].rstrip(":,.;)]")  # punctuation of the sentence around it
        try:
            hidden = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
        except (sqlalchemy.exc.ArgumentError, ValueError):  # not a database URL: hide user:password@ by hand
            hidden = re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", url)
        return hidden + match[0][len(url) :]

    return URL.sub(hide, text)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn the file system's refusal to write ``path`` into one line (a ``UserError``)."""
    try:
        yield
    except OSError as err:
        if err.errno is None:  # not the file system speaking (e.g. a library's own OSError): a bug
            raise
        name = errno.errorcode.get(err.errno, str(err.errno))
        raise UserError(f"cannot write {path}: {err.strerror} ({name}): choose another --results or free it") from err


def umask() -> int:
    """The process's umask (read by setting it and restoring it: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_run_id() -> str:
    """A run id, ``YYYYmmdd-HHMMSS-xxxx``: the UTC second and 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def new_run_dir(
    experiment: str, root: Path = RESULTS_DIR, files: dict[str, str] | None = None, run_id: str | None = None
) -> Path:
    """A new ``root/experiment/<run-id>/`` holding ``files`` (name → text), created whole.

    The files are written into a hidden sibling folder that is then renamed to the run id; a rename
    onto an existing run (two runs in the same second with the same 4 hex digits) fails and another
    id is drawn. ``run_id`` is tried first (a scaled-out sweep's, drawn when its first chunk was
    claimed); when that run exists already here, a new id is drawn as well.
    """
    parent = root / experiment
    with writing(parent):
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".new-run-", dir=parent))
        try:
            os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes it 0700
            for name, text in (files or {}).items():
                (staging / name).write_text(text)
            for attempt in range(ATTEMPTS):
                path = parent / (run_id if attempt == 0 and run_id is not None else new_run_id())
                try:
                    # a rename onto an empty folder would succeed: runs are never empty, and a folder
                    # someone else made is refused by the existence check
                    if not path.exists():
                        os.rename(staging, path)
                        return path
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            raise UserError(f"{parent}: no free run id after {ATTEMPTS} tries: is something creating runs in a loop?")
        finally:
            if staging.exists():
                shutil.rmtree(staging)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The file gets mode ``0o666 & ~umask``, as a plain ``open`` would give it (``mkstemp`` makes 0600).
    """
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_table(df: pd.DataFrame, path: Path, csv: bool = False) -> None:
    """``path.parquet`` (and ``path.csv`` when asked) from ``df``."""
    atomic_write(path.with_suffix(".parquet"), lambda tmp: df.to_parquet(tmp, index=False))
    if csv:
        atomic_write(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))


def read_table(run_dir: Path, name: str) -> pd.DataFrame:
    import pandas as pd

    path = run_dir / f"{name}.parquet"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a tau-lab run directory: {path.name} is missing")
    return pd.read_parquet(path)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(tau_lab.__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a run: versions, device, git commit, the command line (passwords in URLs hidden)."""
    import torch

    return {
        "tau_lab": tau_lab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,  # torchrun
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git_commit": _git_commit(),
        "command": [redact(arg) for arg in sys.argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_files(config_toml: str, device: torch.device) -> dict[str, str]:
    """What a new run directory starts with: its resolved ``config.toml`` and ``env.json``."""
    return {"config.toml": config_toml, "env.json": json.dumps(environment(device), indent=2) + "\n"}


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """The long metrics table (member, step, metric, value) of a run, finished or still training.

    A finished run has ``metrics.parquet``; a running (or interrupted) one has the parts its populations
    append at every checkpoint and evaluation, ``metrics/chunk-{i}-{until:08d}.parquet``, read here in the
    finished table's row order (a part written after the last checkpoint of a killed run is included).
    """
    import pandas as pd

    path = run_dir / "metrics.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    parts = sorted((run_dir / "metrics").glob("chunk-*.parquet"))
    if not parts:
        raise UserError(f"{run_dir}: no metrics yet: neither metrics.parquet nor parts in metrics/ (is it a run?)")
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return frame.sort_values(["member", "step", "metric"], kind="stable", ignore_index=True)
