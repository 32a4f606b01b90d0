"""The run report: files, a self-contained HTML, and findings that match the members table."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tau_lab import config, engine, report, results
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
    assert f"tau-lab sweep {run_dir / 'config.toml'}" in md
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
    # the diverged member's metrics are left out: a single seed at τ = 0.001, so no ± part
    assert "Lowest (best) uniformity -3.000 at τ = 0.001 (fixed)." in sentences
    summary = report.summary(members)
    assert summary[["members", "diverged"]].values.tolist() == [[2, 1], [2, 0]]
    assert summary["uniformity"].tolist() == ["-3.000", "-1.100 ± 0.141"]


def test_not_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a tau-lab run directory"):
        report.write_report(tmp_path)
