"""The command line: output, one-line errors with exit code 2, and nothing lost on bad input."""

from __future__ import annotations

import io
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tau_lab import config, engine
from tau_lab.cli import app, print_frame, summary_columns
from tau_lab.errors import UserError

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
        (["sweep", "quadrants", "--set", "steps=[1,"], "steps = '[1,': Input should be a valid integer"),
        # a command line's byte that is not UTF-8 reaches Python as a lone surrogate (U+DC80 + the byte)
        (["sweep", "quadrants", "--set", "description=caf\udce9"], "byte 0xe9 at position 15 is not UTF-8 text"),
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
    assert "50 members, 0 diverged" in result.stdout  # 5 τ × fixed/learnable × 5 seeds
    run_dir = next((tmp_path / "quadrants").iterdir())
    before = pd.read_parquet(run_dir / "metrics.parquet")
    again = run("sweep", "quadrants", "--resume", str(run_dir), "--quiet")
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "metrics.parquet"), before)
    # EXPERIMENT is optional with --resume: the run records its own
    alone = run("sweep", "--resume", str(run_dir), "--quiet")
    assert alone.exit_code == 0, alone.output
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "metrics.parquet"), before)
    other = run("sweep", "digits_kd", "--resume", str(run_dir), "--quiet")
    assert other.exit_code == 2 and other.stderr.count("\n") == 1
    assert f"--resume {run_dir}: that run is of experiment 'quadrants', not 'digits_kd'" in other.stderr
    assert sorted(p.name for p in (tmp_path / "quadrants").iterdir()) == [run_dir.name]  # nothing else written


def test_sweep_needs_an_experiment_or_resume():
    result = run("sweep")
    assert result.exit_code == 2 and "give an EXPERIMENT" in result.stderr and result.stderr.count("\n") == 1


def test_cuda_without_a_device_is_a_clear_error(tmp_path):
    import torch

    from tau_lab import engine

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device is available"):
            engine.resolve_device("cuda")
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
    assert any(line.startswith("quadrants ") and "quadrants study" in line for line in result.stdout.splitlines())


def test_a_study_in_the_working_directory_wins(tmp_path, monkeypatch):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quadrants.toml").write_text('description = "mine"\ntask = "quadrants"\nsteps = 7\n')
    monkeypatch.chdir(tmp_path)
    assert [line.split() for line in run("experiments").stdout.splitlines() if line.startswith("quadrants ")] == [
        ["quadrants", "mine"]
    ]
    spec, path = config.load_experiment("quadrants")
    assert spec.steps == 7 and path == Path("experiments/quadrants.toml")
    assert config.load_experiment("digits_kd")[1] == config.EXPERIMENTS_DIR / "digits_kd.toml"  # the shipped one


def test_user_facing_text_names_the_studies_not_seed_files():
    """Help, errors and study descriptions speak of the studies, not of "seed 001" (a file users do not have)."""
    texts = [run("--help").stdout, run("experiments").stdout]
    for command in ("table", "sweep", "experiments", "plot", "report", "search"):
        help_text = run(command, "--help").stdout
        texts.append(help_text.split("Grid axes beside")[0])  # the axes' descriptions belong to the tasks
    texts += [path.read_text() for path in config.known_experiments().values()]
    texts.append(run("sweep", "nosuchstudy").stderr)
    for text in texts:
        assert not re.search(r"seed[ _-]?0\d\d", text, re.IGNORECASE), text


