"""validate/plan --worktree and the pre-commit hook (DESIGN §13): uncommitted edits are checked before commit."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support import SpecRepo

ROOT = Path(__file__).resolve().parent.parent


def break_prod(repo: SpecRepo) -> None:
    aliases = repo.path / "deploy_specs" / "aliases.yaml"
    aliases.write_text(aliases.read_text(encoding="utf-8").replace('{"1": 95, "2": 5}', '{"1": 95, "2": 50}'))


def test_validate_worktree_catches_an_uncommitted_error(example_repo: SpecRepo) -> None:
    """The commit is valid; the edited working tree is not, and --worktree says where."""
    break_prod(example_repo)
    assert example_repo.cli("validate").code == 0
    result = example_repo.cli("validate", "--worktree")
    assert result.code == 1
    assert "deploy_specs/aliases.yaml:" in result.stderr and "routing" in result.stderr, result.stderr
    assert example_repo.cli_json("validate", "--worktree")["revision"] == "worktree"


def test_validate_worktree_reads_untracked_files_but_not_ignored_ones(example_repo: SpecRepo) -> None:
    example_repo.write("deploy_specs/new.yaml", "apiVersion: reconciler/v1\nkind: Nope\n")
    assert example_repo.cli("validate", "--worktree").code == 1
    example_repo.write(".gitignore", "deploy_specs/new.yaml\n")
    assert example_repo.cli("validate", "--worktree").code == 0


def test_validate_worktree_says_valid_for_a_clean_tree(example_repo: SpecRepo) -> None:
    result = example_repo.cli("validate", "--worktree")
    assert result.code == 0 and "Valid in the working tree" in result.stdout


def test_plan_worktree_shows_an_uncommitted_change(example_repo: SpecRepo) -> None:
    assert example_repo.cli("apply").code == 0
    aliases = example_repo.path / "deploy_specs" / "aliases.yaml"
    aliases.write_text(aliases.read_text(encoding="utf-8").replace('{"1": 95, "2": 5}', '{"2": 100}'))
    assert example_repo.cli("plan").code == 0
    plan = example_repo.cli("plan", "--worktree", output="json")
    assert plan.code == 2
    assert [a["resource"] for a in plan.json["actions"]] == ["Alias/orders-handler/prod"]


def test_worktree_and_rev_together_are_refused(example_repo: SpecRepo) -> None:
    result = example_repo.cli("validate", "--worktree", "--rev", "HEAD")
    assert result.code == 1 and "--worktree" in result.stderr and "--rev" in result.stderr


def test_the_repository_ships_a_pre_commit_hook_running_validate_worktree() -> None:
    """.pre-commit-hooks.yaml declares reconciler-validate, run once per commit (not per file)."""
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    hook = next(h for h in hooks if h["id"] == "reconciler-validate")
    assert hook["entry"] == "reconciler validate --worktree"
    assert hook["language"] == "python" and hook["pass_filenames"] is False
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "id: reconciler-validate" in readme and ".pre-commit-config.yaml" in readme
