"""Nothing leaked, nothing written where it should not be: passwords, escaping names, file modes,
run directories that appear whole, and one line for every refusal of the file system."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tau_lab import cli, results
from tau_lab.errors import UserError

PASSWORD = "hunter2-s3cret"
URL = f"postgresql://tau:{PASSWORD}@127.0.0.1:1/db"  # port 1: nothing listens there


def run(*args: str):
    return CliRunner().invoke(cli.app, list(args), env={"_TYPER_FORCE_DISABLE_TERMINAL": "1", "NO_COLOR": "1"})


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.fixture
def umask():
    """Set the process's umask for one test."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def test_redact_hides_the_password_of_every_url():
    text = f"--storage={URL}: and mysql://me:pw@h/x, sqlite:///tmp/a.db, a/path, https://user:tok@example.com/x"
    redacted = results.redact(text)
    assert PASSWORD not in redacted and ":pw@" not in redacted and ":tok@" not in redacted
    assert "postgresql://tau:***@127.0.0.1:1/db: and" in redacted and "sqlite:///tmp/a.db" in redacted
    assert "https://user:***@example.com/x" in redacted  # not a database URL: hidden all the same
    assert results.redact("no url here") == "no url here"


def test_the_recorded_command_line_has_no_password(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["tau-lab", "sweep", "quadrants", "--note", URL])
    result = run("sweep", "quadrants", "--steps", "2", "--results", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    (env,) = tmp_path.glob("quadrants/*/env.json")
    assert json.loads(env.read_text())["command"][-1] == "postgresql://tau:***@127.0.0.1:1/db"
    for path in tree(tmp_path):
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("via", ["option", "environment"])
def test_a_storage_that_cannot_be_opened_is_one_line_without_its_password(tmp_path, via):
    args = ["search", "quadrants_search", "--trials", "1", "--batch", "1", "--results", str(tmp_path)]
    runner = CliRunner()
    if via == "option":
        result = runner.invoke(cli.app, [*args, "--storage", URL])
    else:
        result = runner.invoke(cli.app, args, env={"TAU_LAB_STORAGE": URL})
    assert result.exit_code == 2, result.output
    assert PASSWORD not in result.output
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --storage postgresql://tau:***@127.0.0.1:1/db: cannot open it: ")


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/tau-lab-escaped"])
def test_the_experiment_name_cannot_leave_the_results_folder(tmp_path, name):
    root = tmp_path / "inside" / "results"
    result = run("sweep", "quadrants", "--steps", "2", "--set", f'name="{name}"', "--results", str(root), "--quiet")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"name = '{name}': use letters, digits" in result.stderr
    assert tree(tmp_path) == [] and not Path("/tmp/tau-lab-escaped").exists()


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_result_files_respect_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    result = run("sweep", "quadrants", "--steps", "2", "--set", "checkpoint_every=1", "--results", str(tmp_path))
    assert result.exit_code == 0, result.output
    modes = {path.relative_to(tmp_path): stat.S_IMODE(path.stat().st_mode) for path in tree(tmp_path)}
    assert len(modes) >= 8  # the folders, config, env, the tables, the checkpoint
    for path, mode in modes.items():
        assert mode == (dir_mode if (tmp_path / path).is_dir() else file_mode), path


def test_a_run_directory_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    run_dir = results.new_run_dir("study", tmp_path, {"config.toml": "steps = 1\n", "env.json": "{}\n"})
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml", "env.json"]
    assert [p.name for p in (tmp_path / "study").iterdir()] == [run_dir.name]

    real_write = Path.write_text

    def killed_after_the_first_file(self, text, *args, **kwargs):
        if self.name == "env.json":
            raise KeyboardInterrupt
        return real_write(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", killed_after_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        results.new_run_dir("study", tmp_path, {"config.toml": "steps = 1\n", "env.json": "{}\n"})
    assert [p.name for p in (tmp_path / "study").iterdir()] == [run_dir.name]  # no half-made run, no staging


def test_a_run_id_collision_draws_another_id(tmp_path, monkeypatch):
    monkeypatch.setattr(results.time, "strftime", lambda *args: "20260101-000000")
    draws = iter(["beef", "beef", "beef", "cafe"])
    monkeypatch.setattr(results.secrets, "token_hex", lambda n: next(draws))
    first = results.new_run_dir("study", tmp_path, {"config.toml": "a\n"})
    second = results.new_run_dir("study", tmp_path, {"config.toml": "b\n"})
    assert (first.name, second.name) == ("20260101-000000-beef", "20260101-000000-cafe")
    assert (first / "config.toml").read_text() == "a\n" and (second / "config.toml").read_text() == "b\n"


def test_results_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = run("sweep", "quadrants", "--steps", "2", "--results", str(tmp_path / "file" / "results"), "--quiet")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: cannot write {tmp_path / 'file' / 'results' / 'quadrants'}: ")
    assert "ENOTDIR" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_folder_is_one_line(tmp_path):
    (tmp_path / "results").mkdir(mode=0o555)
    result = run("sweep", "quadrants", "--steps", "2", "--results", str(tmp_path / "results"), "--quiet")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "EACCES" in result.stderr


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    result = run("sweep", "quadrants", "--steps", "2", "--results", str(tmp_path), "--quiet")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    (run_dir,) = (tmp_path / "quadrants").iterdir()
    assert re.match(
        rf"error: cannot write {run_dir}/[\w/.-]+\.parquet: No space left on device \(ENOSPC\)", result.stderr
    )
    assert list(run_dir.glob(".*.parquet.*")) == []  # its temporary file is gone


def test_an_os_error_without_an_errno_is_not_a_user_error(tmp_path):
    def broken(tmp: Path) -> None:
        raise OSError("a library's own complaint")

    with pytest.raises(OSError) as info:
        results.atomic_write(tmp_path / "x", broken)
    assert not isinstance(info.value, UserError)
