"""A wheel carries the studies: installed elsewhere, ``tau-lab`` lists them and runs one (about 10 s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
NOT_SHIPPED = shutil.ignore_patterns(
    ".git", ".venv", "results", "build", "dist", "*.egg-info", "__pycache__", ".*cache"
)


def test_a_wheel_installed_elsewhere_finds_and_runs_the_studies(tmp_path):
    source = tmp_path / "source"  # a copy: building leaves build/ and *.egg-info behind
    shutil.copytree(REPO, source, symlinks=True, ignore=NOT_SHIPPED)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # no build isolation: setuptools comes from this environment, no network needed
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheels"), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "wheels").glob("tau_lab-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)

    elsewhere = tmp_path / "elsewhere"  # no experiments/ folder here, and no checkout above it
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "TAU_LAB_CACHE": str(tmp_path / "cache")}

    def tau_lab(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tau_lab", *args]
        return subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)

    where = subprocess.run(
        [sys.executable, "-c", "import tau_lab; print(tau_lab.__file__)"], cwd=elsewhere, env=env, capture_output=True
    )
    assert Path(where.stdout.decode().strip()).is_relative_to(site)  # the installed copy, not this checkout

    listed = tau_lab("experiments")
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines()}
    assert names == {path.stem for path in (REPO / "experiments").glob("*.toml")}

    swept = tau_lab("sweep", "quadrants", "--steps", "5", "--results", "R", "--quiet")
    assert swept.returncode == 0, swept.stderr
    (members,) = (elsewhere / "R" / "quadrants").glob("*/members.parquet")
    assert len(pd.read_parquet(members)) == 50 and "50 members, 0 diverged" in swept.stdout
