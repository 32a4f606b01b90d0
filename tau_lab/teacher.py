"""The distillation teacher: a wide MLP on scikit-learn's digits, trained once and cached on disk.

A teacher is defined by everything that shapes its weights: the data split (test and validation
fractions, seed: the teacher trains on the students' training split only, never on the validation
images the students' T and α are chosen on, nor on the test images), the widths, the
optimizer, the steps, the seed and the version of the code that trains it. The SHA-256 of those,
as canonical JSON, names its file ``<cache>/teacher-<hash>.pt``: the same definition loads that
file and trains nothing; any change trains and caches a new teacher. The cache is
``$TAU_LAB_CACHE`` when set, else ``$XDG_CACHE_HOME/tau-lab`` (``~/.cache/tau-lab`` by default): one
cache per user, shared by every results folder.

Teachers train on the CPU in float32 whatever device the students use, so a cached teacher is
the same file on every machine. Training one takes about a minute: it says so on stderr, with the
file it will be cached in, and shows a progress bar when stderr is a terminal.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from tqdm import tqdm

import tau_lab
from tau_lab import results
from tau_lab.data.digits import load_digits

# Bump when train_teacher would turn the same definition into different weights.
TRAINING_CODE_VERSION = 1
PIXELS, CLASSES = 64, 10  # 8×8 digits, ten classes


class TeacherSpec(BaseModel):
    """``[model.teacher]``: the teacher's architecture and its training."""

    model_config = ConfigDict(extra="forbid")
    hidden: list[int] = Field([1024], min_length=1, description="widths of the hidden ReLU layers")
    steps: int = Field(1000, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0


class Split(NamedTuple):
    """The digits in three stratified parts: images ``[N, 64]`` in [0, 1], labels ``[N]``. ``val`` is
    carved from ``load_digits``' training split, so ``train ∪ val`` is that split and ``test`` is untouched."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor


def validation_mask(train_y: Tensor, fraction: float, seed: int) -> Tensor:
    """``train_y [N]`` → ``[N]`` bools: in every class c, ``round(fraction · n_c)`` images drawn by ``seed``
    (0 images when ``fraction`` is 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction = {fraction:g} is not allowed: it must lie in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    val = torch.zeros(len(train_y), dtype=torch.bool)
    for c in range(CLASSES):
        idx = (train_y == c).nonzero().squeeze(1)
        val[idx[torch.randperm(len(idx), generator=g)[: round(fraction * len(idx))]]] = True
    return val


def load_split(test_fraction: float, split_seed: int, validation_fraction: float) -> Split:
    """``load_digits(test_fraction, split_seed)`` with a stratified ``validation_fraction`` of its
    training split set apart (drawn with ``split_seed`` too)."""
    digits = load_digits(test_fraction, split_seed)
    val = validation_mask(digits.train_y, validation_fraction, split_seed)
    x, y = digits.train_x, digits.train_y
    return Split(x[~val], y[~val], x[val], y[val], digits.test_x, digits.test_y)


class Teacher(NamedTuple):
    model: nn.Sequential  # [N, 64] → [N, 10] logits, frozen, on the CPU
    test_accuracy: float
    path: Path  # its cache file
    trained: bool  # trained by this call; False when loaded from the cache


def cache_dir() -> Path:
    """``$TAU_LAB_CACHE``, else ``$XDG_CACHE_HOME/tau-lab``, else ``~/.cache/tau-lab`` (the XDG default)."""
    if os.environ.get("TAU_LAB_CACHE"):
        return Path(os.environ["TAU_LAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tau-lab"


def definition(
    spec: TeacherSpec, test_fraction: float, split_seed: int, validation_fraction: float = 0.0
) -> dict[str, Any]:
    """Everything that defines a teacher's weights (its cache key is the hash of this)."""
    return {
        "split": {"test_fraction": test_fraction, "seed": split_seed, "validation_fraction": validation_fraction},
        "teacher": spec.model_dump(),
        "training_code": TRAINING_CODE_VERSION,
        "tau_lab": tau_lab.__version__,
    }


def teacher_key(spec: TeacherSpec, test_fraction: float, split_seed: int, validation_fraction: float = 0.0) -> str:
    text = json.dumps(definition(spec, test_fraction, split_seed, validation_fraction), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_teacher(spec: TeacherSpec) -> nn.Sequential:
    """``64 → hidden[0] → … → 10`` with ReLUs, initialised as ``nn.Linear`` does under ``spec.seed``.

    A plain module (one teacher, not a population); written out here rather than taken from
    ``tau_lab.tasks.mlp`` so that this module imports without the tasks package.
    """
    widths = [PIXELS, *spec.hidden, CLASSES]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        layers = [m for n_in, n_out in itertools.pairwise(widths) for m in (nn.Linear(n_in, n_out), nn.ReLU())]
    return nn.Sequential(*layers[:-1])


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def train_teacher(spec: TeacherSpec, train_x: Tensor, train_y: Tensor) -> nn.Sequential:
    """Cross-entropy, AdamW, minibatches that walk through seeded permutations of the training set."""
    model = make_teacher(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    g = torch.Generator().manual_seed(spec.seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in tqdm(range(spec.steps), desc="teacher", unit="step", disable=not sys.stderr.isatty(), leave=False):
        if len(order) < spec.batch_size:
            order = torch.cat([order, torch.randperm(len(train_y), generator=g)])
        index, order = order[: spec.batch_size], order[spec.batch_size :]
        loss = F.cross_entropy(model(train_x[index]), train_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval().requires_grad_(False)


def load_teacher(
    spec: TeacherSpec,
    test_fraction: float,
    split_seed: int,
    validation_fraction: float = 0.0,
    cache: Path | None = None,
) -> Teacher:
    """The cached teacher of this definition, trained and cached first if there is none. It trains on
    ``load_split(...).train`` only: the validation images stay unseen, as they do for the students."""
    key = teacher_key(spec, test_fraction, split_seed, validation_fraction)
    path = (cache or cache_dir()) / f"teacher-{key}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        model = make_teacher(spec)
        model.load_state_dict(saved["state_dict"])
        return Teacher(model.eval().requires_grad_(False), saved["test_accuracy"], path, trained=False)
    print(f"training the distillation teacher ({spec.steps} steps), once: it is cached in {path}", file=sys.stderr)
    data = load_split(test_fraction, split_seed, validation_fraction)
    model = train_teacher(spec, data.train_x, data.train_y)
    saved = {
        "definition": json.dumps(definition(spec, test_fraction, split_seed, validation_fraction), sort_keys=True),
        "state_dict": model.state_dict(),
        "test_accuracy": accuracy(model, data.test_x, data.test_y),
        "train_accuracy": accuracy(model, data.train_x, data.train_y),
    }
    results.atomic_write(path, lambda tmp: torch.save(saved, tmp))
    return Teacher(model, saved["test_accuracy"], path, trained=True)
