"""DESIGN §11 "errors, not tracebacks": bad flag values and damaged state are one line naming the flag or file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import Result, SpecRepo, run_reconciler


def one_error_line(result: Result) -> str:
    assert result.code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def applied(example_repo: SpecRepo) -> SpecRepo:
    assert example_repo.cli("apply").code == 0
    return example_repo


BAD_BRANCHES = [
    pytest.param("main:refs/heads/x", id="refspec"),
    pytest.param("@{-1}", id="previous-branch"),
    pytest.param("main~0", id="revision-expression"),
    pytest.param("HEAD", id="head"),
    pytest.param("-main", id="option-like"),
]


@pytest.mark.parametrize("branch", BAD_BRANCHES)
@pytest.mark.parametrize("command", ["plan", "apply", "status", "history", "rollback"])
def test_a_branch_that_is_no_branch_name_is_one_error_line(applied: SpecRepo, command: str, branch: str) -> None:
    """--branch must be a plain branch name: anything else is refused with one line naming the flag."""
    applied.git("checkout", "-q", "-b", "other")
    applied.git("checkout", "-q", "main")  # so that @{-1} would name a real branch
    line = one_error_line(
        run_reconciler(applied.path, command, f"--branch={branch}", "--state-dir", str(applied.state_dir))
    )
    assert "--branch" in line and "branch name" in line


@pytest.mark.parametrize("branch", BAD_BRANCHES[:3])
def test_the_daemon_refuses_a_bad_branch_at_start(applied: SpecRepo, branch: str, tmp_path: Path) -> None:
    """run --branch main~0 (local or URL repository) exits 1 with one line, not following a branch that never moves."""
    for repo in (str(applied.path), f"file://{applied.path}"):
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", "run", "--once", "--repo", repo, f"--branch={branch}",
             "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1:0", "--log-format", "json"],
            capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")},
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        output = done.stdout + done.stderr
        assert "Traceback" not in output and "--branch" in output


def test_a_damaged_database_page_is_one_error_line(applied: SpecRepo) -> None:
    """A local backend whose table pages are overwritten is an error naming the file, not a DatabaseError traceback."""
    database = applied.state_dir / "local-backend.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(database.read_bytes())
    assert len(data) > 2 * page
    data[page:] = b"\xa5" * (len(data) - page)  # every page after the first (the schema) is garbage
    database.write_bytes(bytes(data))
    for command in ("plan", "apply"):
        line = one_error_line(applied.cli(command))
        assert "local-backend.sqlite3" in line, line
    status = applied.cli("status", output="json")  # status still shows the record, and why live state is missing
    assert "Traceback" not in status.stderr and "local-backend.sqlite3" in status.json["live_error"]


@pytest.mark.parametrize(
    "record",
    [
        pytest.param({"instance": "default", "applied_revision": 5}, id="number-for-revision"),
        pytest.param({"instance": "default", "pinned": {"revision": ["x"], "tag": None, "pinned_at": "t"}}, id="pin"),
        pytest.param({"instance": "default", "extra": []}, id="extra-list"),
        pytest.param(["default"], id="not-an-object"),
    ],
)
def test_a_record_with_a_wrong_typed_field_is_one_error_line(applied: SpecRepo, record: object) -> None:
    """A record whose field has the wrong type is refused naming the file and the field (no TypeError later)."""
    path = applied.state_dir / "instances" / "default.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    for command in ("status", "apply", "rollback"):
        line = one_error_line(applied.cli(command))
        assert "default.json" in line, line
    if isinstance(record, dict):
        field = next(k for k in record if k != "instance")
        assert f"field '{field}" in one_error_line(applied.cli("status"))
