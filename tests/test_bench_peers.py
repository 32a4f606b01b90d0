"""The benchmark's peers (benchmarks/peers.py) train the quadrants model tau-lab trains: same loss per step.

The JAX anchor and the torch.func peer are written independently of tau-lab's closed-form step; their
per-step losses must equal each member's standalone run (``train_reference``) on the same data stream, or
``make bench`` would compare against another model. In float64, so that equality checks the math (a large
learning rate and weight decay make any difference in the model or the update show within 12 steps). JAX is
optional: its test is skipped without it.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import default_float64

from tau_lab import config
from tau_lab.tasks.quadrants import train_reference

PEERS = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"


def _peers():
    spec = importlib.util.spec_from_file_location("bench_peers", PEERS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _experiment(steps: int, overrides: tuple[str, ...] = ()):
    experiment, _ = config.load_experiment(
        "quadrants",
        [f"steps={steps}", "sweep.tau=[0.99,0.05,0.001]", 'sweep.tau_mode=["fixed"]', "sweep.seeds=[0, 3]", *overrides],
    )
    return experiment, config.members(experiment)


def _reference_losses(experiment, rows) -> np.ndarray:
    return np.array([train_reference(experiment, r).losses for r in rows]).T  # [steps, K]


@pytest.mark.parametrize("overrides", [(), ("optimizer.weight_decay=0.5", "optimizer.lr=0.05")])
def test_torch_func_peer_matches_the_reference_losses(overrides):
    experiment, rows = _experiment(12, overrides)
    with default_float64():
        losses = _peers().TorchFunc(experiment, rows, torch.device("cpu"), compile=False).run().numpy()
        reference = _reference_losses(experiment, rows)
    assert losses.shape == (12, 6)
    assert losses.dtype == np.float64
    np.testing.assert_allclose(losses, reference, rtol=1e-9, atol=1e-9)
    # the weights move: a peer that skipped the update would still match the first loss only
    assert np.abs(reference[-1] - reference[0]).max() > 1e-3


# JAX runs in a child process: loaded in a pytest worker, its threads would make the os.fork of other tests
# (multiprocessing in test_distributed, test_search_postgres) unsafe
JAX_CHILD = """
import importlib.util, json, sys
import jax, numpy as np, torch
sys.path.insert(0, "tests")
from conftest import default_float64
from test_bench_peers import PEERS, _experiment, _reference_losses
spec = importlib.util.spec_from_file_location("bench_peers", PEERS)
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)
experiment, rows = _experiment(12, ("optimizer.weight_decay=0.5", "optimizer.lr=0.05"))
with default_float64(), jax.enable_x64(True):
    losses = peers.Jax(experiment, rows).run()
    reference = _reference_losses(experiment, rows)
print(json.dumps({"dtype": str(losses.dtype), "shape": losses.shape, "worst": float(np.abs(losses - reference).max()),
                  "moved": float(np.abs(reference[-1] - reference[0]).max())}))
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is optional (pip install -e .[bench])")
def test_jax_anchor_matches_the_reference_losses():
    root = PEERS.parent.parent
    out = subprocess.run([sys.executable, "-c", JAX_CHILD], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dtype"] == "float64" and result["shape"] == [12, 6]
    assert result["worst"] <= 1e-9 and result["moved"] > 1e-3, result


def test_peers_refuse_what_they_do_not_implement():
    experiment, _ = _experiment(5)
    learnable = [{"member": 0, "seed": 0, "tau_init": 0.1, "tau_mode": "learnable"}]
    with pytest.raises(ValueError, match="fixed"):
        _peers().member_data(experiment, learnable)
