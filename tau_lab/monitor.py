"""Live monitoring: every metric of every member as a TensorBoard scalar series, written while the run trains.

``tau-lab sweep NAME --tensorboard DIR`` writes one TensorBoard run per member::

    DIR/<experiment>/<run-id>/member-<id>/events.out.tfevents.*     (a sweep)
    DIR/<experiment>/search-<study>/trial-<n>/events.out.tfevents.*  (a search: one run per trial)

Each run's tags are the metric names (``loss``, ``grad_norm``, ``tau``, the evaluations, …) at the
steps of the metrics table, with the same float32 values, so ``tensorboard --logdir DIR`` overlays the
members' curves in one chart per metric. Why one run per member rather than one tag per member: TensorBoard
draws the runs of a tag together, colours and filters them by run name, and its HParams dashboard takes a
run as a session. Each member's grid values (``tau_init``, ``tau_mode``, ``seed``, the task's axes) are
written once into its run as hparams (a session start), so that dashboard lists the members with those
columns beside their metrics, sortable and filterable by τ; the name stays short (``member-3``) for grids
with many axes.

A resumed run opens its writers with ``purge_step`` at the first step it logs again: TensorBoard hides
whatever the interrupted process had written from that step on, so each series holds each step once.

TensorBoard's writer checksums every record with a CRC-32C written in Python, in writer threads that hold
the GIL meanwhile, so that training waits: on the quadrants study that was most of ``--tensorboard``'s wall
time (``python benchmarks/bench_tensorboard.py``, against the same with ``monitor._fast_checksums`` a no-op).
With ``google-crc32c`` (in the ``tensorboard`` extra) the writer gets the same checksum from C instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tau_lab.errors import UserError

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

INSTALL = "pip install 'tau-lab[tensorboard]'"
FLUSH_SECONDS = 10  # beside the flushes at evaluations and checkpoints: curves show up while a run trains


def require() -> None:
    """Raise ``UserError`` with the install command when the ``tensorboard`` package is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UserError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``: the CRC rotated right by 15 bits plus 0xA282EAD8, mod 2³²
    (so that a CRC of data holding CRCs stays informative), computed by google-crc32c's C code."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _fast_checksums() -> None:
    """Give TensorBoard's record writer ``masked_crc32c`` in place of its pure-Python one, where
    google-crc32c has its C code and the writer still looks its checksum up by that name."""
    try:
        import google_crc32c
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return
    if google_crc32c.implementation == "c" and hasattr(record_writer, "masked_crc32c"):
        record_writer.masked_crc32c = masked_crc32c


def _hparam(value: Any) -> bool | int | float | str:
    """A grid value as the HParams dashboard takes it: numbers, booleans and strings as they are, others as text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


class TensorBoardSink:
    """A ``engine.MetricSink`` writing a TensorBoard run per member under ``logdir``.

    ``rows`` are the members (``config.members`` or a search's trials): their grid values become the
    hparams of each run. A row with a ``trial`` (a search) names its run ``trial-<n>``, else ``member-<id>``.
    Writers are opened at a member's first record and closed by ``close`` (after each population).
    """

    def __init__(self, logdir: Path, rows: list[dict[str, Any]]) -> None:
        require()
        _fast_checksums()
        self.logdir = Path(logdir)
        self.rows = {row["member"]: row for row in rows}
        self.writers: dict[int, SummaryWriter] = {}

    def run_name(self, member: int) -> str:
        row = self.rows[member]
        return f"trial-{row['trial']}" if "trial" in row else f"member-{member}"

    def _open(self, member: int, step: int) -> SummaryWriter:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: a resumed run hides what the interrupted process wrote from this step on
        writer = SummaryWriter(self.logdir / self.run_name(member), purge_step=step, flush_secs=FLUSH_SECONDS)
        grid = {k: _hparam(v) for k, v in self.rows[member].items() if k != "member" and v is not None}
        _, session_start, _ = hparams(grid, {})  # metrics: the dashboard finds the run's scalar tags itself
        writer.file_writer.add_summary(session_start)
        return writer

    def record(self, member_ids: list[int], step: int, values: dict[str, Tensor]) -> None:
        """``values``: ``{metric: [K]}``; one scalar per member and metric at ``step``."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        names = list(values)
        table = torch.stack([values[n] for n in names]).T.cpu().tolist()  # [K, metrics]: one copy to the host
        for member, row in zip(member_ids, table, strict=True):
            writer = self.writers.get(member)
            if writer is None:
                writer = self.writers[member] = self._open(member, step)
            # one event per member and step holding every metric (add_scalar's simple_value, a float32):
            # fewer events to frame, checksum and queue than add_scalar's one per metric
            summary = Summary(value=[Summary.Value(tag=n, simple_value=v) for n, v in zip(names, row, strict=True)])
            writer.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


def logdir(root: Path, directory: Path) -> Path:
    """Where a run's (``results/<experiment>/<run-id>``) or a search's (``results/<experiment>/search-<study>``)
    TensorBoard runs go under ``--tensorboard root``: the same two last components."""
    return Path(root) / directory.parent.name / directory.name
