"""Every task × every τ mode: a member of the population ends where it ends trained alone.

The population computes every member at once (stacked layers, closed-form ∂L/∂logit_scale, a masked
optimizer); ``train_reference`` trains one member as a plain script does (``nn.Module``, ``torch.optim``,
autograd through a one-member ``Temperature``). In float64 the two agree to rounding, so a member
trained at the wrong τ (a schedule read as a constant, the wrong τ learning rate, a missing gradient
reversal) shows at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import default_float64

from tau_lab import config, engine
from tau_lab.tasks import clip, distill, module, pairs, quadrants, simclr
from tau_lab.teacher import load_teacher
from tau_lab.temperature import MODES, Temperature

CPU = torch.device("cpu")
COMMON = [
    "steps=5",
    "log_every=1",
    "eval_every=5",
    "sweep.tau=[0.2]",
    "sweep.seeds=[1]",
    "optimizer.name='adamw'",
    "optimizer.lr=0.01",
    "optimizer.tau_lr=0.05",
    "optimizer.tau_weight_decay=0.1",
]
DIGITS = ["data.batch_size=16", "model.hidden=8"]
TEACHER = ["model.teacher.hidden=[16]", "model.teacher.steps=30", "model.teacher.lr=1e-2"]
# task: (experiment, overrides, train_reference, the reference's parameter name → the population's)
TASKS = {
    "quadrants": ("quadrants", [], quadrants.train_reference, {"0.weight": "w1", "1.weight": "w2"}),
    "simclr": ("digits_simclr", [*DIGITS, "model.features=8", "data.probe_steps=2"], simclr.train_reference, {}),
    "clip": ("digits_clip", [*DIGITS, "model.width=8", "sweep.caption_noise=[0.2]"], clip.train_reference, {}),
    # same-digit pairs left out of the loss: the −∞ logits after the division by τ, in both
    "clip_masked": (
        "digits_clip",
        [*DIGITS, "model.width=8", "sweep.caption_noise=[0.2]", "sweep.mask_false_negatives=[true]"],
        clip.train_reference,
        {},
    ),
    # SigLIP's sigmoid loss with its learnable bias (a parameter of both, compared like the towers')
    "clip_siglip": (
        "digits_clip",
        [*DIGITS, "model.width=8", "sweep.caption_noise=[0.2]", "sweep.objective=['siglip']"],
        clip.train_reference,
        {},
    ),
    "pairs_clip": (None, ["model.loss='clip'", "model.hidden=6"], pairs.train_reference, {}),
    "pairs_info_nce": (None, ["model.loss='info_nce'"], pairs.train_reference, {}),
    # any nn.Module through torch.func: the towers of tests/test_module_task.py, NT-Xent over both sides
    "module": ("module.toml", ["model.loss='nt_xent'"], module.train_reference, {}),
    "module_siglip": ("module.toml", ["model.loss='siglip'"], module.train_reference, {}),
    "distill": (
        "digits_kd",
        [
            *DIGITS,
            *TEACHER,
            "sweep.tau=[4.0]",
            "sweep.alpha=[0.7]",
            "sweep.labeled_fraction=[0.5]",
            "sweep.t2_scaling=[true]",
        ],
        None,
        {},
    ),
}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("pairs") / "pairs.npz"
    a = rng.normal(size=(60, 5))
    np.savez(path, a=a, b=a @ rng.normal(size=(5, 4)) + 0.1 * rng.normal(size=(60, 4)), labels=np.arange(60) % 3)
    return path


@pytest.fixture(scope="module", autouse=True)
def teacher_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAU_LAB_CACHE", str(tmp_path_factory.mktemp("teachers")))
        yield


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# log_every = 5: steps 1–4 run as one block (block_steps), the per-step losses are not logged
@pytest.mark.parametrize("log_every", [1, 5])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("task", TASKS)
def test_population_member_equals_its_reference_run(task, mode, log_every, pairs_file, tmp_path):
    name, overrides, train_reference, names = TASKS[task]
    if name is None:
        toml = tmp_path / "pairs.toml"
        toml.write_text(f'task = "pairs"\n[data]\npath = "{pairs_file}"\nbatch_size = 16\n')
        name = str(toml)
    elif name == "module.toml":
        toml = tmp_path / name
        factories = '[model]\nfactory = "test_module_task:towers"\n[data]\nfactory = "test_module_task:pairs"\n'
        toml.write_text(f'task = "module"\n{factories}batch_size = 8\n')
        name = str(toml)
    train_reference = train_reference or distill.train_reference
    exp, _ = config.load_experiment(name, [*COMMON, *overrides, f"sweep.tau_mode=['{mode}']", f"log_every={log_every}"])
    (row,) = config.members(exp)
    if task == "distill":  # trained (in float32) and cached before the float64 runs load it
        load_teacher(exp.model.teacher, exp.data.test_fraction, exp.data.split_seed, exp.data.validation_fraction)
    with default_float64():
        population = engine.train_population(exp, [row], CPU)
        reference = train_reference(exp, row)
        t = exp.temperature
        start = Temperature([row["tau_init"]], mode, t.tau_min, t.tau_max, t.period).logit_scale[0].item()
    for ref_name, p in reference.model.named_parameters():
        pop_name = names.get(ref_name, ("student." if task == "distill" else "") + ref_name)
        assert _relative(population["params"][pop_name][0], p.detach()) < 1e-9, pop_name
    scale = population["params"]["logit_scale"][0]
    assert scale.item() == pytest.approx(reference.logit_scale.item(), rel=1e-9, abs=1e-12)
    assert (scale.item() != start) == (mode in ("learnable", "ctkd"))  # trained, or left where it started
    log = population["log"].frame()
    losses = log[log.metric == "loss"].sort_values("step")["value"].to_numpy()[: exp.steps]
    logged = reference.losses[:: exp.log_every]
    assert losses[: len(logged)] == pytest.approx(logged, rel=1e-6)  # the log holds float32