def test_only_user_errors_are_one_line_an_internal_value_error_is_a_traceback(tmp_path, monkeypatch):
    from tau_lab import engine

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(engine, "run_sweep", broken)
    result = run("sweep", "quadrants", "--steps", "2", "--results", str(tmp_path), "--quiet")
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "error: an internal bug" not in result.output


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"steps = = 3", "not valid TOML: Invalid value (at line 1, column 9)"),
        (None, "not found: no file"),
        # é saved as latin-1: one byte 0xe9, not UTF-8's two; line 1 is 19 bytes with its newline
        ("task = 'quadrants'\ndescription = 'café'\n".encode("latin-1"), "byte 0xe9 at line 2, column 19 (byte 37)"),
    ],
)
def test_unreadable_experiment_files_are_one_line(tmp_path, data, message):
    path = tmp_path / "mine.toml"
    if data is not None:
        path.write_bytes(data)
    result = run("sweep", str(path), "--results", str(tmp_path))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stderr.count("\n") == 1 and message in result.stderr and str(path) in result.stderr


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["sweep", "--help"]])
def test_version_and_help_import_no_heavy_library(args):
    heavy = ["seaborn", "matplotlib", "scipy", "optuna", "tau_lab.plots", "tau_lab.figures", "tau_lab.engine"]
    if args != ["sweep", "--help"]:  # the grid axes in sweep's help come from the tasks
        heavy += ["torch", "pandas", "sqlalchemy"]
    code = (
        "import sys\nfrom tau_lab import cli\ntry:\n    cli.app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {heavy!r} if m in sys.modules], file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_a_table_fits_the_terminal(monkeypatch, capsys):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: a terminal, whatever pytest's stdout is
    monkeypatch.setenv("COLUMNS", "100")
    frame = pd.DataFrame({f"metric_{i}": [1.0 / (i + 1), 2.0] for i in range(16)})
    print_frame(frame, title="wide")
    lines = capsys.readouterr().out.splitlines()
    assert max(len(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in lines) <= 100
    monkeypatch.setenv("TTY_COMPATIBLE", "0")  # a file or a pipe: the natural width, no cell wrapped
    print_frame(frame, title="wide")
    lines = capsys.readouterr().out.splitlines()
    assert "metric_15" in lines[2] and len(lines) == 7  # title, 3 rules, header, 2 rows


def test_the_summary_shows_the_tasks_own_axes_and_headline_metrics():
    distill = pd.DataFrame(
        {
            "member": [0, 1],
            "tau_mode": ["fixed"] * 2,
            "tau_init": [4.0] * 2,
            "alpha": [0.5, 0.9],
            "t2_scaling": [True, False],
            "labeled_fraction": [0.05, 0.05],
            "seed": [0, 0],
            "status": ["ok"] * 2,
            "loss": [0.1, 0.2],
            "tau": [4.0] * 2,
            "accuracy": [0.9, 0.8],
            "ece": [0.01, 0.02],
            "grad_norm": [1.0, 2.0],
        }
    )
    assert summary_columns("distill", distill) == [
        *["member", "tau_mode", "tau_init", "alpha", "t2_scaling"],  # labeled_fraction has one value: not shown
        *["seed", "status", "loss", "tau", "accuracy", "ece"],
    ]
    pairs = pd.DataFrame({"member": [0], "tau_mode": ["fixed"], "recall_a2b": [0.5], "recall_b2a": [0.4], "x": [1]})
    assert summary_columns("pairs", pairs) == ["member", "tau_mode", "recall_a2b", "recall_b2a"]


def test_help_lists_only_working_commands():
    result = run("--help")
    for command in ("table", "sweep", "experiments"):
        assert command in result.stdout


def test_ctrl_c_prints_the_command_that_resumes_and_exits_130(tmp_path):
    # one seed and 200,000 steps: long enough to interrupt, while the index stream (O(steps) per seed) builds in
    # about a second, so a loaded machine does not stretch the start past the wait below
    command = [sys.executable, "-m", "tau_lab", "sweep", "quadrants", "--steps", "200000", "--set", "sweep.seeds=[0]"]
    command.append("--quiet")
    process = subprocess.Popen(
        [*command, "--results", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("quadrants/*/config.toml")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # training
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    (run_dir,) = (tmp_path / "quadrants").iterdir()  # the run, whole; no hidden staging folder left
    assert stderr.strip().splitlines() == [f"interrupted: resume with: tau-lab sweep --resume {run_dir}"]
    assert {"config.toml", "env.json"} <= {p.name for p in run_dir.iterdir()}
    assert config.load_experiment(str(run_dir / "config.toml"))[0].steps == 200_000  # what --resume reads


# ``tau-lab`` whose quadrants steps take 50 ms each from step 20 on, touching $MARKER: a window to stop it in
SLOW_FROM_STEP_20 = """
import os, pathlib, sys, time
from tau_lab.tasks.quadrants import Quadrants
real_batches = Quadrants.batches
def batches(task, start, n):
    if start >= 20:
        pathlib.Path(os.environ["MARKER"]).touch()
        time.sleep(0.05)
    return real_batches(task, start, n)
Quadrants.batches = batches
from tau_lab.cli import main
main()
"""


def test_sigterm_checkpoints_prints_the_resume_command_exits_143_and_the_resumed_run_is_exact(tmp_path):
    small = ["steps=60", "log_every=10", "eval_every=20", "checkpoint_every=0", "sweep.tau=[0.05, 0.5]"]
    small.append("sweep.seeds=[0]")
    args = ["sweep", "quadrants", *(arg for item in small for arg in ("--set", item)), "--quiet"]
    env = os.environ | {"MARKER": str(tmp_path / "training"), "OMP_NUM_THREADS": "1"}  # one thread, as the tests
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_FROM_STEP_20, *args, "--results", str(tmp_path / "cut")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "training").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # what Slurm, Kubernetes and `timeout` send
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    (run_dir,) = (tmp_path / "cut" / "quadrants").iterdir()
    assert stderr.strip().splitlines() == [f"terminated: resume with: tau-lab sweep --resume {run_dir}"]
    stopped_at = torch.load(run_dir / "checkpoints" / "chunk-0.pt", weights_only=True)["step"]
    assert 20 < stopped_at < 60  # the step it was in, not the end
    resumed = run("sweep", "--resume", str(run_dir), "--quiet")
    assert resumed.exit_code == 0, resumed.output
    _, full = engine.run_sweep(config.load_experiment("quadrants", small)[0], "quadrants", root=tmp_path / "full")
    for name in ("members", "metrics", "embeddings"):
        pd.testing.assert_frame_equal(pd.read_parquet(run_dir / f"{name}.parquet"), full[name])


def test_results_go_to_tau_lab_results_when_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sweep", "quadrants", "--steps", "2", "--quiet"], env={"TAU_LAB_RESULTS": "elsewhere"})
    assert result.exit_code == 0, result.output
    assert [p.parent.parent.name for p in (tmp_path / "elsewhere").glob("*/*/config.toml")] == ["quadrants"]
    assert not (tmp_path / "results").exists()
