"""The engine on a CUDA device: the same numbers as on the CPU, finite bf16 losses at τ = 0.001, the compile path
(each block one CUDA graph, ``engine.CudaGraphBlocks``).

Marked ``cuda`` and skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs them (``pytest -m cuda``).
CUDA matmuls here run in full float32 (TF32 is off by default for matmuls), so one step differs from the CPU's
by float32 rounding only; over steps the difference grows (logits at 1/τ, AdamW's normalised first steps), so
the comparisons that train for a while run in float64, or with SGD. All passed on an H200 (docs/benchmarks.md).

The digits task compared with the CPU is ``digits_kd``: its batches come from CPU generators, so both devices
see the same images. SimCLR, CLIP and the module task draw their batches from generators on the population's
device, whose streams differ between CPU and CUDA by design (a CUDA run is reproducible on CUDA): their CUDA
eager run is the reference of their CUDA compiled run.
"""

import contextlib

import pytest
import torch
from conftest import default_float64

from tau_lab import config, engine
from tau_lab.tasks import quadrants as quadrants_task

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TEACHER = ["model.teacher.hidden=[16]", "model.teacher.steps=30", "model.teacher.lr=1e-2"]  # trains in a moment
RTOL, ATOL = 1e-4, 1e-5  # float32
RTOL64, ATOL64 = 1e-7, 1e-9  # float64: CPU and CUDA sum in other orders, and training amplifies it a little
SGD = ['optimizer.name="sgd"', "optimizer.lr=0.1"]  # AdamW's first steps turn float32 noise in a ~0 gradient into ±lr


@pytest.fixture(autouse=True)
def teacher_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAU_LAB_CACHE", str(tmp_path / "teachers"))


def quadrants(*overrides: str) -> config.Experiment:
    experiment, _ = config.load_experiment(
        "quadrants", ["steps=30", "log_every=10", "eval_every=15", "sweep.seeds=[0, 1]", *overrides]
    )
    return experiment


def digits_kd(*overrides: str) -> config.Experiment:
    grid = [
        "sweep.tau=[1.0, 4.0]",
        'sweep.tau_mode=["fixed", "ctkd"]',
        "sweep.alpha=[0.5]",
        "sweep.t2_scaling=[true]",
        "sweep.labeled_fraction=[0.2]",
        "sweep.seeds=[0, 1]",
    ]
    experiment, _ = config.load_experiment(
        "digits_kd", [*TEACHER, *grid, "steps=10", "log_every=5", "eval_every=5", "data.batch_size=32", *overrides]
    )
    return experiment


def train(experiment: config.Experiment, device: torch.device) -> dict:
    return engine.train_population(experiment, config.members(experiment), device)


def losses(out: dict) -> torch.Tensor:
    """The logged loss of every member at every logged step, ``[steps, K]``."""
    frame = out["log"].frame()
    frame = frame[frame.metric == "loss"].pivot(index="step", columns="member", values="value")
    return torch.tensor(frame.to_numpy())


