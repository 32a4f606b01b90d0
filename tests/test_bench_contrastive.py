"""benchmarks/bench_contrastive.py counts a step's FLOPs from the shapes (``step_flops``): that count must be
the one torch's own ``FlopCounterMode`` makes of a real ``task.step`` (forward and backward), and the one its
recorder of matrix products makes, or its GFLOP/s would be of another step."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tau_lab import config
from tau_lab.tasks import TASKS

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its neighbour ``common``
    try:
        spec = importlib.util.spec_from_file_location("bench_contrastive", BENCHMARKS / "bench_contrastive.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.parametrize(
    ("study", "overrides"),
    [
        ("digits_simclr", ["data.batch_size=6", "model.hidden=9", "model.features=5", "model.projection=3"]),
        ("digits_clip", ["data.batch_size=6", "model.hidden=9", "model.width=5", "model.embed_dim=3"]),
        ("digits_clip", ["data.batch_size=8", "sweep.mask_false_negatives=[true, false]"]),
    ],
)
def test_step_flops_counted_from_shapes_equal_torchs_count(study, overrides):
    bench = _bench()
    experiment, _ = config.load_experiment(
        study, ["sweep.tau=[0.1, 0.5]", "sweep.seeds=[0]", 'device="cpu"', *overrides]
    )
    rows = config.members(experiment)
    task = TASKS[experiment.task](experiment, rows, torch.device("cpu"))
    tau = torch.full((len(rows),), 0.2)
    counter, recorder = FlopCounterMode(display=False), bench.MatmulShapes()
    with counter, recorder:
        task.step(task.params, tau, task.batch(0))
    expected = len(rows) * bench.step_flops(experiment)
    assert counter.get_total_flops() == expected
    assert sum(2 * b * m * k * n for b, m, k, n in recorder.shapes) == expected
