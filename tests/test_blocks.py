"""Blocks of steps (``block_steps``): the steps between events in one call compute what one step at a time does.

In float64 eager a block runs the very operations of single steps, so the tables are equal exactly, whatever the
block length; divergence is recorded at its exact step inside a block; a run cut at a block's end resumes, with
another block length, to the uninterrupted tables; a compiled block matches the eager one to float32 rounding.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.utils._pytree as pytree
from conftest import default_float64
from hypothesis import given, settings
from hypothesis import strategies as st
from test_checkpoint import _ctrl_c_at

from tau_lab import config, engine
from tau_lab.tasks.base import TaskBase, index_batch
from tau_lab.tasks.quadrants import Quadrants
from tau_lab.tasks.quadrants import train_reference as quadrants_reference
from tau_lab.temperature import Temperature

CPU = torch.device("cpu")
# events at 0, 10, 20, 25, 30, …: blocks of every length from 1 to 9 between them
EVENTS = ["steps=60", "log_every=10", "eval_every=25"]
QUADRANTS = [
    *EVENTS,
    "sweep.tau=[0.5, 0.05]",
    "sweep.tau_mode=['fixed', 'learnable', 'cosine', 'linear', 'ctkd']",
    "sweep.seeds=[0, 1]",
    "optimizer.name='adamw'",
    "optimizer.lr=0.01",
    "optimizer.tau_lr=0.05",
    "temperature.tau_min=0.01",
]
DIGITS = ["steps=30", "log_every=10", "eval_every=30", "sweep.tau=[0.1]", "sweep.tau_mode=['fixed', 'learnable']"]
DIGITS += ["sweep.seeds=[0]", "data.batch_size=16", "model.hidden=8", "model.features=8", "data.probe_steps=2"]


def _tables(name: str, overrides: list[str], block_steps: int) -> dict[str, pd.DataFrame]:
    experiment, _ = config.load_experiment(name, [*overrides, f"block_steps={block_steps}"])
    rows = config.members(experiment)
    with default_float64():
        return engine.tables(rows, [engine.train_population(experiment, rows, CPU)])


@pytest.mark.parametrize(("name", "overrides"), [("quadrants", QUADRANTS), ("digits_simclr", DIGITS)])
def test_block_lengths_give_the_same_tables_float64(name, overrides):
    one = _tables(name, overrides, 1)
    assert one["members"].status.eq("ok").all()
    for block_steps in (7, 64):
        blocks = _tables(name, overrides, block_steps)
        for table in ("members", "metrics"):
            pd.testing.assert_frame_equal(blocks[table], one[table], check_exact=True)


def test_a_member_diverging_inside_a_block_is_recorded_at_its_step():
    # A learning rate of 1e200 overflows float64: at step 1 with τ = 0.5, at step 9 with τ = 1e-30 (the first and
    # last steps of the block 1–9; with blocks of 7, the last of the block 8–9)
    overrides = [*EVENTS, "sweep.tau=[0.5, 1e-30]", "sweep.tau_mode=['fixed']", "sweep.seeds=[0]"]
    overrides += ["sweep.lr=[1e-3, 1e200]"]
    experiment, _ = config.load_experiment("quadrants", overrides)
    steps = {}
    for block_steps in (1, 7, 64):
        members = _tables("quadrants", overrides, block_steps)["members"]
        steps[block_steps] = members.diverged_step.tolist()
        assert members.tau.tolist() == pytest.approx(members.tau_init.tolist())  # τ of the last finite step
    assert steps[1] == steps[7] == steps[64]
    # the oracle: the first step whose loss is not finite, each member trained alone
    with default_float64():
        for row, diverged in zip(config.members(experiment), steps[1], strict=True):
            losses = quadrants_reference(experiment, row).losses
            first = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), -1)
            assert first == (-1 if diverged is pd.NA else diverged)
    assert [-1 if s is pd.NA else s for s in steps[1]] == [-1, 1, -1, 9]


def test_a_run_cut_between_blocks_resumes_with_another_block_length(tmp_path, monkeypatch):
    base = [*EVENTS, "checkpoint_every=0", "sweep.tau=[0.1, 0.5]", "sweep.tau_mode=['fixed', 'learnable']"]

    def experiment(block_steps: int) -> config.Experiment:
        return config.load_experiment("quadrants", [*base, f"block_steps={block_steps}"])[0]

    _, full = engine.run_sweep(experiment(1), "quadrants", root=tmp_path / "full")
    _ctrl_c_at(monkeypatch, 13)  # in the block of steps 11–17
    with pytest.raises(engine.Interrupted) as err:
        engine.run_sweep(experiment(7), "quadrants", root=tmp_path / "cut")
    monkeypatch.undo()
    assert torch.load(err.value.run_dir / "checkpoints" / "chunk-0.pt", weights_only=True)["step"] == 18
    _, resumed = engine.run_sweep(experiment(64), "quadrants", run_dir=err.value.run_dir)
    for name in ("members", "metrics", "embeddings"):
        pd.testing.assert_frame_equal(resumed[name], full[name])


def test_quadrants_batches_are_the_stacked_batches():
    experiment, _ = config.load_experiment("quadrants", ["steps=30", "sweep.seeds=[0, 1]"])
    task = Quadrants(experiment, config.members(experiment), CPU)
    stacked, generic = task.batches(5, 9), TaskBase.batches(task, 5, 9)
    assert stacked.shape == (9, len(task.seed_row), 5, 2)
    assert torch.equal(stacked, generic)
    assert torch.equal(index_batch(stacked, 3), task.batch(8))


def test_schedule_rows_are_the_temperature_of_each_step():
    temperature = Temperature([0.3, 0.5, 0.2, 0.4], ["cosine", "ctkd", "learnable", "linear"], 0.1, 1.0, period=12)
    scheduled, lam = temperature.schedule(3, 20)
    for i, step in enumerate(range(3, 23)):
        scale = temperature.logit_scale.detach()
        assert torch.equal(temperature.tau(scale, scale, scheduled[i]), temperature(step).detach())
        assert lam[i].item() == pytest.approx(-0.5 * (1 - math.cos(math.pi * min(step / 12, 1))), abs=1e-7)


@pytest.mark.compile
def test_a_compiled_block_matches_the_eager_one_float32(capsys):
    # two populations in one process: the second (other seeds, rates and τ) must not run the first's graph, nor
    # compile another one (learning rates and τ are the graph's inputs, not constants: a search's trials share it);
    # neither falls back to eager blocks (the fallback gives the same numbers, so only its warning tells)
    pytest.importorskip("torch._inductor", reason="torch.compile's inductor is not available")
    from torch._dynamo.utils import counters

    base = ["steps=24", "log_every=12", "eval_every=24", "sweep.tau_mode=['fixed', 'learnable']", "block_steps=11"]
    graphs = []
    for overrides in (
        ["sweep.tau=[0.5, 0.1]", "sweep.seeds=[0]", "optimizer.tau_lr=0.05"],
        ["sweep.tau=[0.3]", "sweep.seeds=[1, 2]", "optimizer.lr=0.01", "optimizer.tau_lr=0.1"],
    ):
        experiment, _ = config.load_experiment("quadrants", [*base, *overrides])
        rows = config.members(experiment)
        eager = engine.train_population(experiment, rows, CPU)
        compiled = engine.train_population(experiment.model_copy(update={"compile": True}), rows, CPU)
        graphs.append(counters["stats"]["unique_graphs"])
        for name, value in eager["params"].items():
            torch.testing.assert_close(compiled["params"][name], value, rtol=1e-5, atol=1e-6)
        eager_log, compiled_log = eager["log"].frame(), compiled["log"].frame()
        assert eager_log[["member", "step", "metric"]].equals(compiled_log[["member", "step", "metric"]])
        torch.testing.assert_close(
            torch.tensor(compiled_log.value.to_numpy()), torch.tensor(eager_log.value.to_numpy()), rtol=1e-4, atol=1e-6
        )
    assert graphs[1] == graphs[0] > 0
    assert "not traceable" not in capsys.readouterr().err


@pytest.mark.compile
def test_the_gpu_blocks_compiled_step_loop_matches_the_eager_block_on_the_cpu(monkeypatch):
    # CudaGraphBlocks records its steps loop in a CUDA graph (tests/test_cuda.py runs that on a GPU); the loop
    # itself (the compiled flat step, each step reading its inputs in place, rows of the aligned stack) runs on
    # the CPU
    pytest.importorskip("torch._inductor", reason="torch.compile's inductor is not available")
    eager_calls = engine._calls

    def gpu_calls(training, compile, device):
        if not compile:
            return eager_calls(training, compile, device)
        blocks = engine.CudaGraphBlocks(training)

        def block(c, xs):
            return blocks.steps(pytree.tree_map(torch.clone, c), pytree.tree_map(engine._aligned, xs))

        return engine._then(engine._compiled_log_step(training), block), block

    monkeypatch.setattr(engine, "_calls", gpu_calls)
    with default_float64():
        experiment, _ = config.load_experiment("quadrants", [*QUADRANTS, "block_steps=7"])
        rows = config.members(experiment)
        eager = engine.train_population(experiment, rows, CPU)
        compiled = engine.train_population(experiment.model_copy(update={"compile": True}), rows, CPU)
    for name, value in eager["params"].items():
        torch.testing.assert_close(compiled["params"][name], value, rtol=1e-9, atol=1e-12)
    assert torch.equal(compiled["diverged_step"], eager["diverged_step"])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 9),
    row=st.lists(st.integers(0, 7), max_size=3),
    dtype=st.sampled_from([torch.bool, torch.uint8, torch.int64, torch.float32, torch.float64, torch.bfloat16]),
)
def test_aligned_stacks_start_every_row_on_16_bytes(n, row, dtype):
    x = (torch.arange(n * math.prod(row)).reshape(n, *row) % 5).to(dtype)
    aligned = engine._aligned(x)
    assert torch.equal(aligned, x)
    for i in range(n):
        assert aligned[i].is_contiguous()
        assert aligned[i].data_ptr() % 16 == 0
