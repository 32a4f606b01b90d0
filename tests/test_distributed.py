"""Two gloo processes on 127.0.0.1 with gathered negatives give the loss and the (process-averaged)
gradients of one process holding the full batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tau_lab import losses
from tau_lab.distributed import gather

WORLD, B, D_IN, D = 2, 4, 5, 3  # per process: B rows; members K = 2


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, WORLD * B, D_IN, generator=g, dtype=torch.float64)  # [K, P·B, D_in]
    y = torch.randn(2, WORLD * B, D_IN, generator=g, dtype=torch.float64)
    w = torch.randn(2, D_IN, D, generator=g, dtype=torch.float64)  # a linear tower per member
    v = torch.randn(2, D_IN, D, generator=g, dtype=torch.float64)
    return x, y, w, v


LOSSES = {
    "clip_loss": lambda a, b: losses.clip_loss(a, b, torch.tensor([0.07, 0.5], dtype=torch.float64)),
    "nt_xent": lambda a, b: losses.nt_xent(a, b, torch.tensor([0.07, 0.5], dtype=torch.float64)),
    "siglip_loss": lambda a, b: losses.siglip_loss(a, b, 0.1, torch.tensor([-10.0, -1.0], dtype=torch.float64)),
}


def _loss_and_grads(name: str, x, y, w, v):
    w, v = w.clone().requires_grad_(), v.clone().requires_grad_()
    loss = LOSSES[name](gather(x @ w), gather(y @ v))  # [K]
    loss.sum().backward()
    return loss.detach(), w.grad, v.grad


def _worker(rank: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x, y, w, v = _data()
        rows = slice(rank * B, (rank + 1) * B)
        for name in LOSSES:
            loss, gw, gv = _loss_and_grads(name, x[:, rows], y[:, rows], w, v)
            for g in (gw, gv):  # as DistributedDataParallel averages parameter gradients
                dist.all_reduce(g)
                g /= WORLD
            out[rank, name] = (loss, gw, gv)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes() -> dict:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
        return dict(out)


@pytest.mark.parametrize("name", list(LOSSES))
def test_two_processes_equal_one_process_with_the_full_batch(name, two_processes):
    x, y, w, v = _data()
    loss, gw, gv = _loss_and_grads(name, x, y, w, v)  # no process group: gather is the identity
    for rank in range(WORLD):
        got_loss, got_w, got_v = two_processes[rank, name]
        torch.testing.assert_close(got_loss, loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_w, gw, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_v, gv, rtol=1e-12, atol=1e-12)
    # and the batch of one process alone is another loss: its B − 1 negatives instead of P·B − 1
    alone, _, _ = _loss_and_grads(name, x[:, :B], y[:, :B], w, v)
    assert (alone - loss).abs().max() > 1e-3
