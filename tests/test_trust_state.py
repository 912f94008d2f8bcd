"""DESIGN §11 "state outside the working tree": no commit can write a record, a pin or a cache entry.

Driven as a user does: the installed ``reconciler`` in a real checkout, no
``--state-dir`` (the default under test) unless the test is about that flag.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support import SpecRepo, run_reconciler

ALIASES = "deploy_specs/aliases.yaml"


@pytest.fixture
def checkout(repo: SpecRepo) -> SpecRepo:
    """The example committed and applied once with the default state dir."""
    repo.copy_example()
    repo.commit("example specs")
    for _ in range(2):
        assert run_reconciler(repo.path, "local", "publish-version", "orders-handler").code == 0
    applied = run_reconciler(repo.path, "apply")
    assert applied.code == 0, applied.stderr
    return repo


def status(repo: SpecRepo) -> dict[str, object]:
    result = run_reconciler(repo.path, "status", "--output", "json")
    assert result.code == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def prod_routing(repo: SpecRepo) -> object:
    aliases = status(repo)["aliases"]
    assert isinstance(aliases, dict)
    return aliases["orders-handler/prod"]["routing"]


def test_the_default_state_dir_is_in_the_git_directory(checkout: SpecRepo) -> None:
    """With no --state-dir the records and the local backend live in .git/reconciler/, not in the work tree."""
    state = checkout.path / ".git" / "reconciler"
    assert (state / "instances" / "default.json").is_file() and (state / "local-backend.sqlite3").is_file()
    assert not (checkout.path / ".reconciler").exists()
    assert checkout.git("status", "--porcelain", "--ignored") == ""


def test_a_commit_that_force_adds_state_files_changes_nothing(checkout: SpecRepo) -> None:
    """A pulled commit carrying .reconciler/instances/default.json (a pin) and a forged parse cache is inert."""
    first = checkout.head()
    checkout.write("side.txt", "unmerged\n")
    unmerged = checkout.commit("never merged")
    checkout.git("reset", "-q", "--hard", first)
    # the hostile commit: a comment-only change of aliases.yaml, plus state files forced into git
    text = (checkout.path / ALIASES).read_text(encoding="utf-8")
    checkout.write(ALIASES, "# reviewed: a comment only\n" + text)
    blob = subprocess.run(
        ["git", "hash-object", ALIASES], cwd=checkout.path, capture_output=True, text=True, check=True
    ).stdout.strip()
    forged = [
        [{"apiVersion": "reconciler/v1", "kind": "Alias", "metadata": {"name": "prod"},
          "spec": {"function": "orders-handler", "routing": {"2": 100}}}, {}, 1],
    ]  # fmt: skip
    checkout.write(".reconciler/spec-cache.json", json.dumps({f"spec:1:{blob}": forged}))
    record = {"instance": "default", "pinned": {"revision": unmerged, "tag": None, "pinned_at": "2026-01-01T00:00:00"}}
    checkout.write(".reconciler/instances/default.json", json.dumps(record))
    checkout.git("add", "-f", ".reconciler", ALIASES)
    checkout.git("commit", "-q", "-m", "comment")
    result = run_reconciler(checkout.path, "apply", "--output", "json")
    assert result.code == 0, result.stderr
    assert result.json["revision"] == checkout.head() and result.json["applied"] == []
    assert status(checkout)["pinned"] is None
    assert prod_routing(checkout) == {"1": 95, "2": 5}


def test_an_earlier_reconciler_dir_is_moved_once_with_its_pin(checkout: SpecRepo) -> None:
    """A .reconciler/ left by an earlier version moves to .git/reconciler/ with a log line; the pin survives."""
    first = checkout.head()
    text = (checkout.path / ALIASES).read_text(encoding="utf-8")
    checkout.write(ALIASES, text.replace('{"1": 95, "2": 5}', '{"1": 50, "2": 50}'))
    checkout.commit("half")
    assert run_reconciler(checkout.path, "apply").code == 0
    assert run_reconciler(checkout.path, "rollback").code == 0
    shutil.move(checkout.path / ".git" / "reconciler", checkout.path / ".reconciler")  # as an earlier version left it
    moved = run_reconciler(checkout.path, "status", "--output", "json")
    assert moved.code == 0, moved.stderr
    assert "state_dir_migrated" in moved.stderr and ".reconciler" in moved.stderr
    assert json.loads(moved.stdout)["pinned"]["revision"] == first
    assert not (checkout.path / ".reconciler").exists()
    again = run_reconciler(checkout.path, "status")
    assert again.code == 0 and "state_dir_migrated" not in again.stderr


def test_validate_moves_an_earlier_reconciler_dir_with_its_log_line(checkout: SpecRepo) -> None:
    """validate, which loads no logging unless it logs, still says it moved the state (on stderr: -o json's
    stdout holds the document alone), and reads the moved record (the followed branch)."""
    shutil.move(checkout.path / ".git" / "reconciler", checkout.path / ".reconciler")
    moved = run_reconciler(checkout.path, "validate", "--output", "json")
    assert moved.code == 0, moved.stderr
    assert "[warning  ] state_dir_migrated" in moved.stderr and ".reconciler" in moved.stderr
    assert json.loads(moved.stdout)["valid"] is True
    assert not (checkout.path / ".reconciler").exists() and (checkout.path / ".git" / "reconciler").is_dir()
    again = run_reconciler(checkout.path, "validate")
    assert again.code == 0 and again.stderr == ""


def test_a_committed_reconciler_dir_is_never_adopted(repo: SpecRepo) -> None:
    """A .reconciler/ that git tracks came from a commit: refused with one line, nothing read or moved."""
    repo.copy_example()
    repo.write(".reconciler/instances/default.json", json.dumps({"instance": "default"}))
    repo.git("add", "-f", ".")
    repo.commit("state in git")
    result = run_reconciler(repo.path, "plan")
    assert result.code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "tracked by git" in result.stderr and ".reconciler/instances/default.json" in result.stderr
    assert not (repo.path / ".git" / "reconciler").exists()


@pytest.mark.parametrize("where", ["state", "deploy_specs/.state"], ids=["root", "nested"])
def test_a_state_dir_inside_the_work_tree_is_refused(checkout: SpecRepo, where: str) -> None:
    """--state-dir inside the checked-out work tree is refused with one line naming the flag."""
    result = run_reconciler(checkout.path, "plan", "--state-dir", str(checkout.path / where))
    assert result.code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--state-dir" in result.stderr and "work tree" in result.stderr
    assert not (checkout.path / where).exists()


def test_a_state_dir_git_tracks_is_refused(checkout: SpecRepo, repo: SpecRepo, tmp_path: object) -> None:
    """--state-dir in another checkout, holding files that checkout tracks, is refused (a commit could write it)."""
    other = SpecRepo(checkout.path.parent / "other")
    other.write("state/instances/default.json", "{}")
    other.commit("tracked state")
    result = run_reconciler(checkout.path, "plan", "--state-dir", str(other.path / "state"))
    assert result.code == 1 and "tracked by git" in result.stderr and "--state-dir" in result.stderr, result.stderr


def test_a_state_dir_in_the_git_directory_is_accepted(checkout: SpecRepo) -> None:
    """--state-dir naming a folder in .git/ is inside the checkout but out of every commit's reach: accepted."""
    result = run_reconciler(checkout.path, "validate", "--state-dir", str(checkout.path / ".git" / "other-state"))
    assert result.code == 0, result.stderr
    shown = run_reconciler(checkout.path, "history", "--state-dir", str(checkout.path / ".git" / "reconciler"))
    assert shown.code == 0 and "applied/default/1" in shown.stdout, shown.stderr
