"""Negatives gathered across processes, as open_clip's ``gather_features`` with ``local_loss`` does.

Run a sweep under ``torchrun --nproc-per-node P -m tau_lab sweep NAME``: ``init_from_env`` reads torchrun's
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and joins the process group (gloo on the CPU, NCCL on CUDA with one
device per ``LOCAL_RANK``). ``data.batch_size`` stays the *global* batch ``B``: every process draws the same
batch (the same seed stream) and keeps its ``b = B/P`` rows (``local_rows``); the contrastive tasks embed
those rows, ``gather`` the embeddings of all processes (with gradients) and compute the loss of their own
rows against all ``B`` columns (open_clip's ``local_loss``), so an anchor still sees ``B − 1`` negatives
(``2B − 2`` for NT-Xent). ``average`` then averages the loss and every gradient over the processes, as
``DistributedDataParallel`` does. P processes with global batch B are thus one process with batch B, in
the B rows of work split P ways; only process 0 evaluates and writes (``is_main``).

Gradients. With ``L_r`` the loss of process r's rows (a mean over them), the full-batch loss is
``L = (1/P) Σ_r L_r``. ``gather``'s backward all-reduces the gradient reaching the gathered rows, so
process r's own rows ``x_r`` receive ``Σ_{r'} ∂L_{r'}/∂x_r``; the parameter gradient on process r is that
times ``∂x_r/∂θ``, and its mean over processes is ``(1/P) Σ_{r,r'} ∂L_{r'}/∂x_r · ∂x_r/∂θ = ∂L/∂θ``, the
full-batch gradient. Without a process group (one process) every function here is the identity.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from tau_lab.errors import UserError
from tau_lab.tasks.base import StepResult

TIMEOUT = datetime.timedelta(minutes=5)  # a collective that waits longer (a process died) raises, never hangs
GATHERING_TASKS = ("clip", "simclr", "module")  # the tasks whose step gathers its embeddings


class _Gather(torch.autograd.Function):
    """All-gather along ``dim`` forward; all-reduce of the gradient and this rank's slice backward."""

    @staticmethod
    def forward(x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, int], output: Tensor) -> None:  # torch.func needs it apart
        x, dim = inputs
        ctx.dim, ctx.rows = dim, x.shape[dim]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process's loss depends on this process's rows
        return grad.narrow(ctx.dim, dist.get_rank() * ctx.rows, ctx.rows), None


def world() -> tuple[int, int]:
    """``(rank, processes)``: ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes the run directory and draws the progress bar (rank 0)."""
    return world()[0] == 0


def gather(x: Tensor, dim: int = -2) -> Tensor:
    """All processes' ``x`` concatenated along ``dim`` (the batch axis of ``[K, b, D]``) in rank order:
    ``[K, P·b, D]``, with gradients. Without a process group (one process) it returns ``x`` itself."""
    if world()[1] == 1:
        return x
    return _Gather.apply(x, dim % x.ndim)


def local_rows(batch_size: int) -> slice:
    """This process's rows ``[r·b, (r+1)·b)`` of a global batch of ``batch_size``, ``b = batch_size / P``.

    A batch that does not split evenly is one line (``check_split``)."""
    rank, processes = world()
    check_split(batch_size, processes)
    b = batch_size // processes
    return slice(rank * b, (rank + 1) * b)


def check_split(batch_size: int, processes: int) -> None:
    """One line unless ``batch_size`` splits into ``processes`` equal shards: the mean of the shards' losses is
    the full batch's only then."""
    if batch_size % processes:
        raise UserError(
            f"data.batch_size = {batch_size} does not split over the {processes} processes of torchrun: "
            f"use a multiple of {processes} (it is the global batch; each process embeds batch_size / {processes})"
        )


def average(out: StepResult) -> StepResult:
    """The loss ``[K]``, gradients and ``∂L/∂τ`` averaged over the processes (one all-reduce of them all):
    the full batch's, as every process computed the loss of its own rows. ``sims`` stay this process's rows."""
    _, processes = world()
    if processes == 1:
        return out
    tensors = [out.loss, *out.grads.values(), out.grad_tau]
    flat = torch.cat([t.reshape(-1) for t in tensors]) / processes
    dist.all_reduce(flat)
    parts = [p.view_as(t) for p, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]
    loss, *grads, grad_tau = parts
    return StepResult(loss, dict(zip(out.grads, grads, strict=True)), grad_tau, out.sims)


def mean(x: Tensor) -> Tensor:
    """The mean over processes of a per-process ``x`` (a mean over this process's rows, ``[K]``)."""
    _, processes = world()
    if processes == 1:
        return x
    x = x / processes
    dist.all_reduce(x)
    return x


def torchrun_processes() -> int:
    """``WORLD_SIZE`` as torchrun sets it, 1 when it does not."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"WORLD_SIZE = {value!r}: expected a positive integer (torchrun sets it)")
    return int(value)


@contextlib.contextmanager
def init_from_env(experiment: Any, device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the block, when ``WORLD_SIZE`` > 1 (else do nothing).

    Backend gloo on the CPU, NCCL on CUDA; on CUDA each process takes the device ``LOCAL_RANK``. Checked
    first, one line each: the task gathers its negatives (other tasks' processes would only repeat each
    other) and ``data.batch_size`` splits over the processes.
    """
    processes = torchrun_processes()
    if processes == 1 or world()[1] > 1:  # one process, or a group the caller made
        yield
        return
    if experiment.task not in GATHERING_TASKS:
        raise UserError(
            f"task = {experiment.task!r} does not gather negatives across processes (only "
            f"{', '.join(GATHERING_TASKS)} do): run it without torchrun"
        )
    check_split(experiment.data.batch_size, processes)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()
