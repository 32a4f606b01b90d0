"""Negatives gathered across processes, as open_clip's ``gather_features`` does for CLIP and SigLIP.

With ``P`` processes (``torchrun``; backend gloo on the CPU, NCCL on CUDA) each holding ``B`` rows,
``gather(x)`` returns all ``P·B`` rows in rank order on every process, and gradients flow back
through the gather: each process then computes the same loss as one process with the full batch, so
a contrastive loss sees ``P·B − 1`` negatives per anchor instead of ``B − 1``.

Gradients. Every process computes the same full loss ``L`` from the gathered rows, so the gradient
reaching process r's own rows is ``Σ_{r'} ∂L/∂x_r = P · ∂L/∂x_r`` (an all-reduce of the incoming
gradient). Averaging parameter gradients over processes, as ``DistributedDataParallel`` does, then
gives exactly the full-batch gradient ``Σ_r ∂L/∂x_r · ∂x_r/∂θ``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class _Gather(torch.autograd.Function):
    """All-gather along ``dim`` forward; all-reduce of the gradient and this rank's slice backward."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        ctx.dim, ctx.rows = dim, x.shape[dim]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process's loss depends on this process's rows
        return grad.narrow(ctx.dim, dist.get_rank() * ctx.rows, ctx.rows), None


def gather(x: Tensor, dim: int = -2) -> Tensor:
    """All processes' ``x`` concatenated along ``dim`` (the batch axis of ``[K, B, D]``), with gradients.

    Without an initialised process group (one process) it returns ``x`` itself.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _Gather.apply(x, dim % x.ndim)
