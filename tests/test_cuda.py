"""The engine on a CUDA device: the same numbers as on the CPU, finite bf16 losses at τ = 0.001, the compile path.

Marked ``cuda`` and skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs them (``pytest -m cuda``).
CUDA matmuls here run in full float32 (TF32 is off by default for matmuls), so CPU and CUDA differ by float32
rounding only: after a few steps, by about 1e-6 relative; the tolerances leave a margin of ~100x.

The digits task compared is ``digits_kd``: its batches come from CPU generators, so both devices see the same
images. SimCLR and CLIP draw their batches from generators on the population's device, whose streams differ
between CPU and CUDA by design (a CUDA run is reproducible on CUDA).
"""

import pytest
import torch

from tau_lab import config, engine

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TEACHER = ["model.teacher.hidden=[16]", "model.teacher.steps=30", "model.teacher.lr=1e-2"]  # trains in a moment
RTOL, ATOL = 1e-4, 1e-5


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
        torch.testing.assert_close(cuda["params"][name].cpu(), p, rtol=rtol, atol=atol, msg=name)
    torch.testing.assert_close(losses(cuda), losses(cpu), rtol=rtol, atol=atol)
    assert torch.equal(cuda["alive"].cpu(), cpu["alive"])


@pytest.mark.parametrize("make", [quadrants, digits_kd], ids=["quadrants", "digits_kd"])
def test_a_population_on_cuda_equals_the_same_population_on_the_cpu(make):
    experiment = make()
    cpu, cuda = train(experiment, CPU), train(experiment, CUDA)
    assert bool(cpu["alive"].all())  # every member trained: the comparison covers all of them
    assert_same(cpu, cuda)
    # the weights moved: equal starting points alone would not pass this
    start = train(make("steps=1"), CPU)
    assert not torch.allclose(start["params"][next(iter(start["params"]))], cpu["params"][next(iter(cpu["params"]))])


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
    eager = train(quadrants(), CUDA)
    compiled = train(quadrants("compile=true"), CUDA)
    assert_same(eager, compiled, rtol=1e-4, atol=1e-5)