def assert_same(cpu: dict, cuda: dict, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert set(cpu["params"]) == set(cuda["params"])
    for name, p in cpu["params"].items():
        torch.testing.assert_close(
            cuda["params"][name].cpu(), p, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )
    torch.testing.assert_close(losses(cuda), losses(cpu), rtol=rtol, atol=atol)
    assert torch.equal(cuda["alive"].cpu(), cpu["alive"])


@pytest.mark.parametrize("make", [quadrants, digits_kd], ids=["quadrants", "digits_kd"])
def test_a_population_on_cuda_equals_the_same_population_on_the_cpu(make):
    # in float32 the two devices' rounding grows apart over the steps: quadrants puts logits at 1/τ up to 1000
    # (so it runs in float64), and AdamW turns noise in a gradient near 0 into ±lr (so digits_kd, whose cached
    # float32 teacher needs float32, runs with SGD)
    dtype, tolerances, extra = (torch.float64, (RTOL64, ATOL64), []) if make is quadrants else (None, (), SGD)
    with default_float64() if dtype else contextlib.nullcontext():
        experiment = make(*extra)
        cpu, cuda = train(experiment, CPU), train(experiment, CUDA)
        start = train(make(*extra, "steps=1"), CPU)
    assert bool(cpu["alive"].all())  # every member trained: the comparison covers all of them
    assert_same(cpu, cuda, *tolerances)
    # the weights moved: equal starting points alone would not pass this
    assert not torch.allclose(start["params"][next(iter(start["params"]))], cpu["params"][next(iter(cpu["params"]))])


def test_the_quadrants_negatives_are_picked_alike_on_cuda_and_on_the_cpu():
    # a GPU population picks its negatives on the GPU (topk); rows with ties fall back to the CPU's argsort
    g = torch.Generator().manual_seed(0)
    tied = (torch.rand(20_000, 75, generator=g) * 10).floor()  # every row ties
    assert torch.equal(quadrants_task.smallest(tied.to(CUDA), 3).cpu(), tied.argsort(dim=1)[:, :3])
    data = quadrants_task.Data()
    for seed in (0, 1):  # about 1.4 tied rows a seed among 200,001 of distinct values
        on_cuda = quadrants_task.draw_indices(seed, 200_001, data, CUDA)
        assert torch.equal(on_cuda.cpu(), quadrants_task.draw_indices(seed, 200_001, data))


@pytest.mark.parametrize(
    "make", [quadrants, digits_kd, lambda *o: quadrants('sweep.tau_mode=["learnable"]', *o)], ids=["q", "kd", "q-l"]
)
def test_bf16_losses_are_finite_at_the_smallest_tau(make):
    # τ = 0.001 puts logits at up to 1/τ = 1000 (bf16 holds them to ~4 in 1000); the losses stay float32
    tau = "sweep.tau=[0.001]" if make is not digits_kd else "sweep.tau=[0.001, 1.0]"
    experiment = make(tau, 'precision="bf16"')
    out = train(experiment, CUDA)
    logged = losses(out)
    assert logged.numel() and bool(torch.isfinite(logged).all()), logged
    assert bool(out["alive"].all()) and int((out["diverged_step"] >= 0).sum()) == 0
    # the first step in fp32 differs by bf16's rounding only: cosines off by up to ~2⁻⁸ each, times 1/τ
    reference = losses(train(make(tau), CUDA))
    torch.testing.assert_close(logged[0], reference[0], rtol=0.05, atol=2 * 2**-8 / 0.001)


def test_the_compile_path_runs_on_cuda_and_equals_eager():
    # compiled: each block of steps one CUDA graph (engine.CudaGraphBlocks)
    with default_float64():
        eager = train(quadrants('sweep.tau_mode=["fixed", "learnable", "cosine"]'), CUDA)
        compiled = train(quadrants('sweep.tau_mode=["fixed", "learnable", "cosine"]', "compile=true"), CUDA)
    assert_same(eager, compiled, RTOL64, ATOL64)


def simclr(*overrides: str) -> config.Experiment:
    small = ["steps=12", "log_every=4", "eval_every=6", "sweep.seeds=[0]", "data.batch_size=32", "data.probe_steps=5"]
    experiment, _ = config.load_experiment(
        "digits_simclr", [*small, "model.hidden=32", "model.features=16", *overrides]
    )
    return experiment


def clip(*overrides: str) -> config.Experiment:
    small = ["steps=12", "log_every=4", "eval_every=6", "sweep.seeds=[0]", "data.batch_size=32"]
    experiment, _ = config.load_experiment("digits_clip", [*small, "model.hidden=32", "model.width=16", *overrides])
    return experiment


@pytest.mark.parametrize("make", [simclr, clip], ids=["simclr", "clip"])
def test_a_contrastive_population_trains_on_cuda_and_its_compiled_blocks_equal_eager(make):
    # the batches come from CUDA generators (not comparable with the CPU), so CUDA eager is the reference of
    # CUDA's two other paths: one step per call, and the compiled blocks replayed as CUDA graphs (float64:
    # in float32 CLIP's fused kernels round differently, by up to 4e-4 relative after 12 steps)
    with default_float64():
        eager = train(make(*SGD), CUDA)
        one_by_one = train(make(*SGD, "block_steps=1"), CUDA)
        compiled = train(make(*SGD, "compile=true"), CUDA)
    assert bool(eager["alive"].all()) and bool(torch.isfinite(losses(eager)).all())
    assert_same(eager, one_by_one, RTOL64, ATOL64)
    assert_same(eager, compiled, RTOL64, ATOL64)


def cnn(*overrides: str) -> config.Experiment:
    experiment, _ = config.load_experiment(
        "examples/digits_cnn.toml",
        ["steps=6", "log_every=2", "eval_every=3", "sweep.seeds=[0]", "data.kwargs.pairs=200", *SGD, *overrides],
    )
    return experiment


def test_your_own_module_trains_on_cuda_and_its_compiled_blocks_equal_eager():
    # examples/digits_cnn.py through torch.func; its batches come from CUDA generators, as SimCLR's do
    with default_float64():
        eager = train(cnn(), CUDA)
        compiled = train(cnn("compile=true"), CUDA)
    assert bool(eager["alive"].all()) and bool(torch.isfinite(losses(eager)).all())
    assert_same(eager, compiled, RTOL64, ATOL64)
