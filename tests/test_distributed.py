"""Gathered negatives: two gloo processes on 127.0.0.1 are one process holding the full batch.

The gather alone (loss and process-averaged gradients of every loss), the local-rows losses (their mean over
shards is the full-batch loss), and whole populations of the clip, simclr and module tasks trained by the
engine in two processes against one (float64: parameters, losses, logged and evaluated metrics), with
process 1 writing nothing; the CLI's checks of a torchrun launch.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from tau_lab import config, engine, losses
from tau_lab.cli import app
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

# populations trained by the engine: float64, 4 steps, a global batch of 16 (8 rows per process)
SIMCLR = ["steps=4", "log_every=2", "eval_every=2", "data.batch_size=16", "data.probe_steps=3", "model.hidden=16"]
SIMCLR += ["model.features=8", "model.projection=4", "sweep.tau=[0.1, 0.5]", "sweep.seeds=[0, 1]"]
CLIP = ["steps=4", "log_every=2", "eval_every=2", "data.batch_size=16", "model.hidden=16", "model.width=8"]
CLIP += ["model.embed_dim=4", "sweep.tau=[0.1]", "sweep.tau_mode=['fixed', 'learnable']", "sweep.seeds=[0]"]
CLIP += ["sweep.mask_false_negatives=[false, true]"]
MODULE = {
    "task": "module",
    "steps": 4,
    "log_every": 2,
    "eval_every": 2,
    "model": {"factory": "test_module_task:towers", "kwargs": {"dim": 4}},
    "data": {"factory": "test_module_task:pairs", "batch_size": 8},
    "sweep": {"tau": [0.1, 0.5], "tau_mode": ["fixed", "learnable"], "seeds": [0]},
}
POPULATIONS = {
    "clip": lambda: config.load_experiment("digits_clip", CLIP)[0],
    "clip-siglip": lambda: config.load_experiment("digits_clip", [*CLIP, "sweep.objective=['siglip']"])[0],
    "simclr": lambda: config.load_experiment("digits_simclr", SIMCLR)[0],
    **{
        f"module-{loss}": lambda loss=loss: config.validate({**MODULE, "model": {**MODULE["model"], "loss": loss}}, "t")
        for loss in ("clip", "nt_xent", "info_nce", "siglip")
    },
}


def _loss_and_grads(name: str, x, y, w, v):
    w, v = w.clone().requires_grad_(), v.clone().requires_grad_()
    loss = LOSSES[name](gather(x @ w), gather(y @ v))  # [K]
    loss.sum().backward()
    return loss.detach(), w.grad, v.grad


def _train(name: str) -> dict:
    experiment = POPULATIONS[name]()
    out = engine.train_population(experiment, config.members(experiment), torch.device("cpu"))
    return {"params": out["params"], "metrics": out["log"].frame()}


def _worker(rank: int, port: int, root: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        x, y, w, v = _data()
        rows = slice(rank * B, (rank + 1) * B)
        for name in LOSSES:
            loss, gw, gv = _loss_and_grads(name, x[:, rows], y[:, rows], w, v)
            for g in (gw, gv):  # as DistributedDataParallel averages parameter gradients
                dist.all_reduce(g)
                g /= WORLD
            out[rank, name] = (loss, gw, gv)
        torch.set_default_dtype(torch.float64)
        for name in POPULATIONS:
            out[rank, name] = _train(name)
        experiment = POPULATIONS["clip"]()
        run_dir, _ = engine.run_sweep(experiment, "clip", root=Path(root) / f"rank{rank}")
        out[rank, "run_dir"] = run_dir
        out[rank, "resumed"] = _interrupt_and_resume(Path(root) / "resume")
    finally:
        dist.destroy_process_group()


def _stop_at_step_2(chunk, step: int, evaluation) -> None:
    if step == 2:
        raise KeyboardInterrupt


def _interrupt_and_resume(root: Path) -> dict:
    """A clip sweep stopped at step 2 (its checkpoint of step 2 on disk) and resumed by both processes."""
    experiment = POPULATIONS["clip"]()
    experiment.checkpoint_every = 2
    try:
        engine.run_sweep(experiment, "clip", root=root, on_eval=_stop_at_step_2)
    except engine.Interrupted as stop:
        run_dir = [stop.run_dir]
    dist.broadcast_object_list(run_dir)  # the directory process 0 made, for the others to read
    _, tables = engine.run_sweep(experiment, "clip", run_dir=run_dir[0], root=root)
    return tables


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("runs")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), str(root), out), nprocs=WORLD, join=True)
        return dict(out), root


@pytest.mark.parametrize("name", list(LOSSES))
def test_two_processes_equal_one_process_with_the_full_batch(name, two_processes):
    x, y, w, v = _data()
    loss, gw, gv = _loss_and_grads(name, x, y, w, v)  # no process group: gather is the identity
    for rank in range(WORLD):
        got_loss, got_w, got_v = two_processes[0][rank, name]
        torch.testing.assert_close(got_loss, loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_w, gw, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_v, gv, rtol=1e-12, atol=1e-12)
    # and the batch of one process alone is another loss: its B − 1 negatives instead of P·B − 1
    alone, _, _ = _loss_and_grads(name, x[:, :B], y[:, :B], w, v)
    assert (alone - loss).abs().max() > 1e-3


def _same_metrics(got, expected) -> None:
    assert list(got[["member", "step", "metric"]].itertuples(index=False)) == list(
        expected[["member", "step", "metric"]].itertuples(index=False)
    )
    torch.testing.assert_close(
        torch.tensor(got["value"].to_numpy()),
        torch.tensor(expected["value"].to_numpy()),
        rtol=1e-5,
        atol=1e-6,
        equal_nan=True,  # logit_bias of CLIP members
    )


@pytest.mark.parametrize("name", list(POPULATIONS))
def test_a_population_in_two_processes_trains_as_one_process_with_the_global_batch(name, two_processes):
    torch.set_default_dtype(torch.float64)
    try:
        expected = _train(name)
    finally:
        torch.set_default_dtype(torch.float32)
    metrics = set(expected["metrics"]["metric"])
    assert {"loss", "effective_negatives"} <= metrics
    for rank in range(WORLD):
        got = two_processes[0][rank, name]
        for param, value in expected["params"].items():
            torch.testing.assert_close(got["params"][param], value, rtol=1e-10, atol=1e-12, msg=param)
        # the log (float32): loss, τ, gradient norms, hardness, diagnostics; the evaluations on process 0 only
        trained = expected["metrics"][expected["metrics"]["metric"].isin(set(got["metrics"]["metric"]))]
        _same_metrics(got["metrics"], expected["metrics"] if rank == 0 else trained)
    assert len(trained) < len(expected["metrics"])
    if name != "simclr":  # a learnable τ moved: its gradient is averaged over the processes too
        initial = torch.tensor([-math.log(r["tau_init"]) for r in config.members(POPULATIONS[name]())])
        assert (expected["params"]["logit_scale"] - initial).abs().max() > 1e-4
    if "siglip" in name:  # SigLIP's bias moved from its −10: its gradient is averaged too
        assert (expected["params"]["logit_bias"] + 10).abs().min() > 1e-6


def test_only_process_zero_writes_the_run(two_processes):
    out, root = two_processes
    assert out[1, "run_dir"] is None
    assert not (root / "rank1").exists()
    run_dir = out[0, "run_dir"]
    assert run_dir.parent.parent == root / "rank0"
    assert {"members.parquet", "metrics.parquet", "config.toml", "env.json"} <= {p.name for p in run_dir.iterdir()}
    assert '"processes": 2' in (run_dir / "env.json").read_text()


def test_a_sweep_stopped_under_torchrun_resumes_to_the_uninterrupted_run(two_processes, tmp_path):
    experiment = POPULATIONS["clip"]()
    torch.set_default_dtype(torch.float64)
    try:
        _, expected = engine.run_sweep(experiment, "clip", root=tmp_path)
    finally:
        torch.set_default_dtype(torch.float32)
    got = two_processes[0][0, "resumed"]
    _same_metrics(got["metrics"], expected["metrics"])
    assert got["members"]["status"].tolist() == expected["members"]["status"].tolist()


@pytest.mark.parametrize("processes", [2, 4])
def test_the_mean_of_the_local_losses_over_shards_is_the_full_batch_loss(processes):
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(2, 3, 8, 4, generator=g, dtype=torch.float64)  # [K, B, D]
    tau = torch.tensor([0.1, 0.7], dtype=torch.float64)
    exclude = torch.rand(3, 8, 8, generator=g) < 0.3
    exclude &= ~torch.eye(8, dtype=torch.bool)
    b = 8 // processes
    shards = [slice(r * b, (r + 1) * b) for r in range(processes)]
    clip = torch.stack([losses.clip_loss_rows(u[:, s], v[:, s], u, v, tau[:1].expand(3), s.start) for s in shards])
    torch.testing.assert_close(clip.mean(0), losses.clip_loss(u, v, tau[0]), rtol=1e-13, atol=1e-13)
    nt = torch.stack([losses.nt_xent_rows(u[:, s], v[:, s], u, v, tau[1:].expand(3), s.start) for s in shards])
    torch.testing.assert_close(nt.mean(0), losses.nt_xent(u, v, tau[1]), rtol=1e-13, atol=1e-13)
    masked = [losses.clip_loss_rows(u[:, s], v[:, s], u, v, tau[:1].expand(3), s.start, exclude) for s in shards]
    whole = losses.clip_loss_rows(u, v, u, v, tau[:1].expand(3), 0, exclude)
    torch.testing.assert_close(torch.stack(masked).mean(0), whole, rtol=1e-13, atol=1e-13)
    assert (whole - clip.mean(0)).abs().min() > 1e-3  # the exclusions changed the loss


def test_siglip_of_the_rows_is_siglip_of_the_full_batch_with_its_gradients_float64():
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(2, 3, 8, 4, generator=g, dtype=torch.float64)  # [K, B, D]
    tau = torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)
    bias = torch.tensor([-10.0, -2.0, 0.5], dtype=torch.float64)
    exclude = torch.rand(3, 8, 8, generator=g) < 0.3
    exclude &= ~torch.eye(8, dtype=torch.bool)

    def value_and_grads(loss_fn) -> list[torch.Tensor]:
        inputs = [x.clone().requires_grad_() for x in (u, v, tau, bias)]
        loss = loss_fn(*inputs)
        return [loss.detach(), *torch.autograd.grad(loss.sum(), inputs)]

    def shards(processes: int, mask: torch.Tensor | None):
        b = 8 // processes
        return lambda x, y, t, c: torch.stack(
            [losses.siglip_loss_rows(x[:, r * b : (r + 1) * b], y, t, c, r * b, mask) for r in range(processes)]
        ).mean(0)  # what distributed.average makes of the processes' losses

    full = value_and_grads(losses.siglip_loss)
    for name, got in {
        "one shard": value_and_grads(shards(1, None)),
        "2 shards": value_and_grads(shards(2, None)),
        "4 shards": value_and_grads(shards(4, None)),
    }.items():
        for part, a, e in zip(["loss", "image", "text", "tau", "bias"], got, full, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-13, msg=f"{name}: {part}")
    masked = value_and_grads(shards(1, exclude))
    for processes in (2, 4):
        for a, e in zip(value_and_grads(shards(processes, exclude)), masked, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-13, atol=1e-13)
    assert (masked[0] - full[0]).abs().min() > 1e-6  # the exclusions changed the loss


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"WORLD_SIZE": "3", "RANK": "0"},
            ["digits_clip"],
            "batch_size = 128 does not split over the 3",
        ),
        ({"WORLD_SIZE": "2", "RANK": "0"}, ["quadrants"], "task = 'quadrants' does not gather negatives"),
    ],
)
def test_a_bad_torchrun_launch_is_one_line_exit_2(env, args, message, tmp_path, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["sweep", *args, "--steps", "1", "--quiet", "--results", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output
    assert not any(tmp_path.iterdir())  # nothing written, no process group joined


def test_search_under_torchrun_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["search", "quadrants_search", "--trials", "1", "--results", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "does not run under torchrun" in result.output
