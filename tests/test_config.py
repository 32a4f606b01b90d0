"""Experiment files: overrides, validation and the grid of members."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tau_lab import config


def test_quadrants_is_the_blog_posts_study():
    exp, path = config.load_experiment("quadrants")
    assert path.name == "quadrants.toml"
    assert exp.steps == 10_000 and exp.optimizer.name == "sgd" and exp.optimizer.lr == 3e-4
    assert exp.sweep.tau == [0.99, 0.5, 0.05, 0.01, 0.001]
    assert len(config.members(exp)) == 50  # 5 τ × fixed/learnable × 5 seeds


def test_overrides_reach_nested_tables_and_parse_toml_values():
    exp, _ = config.load_experiment(
        "quadrants", ["steps=200", "sweep.tau=[0.1, 0.2]", "sweep.seeds=[3]", "optimizer.name=adamw", "compile=true"]
    )
    assert exp.steps == 200 and exp.compile is True and exp.optimizer.name == "adamw"
    rows = config.members(exp)
    assert [(r["tau_mode"], r["tau_init"], r["seed"]) for r in rows] == [
        ("fixed", 0.1, 3),
        ("fixed", 0.2, 3),
        ("learnable", 0.1, 3),
        ("learnable", 0.2, 3),
    ]


@given(
    taus=st.lists(st.floats(0.001, 1.0), min_size=1, max_size=4, unique=True),
    seeds=st.lists(st.integers(0, 99), min_size=1, max_size=3, unique=True),
    modes=st.lists(st.sampled_from(["fixed", "learnable", "cosine", "linear"]), min_size=1, max_size=4, unique=True),
)
def test_grid_is_the_product_with_one_member_per_schedule(taus, seeds, modes):
    exp = config.validate(
        {
            "task": "quadrants",
            "temperature": {"tau_min": 0.001},
            "sweep": {"tau": taus, "seeds": seeds, "tau_mode": modes},
        },
        "test",
    )
    rows = config.members(exp)
    unscheduled = sum(m in ("fixed", "learnable") for m in modes)
    scheduled = len(modes) - unscheduled
    assert len(rows) == len(seeds) * (unscheduled * len(taus) + scheduled)
    assert [r["member"] for r in rows] == list(range(len(rows)))
    assert exp.temperature.period == exp.steps if scheduled else exp.temperature.period is None


def test_resolved_config_round_trips(tmp_path):
    exp, _ = config.load_experiment("quadrants", ["steps=7", "sweep.tau_mode=['cosine']"])
    path = tmp_path / "config.toml"
    path.write_text(config.dumps(exp))
    again, _ = config.load_experiment(str(path))
    assert again == exp


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"task": "nope"}, "task = 'nope' is not allowed"),
        ({"task": "quadrants", "data": {"points": 3}}, "unknown key 'data.points'"),
        ({"task": "quadrants", "model": {"hidden": 0}}, "model.hidden = 0"),
        ({"task": "quadrants", "steps": "many"}, "steps = 'many'"),
        ({"task": "quadrants", "temperature": {"tau_min": 1.0, "tau_max": 0.5}}, "tau_min = 1 must be smaller"),
        ({"task": "quadrants", "sweep": {"tau": [float("nan")]}}, "sweep.tau"),
        ({"task": "quadrants", "sweep": {"tau": [1e-4], "tau_mode": ["learnable"]}}, "outside the clamp"),
        ({"task": "quadrants", "name": "../../x"}, "name = '../../x': use letters"),
        ({"task": "quadrants", "name": "/tmp/x"}, "name = '/tmp/x': use letters"),
        ({"task": "quadrants", "name": "a/b"}, "name = 'a/b'"),
        ({"task": "quadrants", "name": ".."}, "name = '..'"),
        ({"task": "quadrants", "name": "a..b"}, "no '..'"),
    ],
)
def test_errors_name_the_key_and_value(raw, message):
    with pytest.raises(config.ConfigError, match=None) as info:
        config.validate(raw, "exp.toml")
    text = str(info.value)
    assert text.startswith("exp.toml: ") and message in text and "\n" not in text


def test_a_plain_name_names_the_results_folder():
    assert config.validate({"task": "quadrants", "name": "my-study_2.1"}, "exp.toml").name == "my-study_2.1"
