"""A ``tau-lab sweep`` process: what it imports and how many threads it trains with (issue 11, items 3 and 4).

The sweep runs in a fresh interpreter (``sys.modules`` of the test process already holds everything), through
the CLI's ``main`` as ``tau-lab sweep`` does, summary tables included; the child then reports which heavy
libraries it imported.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNUSED = ("seaborn", "scipy", "optuna", "matplotlib", "sklearn", "jax")  # a quadrants sweep needs none of them
CHILD = """
import json, sys
from tau_lab.cli import main
sys.argv, code = ["tau-lab", *sys.argv[1:]], None
try:
    main()
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(UNUSED))}))
""".replace("UNUSED", repr(UNUSED))


def _sweep(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[dict, dict]:
    base = {k: v for k, v in os.environ.items() if k != "TAU_LAB_THREADS"}
    command = [sys.executable, "-c", CHILD, "sweep", "quadrants", "--steps", "3", "--set", "sweep.seeds=[0]"]
    out = subprocess.run(
        [*command, "--results", str(tmp_path), *args],
        cwd=ROOT,
        env=base | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    (run_dir,) = (tmp_path / "quadrants").iterdir()
    return report, json.loads((run_dir / "env.json").read_text())


def test_a_quadrants_sweep_imports_no_plotting_stats_or_search_library_and_trains_on_one_thread(tmp_path):
    report, environment = _sweep(tmp_path)
    assert report == {"code": 0, "loaded": []}
    assert environment["cpu_threads"] == 1  # the default, whatever torch's own (the machine's cores)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="torch caps threads at the cores")
def test_the_thread_count_is_set_by_the_environment_and_recorded(tmp_path):
    report, environment = _sweep(tmp_path, env={"TAU_LAB_THREADS": "2"})  # --threads is the same typer option
    assert report["code"] == 0
    assert environment["cpu_threads"] == 2


def test_zero_threads_is_a_usage_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tau_lab", "sweep", "quadrants", "--threads", "0", "--results", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--threads" in out.stderr
    assert not (tmp_path / "quadrants").exists()
