"""The run report: files, a self-contained HTML, and findings that match the members table."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tau_lab import config, engine, report, results
from tau_lab.cli import app
from tau_lab.errors import UserError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp, _ = config.load_experiment(
        "quadrants", ["steps=60", "log_every=10", "eval_every=30", "sweep.seeds=[0, 1]", "sweep.tau=[0.5, 0.01]"]
    )
    path, _ = engine.run_sweep(exp, "quadrants", root=tmp_path_factory.mktemp("results"))
    return path


@pytest.fixture(scope="module")
def written(run_dir: Path) -> tuple[Path, Path]:
    return report.write_report(run_dir)


def test_report_files(run_dir: Path, written: tuple[Path, Path]) -> None:
    md_path, html_path = written
    assert (md_path, html_path) == (run_dir / "report.md", run_dir / "report.html")
    md = md_path.read_text()
    assert (run_dir / "config.toml").read_text().strip() in md  # the resolved config, verbatim
    assert f"```sh\ntau-lab sweep {run_dir / 'config.toml'}\n```" in md
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (run_dir / link).is_file()
    assert len(re.findall(r"!\[", md)) == 4  # training curves, final metrics, planes, quadrants


def test_html_is_self_contained(written: tuple[Path, Path]) -> None:
    text = written[1].read_text()
    assert text.count("data:image/png;base64,") == 4
    sources = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in text and "<script" not in text and "url(" not in text
    assert "<table>" in text and "fixed" in text


def test_findings_match_the_members_table(run_dir: Path) -> None:
    members = results.read_table(run_dir, "members")
    sentences = report.findings(members)
    ok = members[members["status"] == "ok"]
    # best uniformity, computed independently
    uniformity = ok.groupby(["tau_mode", "tau_init"])["uniformity"]
    mode, tau = uniformity.mean().idxmin()
    best = next(s for s in sentences if s.startswith("Lowest (best) uniformity"))
    assert f"{uniformity.mean()[(mode, tau)]:.3f} ± {uniformity.std()[(mode, tau)]:.3f}" in best
    assert f"τ = {tau:g}" in best and f"({mode})" in best
    # tolerance from the largest to the smallest fixed τ
    fixed = ok[ok["tau_mode"] == "fixed"].groupby("tau_init")["tolerance"].mean()
    trend = next(s for s in sentences if s.startswith("Same-class similarity"))
    assert (
        f"from {fixed.iloc[-1]:.3f} at τ = {fixed.index[-1]:g} to {fixed.iloc[0]:.3f} at τ = {fixed.index[0]:g}"
        in trend
    )
    assert ("rises" in trend) == (fixed.iloc[0] > fixed.iloc[-1])
    # learnable τ, start → mean end
    learnable = ok[ok["tau_mode"] == "learnable"].groupby("tau_init")["tau"].mean()
    sentence = next(s for s in sentences if s.startswith("Learnable τ"))
    for start, end in learnable.items():
        assert f"{start:g} → {end:.3g}" in sentence
    assert sentences[0] == f"None of the {len(members)} members diverged."


def test_findings_count_diverged_members() -> None:
    members = pd.DataFrame(
        {
            "member": [0, 1, 2, 3],
            "tau_mode": ["fixed"] * 4,
            "tau_init": [0.5, 0.5, 0.001, 0.001],
            "seed": [0, 1, 0, 1],
            "status": ["ok", "ok", "ok", "diverged"],
            "diverged_step": pd.array([None, None, None, 7], dtype="Int64"),
            "uniformity": [-1.0, -1.2, -3.0, float("nan")],
        }
    )
    sentences = report.findings(members)
    assert sentences[0].startswith("1 of 4 members diverged: τ = 0.001 (fixed) seed 1 at step 7")
    # the diverged member's metrics are left out: a single seed at τ = 0.001 shares one seed with τ = 0.5,
    # so no paired interval exists and no best is named
    assert sentences[1] == (
        "Uniformity (lower is better): the lowest setting shares fewer than two finished seeds with every other, "
        "so no interval is possible and no setting is called best (the lowest mean, -3.000, is at τ = 0.001 (fixed))."
    )
    summary = report.summary(members)
    assert summary[["members", "diverged"]].values.tolist() == [[2, 1], [2, 0]]
    assert summary["uniformity"].tolist() == ["-3.000", "-1.100 ± 0.141"]


def test_the_members_table_never_pools_a_grid_axis() -> None:
    """Two caption-noise levels × 2 seeds: a row per level, each sd over its own seeds (was pooled over both)."""
    members = pd.DataFrame(
        {
            "member": range(4),
            "tau_mode": ["fixed"] * 4,
            "tau_init": [0.1] * 4,
            "caption_noise": [0.0, 0.3, 0.0, 0.3],
            "seed": [0, 0, 1, 1],
            "status": ["ok"] * 4,
            "diverged_step": pd.array([None] * 4, dtype="Int64"),
            "uniformity": [-3.0, -1.0, -3.2, -1.4],
        }
    )
    summary = report.summary(members)
    assert summary["caption_noise"].tolist() == ["0", "0.3"] and summary["members"].tolist() == [2, 2]
    sd = np.std([-3.0, -3.2], ddof=1), np.std([-1.0, -1.4], ddof=1)
    assert summary["uniformity"].tolist() == [f"-3.100 ± {sd[0]:.3f}", f"-1.200 ± {sd[1]:.3f}"]


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a tau-lab run directory"):
        report.write_report(tmp_path)


def test_markdown_escapes_raw_html_from_user_strings(tmp_path: Path) -> None:
    """The experiment folder, the run directory's name and the description reach report.md escaped."""
    run_dir = tmp_path / "exp<script>alert(1)<\\script>" / "run<img src=x onerror=alert(2)>"
    members = pd.DataFrame(
        {
            "member": [0, 1],
            "tau_mode": ["fixed", "fixed"],
            "tau_init": [0.5, 0.1],
            "seed": [0, 0],
            "status": ["ok", "ok"],
            "diverged_step": pd.array([None, None], dtype="Int64"),
            "uniformity": [-1.0, -2.0],
        }
    )
    results.write_table(members, run_dir / "members")
    description = "<script>alert(3)</script> and a ``` fence"
    (run_dir / "config.toml").write_text(f'name = "<b>bold</b>"\ndescription = "{description}"\ntask = "quadrants"\n')
    md_path, html_path = report.write_report(run_dir, [])
    md = md_path.read_text()
    prose = re.sub(r"(`{3,})\w*\n.*?\n\1\n", "", md, flags=re.S)  # fenced blocks are verbatim text
    assert "tau-lab sweep" not in prose and "[search" not in prose
    for raw in ("<script", "<img", "<b>", "</script"):
        assert raw not in prose, raw
    assert "&lt;script>alert(3)&lt;/script> and a ``` fence" in md
    assert "# exp&lt;script>alert(1)<\\script>: run run&lt;img src=x onerror=alert(2)>" in md
    # the config block's fence is longer than the ``` inside it, so the description cannot close it
    assert "````toml\n" + (run_dir / "config.toml").read_text().rstrip() + "\n````" in md
    html_text = html_path.read_text()
    assert "<script" not in html_text and "<img src=x" not in html_text and "<b>bold" not in html_text


