"""The command line: output, one-line errors with exit code 2, and nothing lost on bad input."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from tau_lab.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), env={"_TYPER_FORCE_DISABLE_TERMINAL": "1", "NO_COLOR": "1"})


def test_table_csv_reproduces_seed_001():
    result = run(
        "table", "--logits", "0.5,0.25,-0.45,-0.1", "--tau", "1,0.5,0.05,0.01", "--target", "0", "--format", "csv"
    )
    assert result.exit_code == 0, result.output
    df = pd.read_csv(io.StringIO(result.stdout))
    assert list(df.tau) == [1, 0.5, 0.05, 0.01]
    z = [0.5, 0.25, -0.45, -0.1]
    for _, row in df.iterrows():
        denominator = sum(math.exp(v / row.tau) for v in z)
        assert row.p0 == pytest.approx(math.exp(z[0] / row.tau) / denominator, rel=1e-9)
        # −log p0 = log(1 + Σ_{j>0} exp((z_j − z_0)/τ)), written with log1p to stay exact near 0
        others = sum(math.exp((v - z[0]) / row.tau) for v in z[1:])
        assert row.cross_entropy == pytest.approx(math.log1p(others), rel=1e-6)
    # the seed's printed cross-entropies, to its four decimals
    assert [round(v, 4) for v in df.cross_entropy] == [0.9986, 0.7214, 0.0067, 0.0]


def test_table_terminal_and_markdown():
    terminal = run("table", "--logits", "2,5,8", "--tau", "5,0.5")
    assert terminal.exit_code == 0
    assert "0.5405" in terminal.stdout  # softmax([0.4, 1.0, 1.6])[2], not the seed's printed 0.7165
    markdown = run("table", "--logits", "2,5,8", "--tau", "5", "--format", "markdown")
    assert markdown.stdout.splitlines()[0].startswith("| tau |")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["table", "--logits", "1,2", "--tau", "0"], "tau = 0 is not allowed"),
        (["table", "--logits", "1,2", "--tau", "-1"], "tau = -1 is not allowed"),
        (["table", "--logits", "1,nan", "--tau", "1"], "--logits"),
        (["table", "--logits", "1,x", "--tau", "1"], "'x' is not a number"),
        (["table", "--logits", "1,2", "--tau", "1", "--target", "5"], "target = 5"),
        (["sweep", "nosuchstudy"], "experiment 'nosuchstudy' not found"),
        (["sweep", "quadrants", "--set", "stepz=3"], "unknown key 'stepz'"),
        (["sweep", "quadrants", "--set", "sweep.tau=[0.1,-0.2]"], "sweep.tau"),
        (["sweep", "quadrants", "--set", "optimizer.lr=0"], "optimizer.lr = 0"),
        (["sweep", "quadrants", "--set", "sweep.tau_mode=['hot']"], "'hot' is not allowed"),
        (["sweep", "quadrants", "--set", "sweep.tau=[0.0001]"], "outside the clamp"),
        (["sweep", "quadrants", "--set", "steps"], "expected key=value"),
        (["sweep", "quadrants", "--resume", "/nonexistent/run"], "not a run directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_config_error_names_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('task = "quadrants"\nsteps = 10\n[optimizer]\nlr = -1\n')
    result = run("sweep", str(path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: optimizer.lr = -1")


def test_debug_shows_the_traceback():
    result = run("--debug", "table", "--logits", "1,2", "--tau", "0")
    assert isinstance(result.exception, ValueError)


def test_sweep_runs_and_resume_of_a_finished_run_changes_nothing(tmp_path):
    result = run("sweep", "quadrants", "--steps", "30", "--set", "log_every=10", "--results", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "10 members, 0 diverged" in result.stdout
    run_dir = next((tmp_path / "quadrants").iterdir())
    before = pd.read_parquet(run_dir / "metrics.parquet")
    again = run("sweep", "quadrants", "--resume", str(run_dir), "--quiet")
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "metrics.parquet"), before)


def test_cuda_without_a_device_is_a_clear_error(tmp_path):
    import torch

    result = run("sweep", "quadrants", "--steps", "2", "--device", "cuda", "--results", str(tmp_path), "--quiet")
    if torch.cuda.is_available():
        assert result.exit_code == 0
    else:
        assert result.exit_code == 2
        assert "no CUDA device is available" in result.stderr
        assert not (tmp_path / "quadrants").exists()  # nothing half-written


def test_experiments_lists_the_studies():
    result = run("experiments")
    assert result.exit_code == 0
    assert any(line.startswith("quadrants ") and "Seed 001" in line for line in result.stdout.splitlines())


def test_help_lists_only_working_commands():
    result = run("--help")
    for command in ("table", "sweep", "experiments"):
        assert command in result.stdout
