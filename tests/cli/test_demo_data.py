"""Reuse or reset of the demo data: the flag, the question on a terminal, the default without one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.demo import DemoPaths, choose_reuse, demo_params
from cli.main import app
from ingest.store.database import connect, migrate
from sandbox.scenario import GroundTruth


class Terminal(io.StringIO):
    """Standard input typed at a terminal."""

    def isatty(self) -> bool:
        return True


def previous_run(root: Path, *, complete: bool = True) -> DemoPaths:
    """Files a previous demo left: its database (with the ground truth when it ran to the end), replica, logs."""
    paths = DemoPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    conn = connect(paths.database)
    migrate(conn)
    conn.close()
    paths.replica.write_bytes(b"replica")
    (root / "api.log").write_text("log\n")
    (root / "notes.txt").write_text("the user's own file\n")
    if complete:
        GroundTruth(kind="scenario", seed=7, params=demo_params(), metrics={}).save(paths.database)
    return paths


def test_a_first_run_generates(tmp_path: Path) -> None:
    assert choose_reuse(DemoPaths(tmp_path), None) is False
    assert choose_reuse(DemoPaths(tmp_path), False) is False  # --reuse with nothing to reuse


def test_flags_decide_without_asking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = previous_run(tmp_path)
    monkeypatch.setattr("sys.stdin", Terminal(""))  # an answer would be needed if it asked
    assert choose_reuse(paths, False) is True  # --reuse
    assert choose_reuse(paths, True) is False  # --reset


def test_a_terminal_is_asked_and_the_answer_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = previous_run(tmp_path)
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert choose_reuse(paths, None) is False
    monkeypatch.setattr("sys.stdin", Terminal("\n"))  # Enter: the default, reuse
    assert choose_reuse(paths, None) is True


def test_without_a_terminal_it_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = previous_run(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert choose_reuse(paths, None) is True


def test_an_interrupted_generation_is_started_over(tmp_path: Path) -> None:
    paths = previous_run(tmp_path, complete=False)
    assert choose_reuse(paths, False) is False  # even with --reuse: half a scenario has no ground truth


def test_reset_deletes_only_the_demo_files(tmp_path: Path) -> None:
    paths = previous_run(tmp_path)
    paths.reset()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_bad_demo_options_are_refused_before_anything_starts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--leads", "3", "--data-dir", str(tmp_path / "demo")])
    assert result.exit_code == 2 and "--leads" in result.output
    assert not (tmp_path / "demo").exists()