def hand_made_search(root: Path) -> Path:
    """A search directory by hand: a batch's config.toml with its [search] table and a trials table."""
    directory = root / "kd" / "search-kd"
    (directory / "batch-1").mkdir(parents=True)
    (directory / "batch-1" / "config.toml").write_text(
        'task = "distill"\n[search]\nobjective = "accuracy"\ndirection = "maximize"\n[search.space]\n'
        "tau = { low = 1.0, high = 20.0, log = true }\nalpha = { low = 0.0, high = 1.0 }\n"
    )
    trials = pd.DataFrame(
        {
            "number": range(5),
            "value": [0.81, 0.93, None, 0.88, 0.90],
            "state": ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"],
            "params_tau": [1.5, 4.0, 9.0, 2.0, 12.0],
            "params_alpha": [0.1, 0.9, 0.5, 0.6, 0.3],
        }
    )
    results.write_table(trials, directory / "trials", csv=True)
    return directory


def test_report_of_a_search_directory(tmp_path: Path) -> None:
    directory = hand_made_search(tmp_path)
    result = CliRunner().invoke(app, ["report", str(directory)])
    assert result.exit_code == 0, result.output  # was: "members.parquet is missing"
    md = (directory / "report.md").read_text()
    assert md.startswith("# kd search\n")
    assert "Objective: accuracy (maximize); 5 trials: 4 complete, 1 pruned." in md
    assert "Best trial 1: accuracy = 0.93 with tau = 4, alpha = 0.9." in md
    # the completed trials, best first; the pruned one has no value and is not ranked
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [1, 4, 3, 0]
    assert len(re.findall(r"!\[", md)) == 3  # history, importances, the searched space
    assert (directory / "report.html").read_text().count("data:image/png;base64,") == 3
