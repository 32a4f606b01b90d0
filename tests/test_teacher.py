"""The distillation teacher's cache: one training per definition, a new one when anything changes."""

from __future__ import annotations

import pytest
import torch

from tau_lab import teacher
from tau_lab.teacher import TeacherSpec, cache_dir, load_teacher, teacher_key

TINY = TeacherSpec(hidden=[16], steps=30, lr=1e-2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache through ``$TAU_LAB_CACHE``, and a count of the trainings."""
    monkeypatch.setenv("TAU_LAB_CACHE", str(tmp_path / "teachers"))
    calls = []
    train = teacher.train_teacher

    def counted(*args, **kwargs):
        calls.append(args[0])
        return train(*args, **kwargs)

    monkeypatch.setattr(teacher, "train_teacher", counted)
    return tmp_path / "teachers", calls


def test_env_var_names_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAU_LAB_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("TAU_LAB_CACHE")
    # not under the working directory's results/: one cache per user, the XDG way
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tau-lab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "tau-lab"


def test_second_load_reuses_the_file(cache, capsys):
    directory, calls = cache
    first = load_teacher(TINY, 0.25, 0)
    assert first.trained and len(calls) == 1
    # training says so, once, and where the teacher goes
    assert capsys.readouterr().err.splitlines() == [
        f"training the distillation teacher ({TINY.steps} steps), once: it is cached in {first.path}"
    ]
    assert first.path.parent == directory and first.path.is_file()
    mtime = first.path.stat().st_mtime_ns

    second = load_teacher(TINY, 0.25, 0)
    assert not second.trained and len(calls) == 1  # nothing trained
    assert capsys.readouterr().err == ""
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert second.test_accuracy == first.test_accuracy
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.rand(5, 64)
    torch.testing.assert_close(first.model(x), second.model(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("change", "split"),
    [
        ({"steps": 31}, (0.25, 0)),
        ({"hidden": [17]}, (0.25, 0)),
        ({"hidden": [16, 16]}, (0.25, 0)),
        ({"lr": 2e-3}, (0.25, 0)),
        ({"weight_decay": 0.1}, (0.25, 0)),
        ({"batch_size": 64}, (0.25, 0)),
        ({"seed": 1}, (0.25, 0)),
        ({}, (0.3, 0)),  # another split: the teacher must not have seen the students' test images
        ({}, (0.25, 1)),
        ({}, (0.25, 0, 0.2)),  # a validation split: the teacher must not have seen those images either
    ],
)
def test_changed_definition_trains_a_new_teacher(cache, change, split):
    directory, calls = cache
    original = load_teacher(TINY, 0.25, 0)
    changed = load_teacher(TINY.model_copy(update=change), *split)
    assert changed.trained and len(calls) == 2
    assert changed.path != original.path
    assert sorted(p.name for p in directory.iterdir()) == sorted([original.path.name, changed.path.name])
    assert not load_teacher(TINY, 0.25, 0).trained  # the original stays cached


def test_new_training_code_version_trains_a_new_teacher(cache, monkeypatch):
    _, calls = cache
    old = load_teacher(TINY, 0.25, 0)
    monkeypatch.setattr(teacher, "TRAINING_CODE_VERSION", teacher.TRAINING_CODE_VERSION + 1)
    new = load_teacher(TINY, 0.25, 0)
    assert new.trained and new.path != old.path and len(calls) == 2


def test_key_depends_on_values_not_on_their_order():
    same = TeacherSpec.model_validate({"lr": 1e-2, "seed": 0, "steps": 30, "hidden": [16]})
    assert teacher_key(same, 0.25, 0) == teacher_key(TINY, 0.25, 0)
    assert teacher_key(TINY, 0.25, 0) != teacher_key(TINY, 0.25, 1)


def test_training_is_deterministic_and_learns(tmp_path):
    a = load_teacher(TINY, 0.25, 0, cache=tmp_path / "a")
    b = load_teacher(TINY, 0.25, 0, cache=tmp_path / "b")
    assert a.trained and b.trained
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.test_accuracy == b.test_accuracy > 0.5  # ten classes: chance is 0.1


def test_teacher_trains_on_the_students_train_split_only(cache, monkeypatch):
    seen = []
    train = teacher.train_teacher
    monkeypatch.setattr(teacher, "train_teacher", lambda spec, x, y: seen.append(x) or train(spec, x, y))
    load_teacher(TINY, 0.25, 0, 0.2)
    split = teacher.load_split(0.25, 0, 0.2)
    assert torch.equal(seen[0], split.train_x) and len(seen[0]) == 1347 - 269
