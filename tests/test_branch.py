"""The followed branch and where specs are read (DESIGN §13): apply refuses a foreign checkout, plan/validate
preview any branch or detached HEAD, absolute --path, an empty repository, JSON spec files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support import SpecRepo, run_reconciler


def git_in(path: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)


def feature_branch(repo: SpecRepo) -> str:
    """Check out ``feature`` with prod's routing changed (committed); returns its head."""
    repo.git("checkout", "-q", "-b", "feature")
    aliases = repo.path / "deploy_specs" / "aliases.yaml"
    aliases.write_text(aliases.read_text(encoding="utf-8").replace('{"1": 95, "2": 5}', '{"2": 100}'))
    return repo.commit("feature: prod on 2")


def test_apply_on_another_branch_refuses_naming_both(example_repo: SpecRepo) -> None:
    """After the first apply recorded main, apply with feature checked out changes nothing and names both."""
    assert example_repo.cli("apply").code == 0
    feature_branch(example_repo)
    result = example_repo.cli("apply")
    assert result.code == 1
    assert "'main'" in result.stderr and "'feature'" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert example_repo.cli_json("status")["aliases"]["orders-handler/prod"]["routing"] == {"1": 95, "2": 5}
    assert example_repo.git("tag", "--list", "applied/*").split() == ["applied/default/1"]


def test_rollback_on_another_branch_refuses_naming_both(example_repo: SpecRepo) -> None:
    assert example_repo.cli("apply").code == 0
    feature_branch(example_repo)
    result = example_repo.cli("rollback", "HEAD~1")
    assert result.code == 1 and "'main'" in result.stderr and "'feature'" in result.stderr, result.stderr


def test_apply_with_branch_flag_follows_that_branch_from_any_checkout(example_repo: SpecRepo) -> None:
    assert example_repo.cli("apply").code == 0
    main = example_repo.head()
    feature_branch(example_repo)
    assert example_repo.cli("apply", "--branch", "main").code == 0
    assert example_repo.cli_json("status")["applied_revision"] == main


def test_plan_on_a_feature_branch_previews_that_branch(example_repo: SpecRepo) -> None:
    """plan with a feature branch checked out shows what merging it would change (exit 2)."""
    assert example_repo.cli("apply").code == 0
    head = feature_branch(example_repo)
    plan = example_repo.cli_json("plan")
    assert plan["revision"] == head
    assert [a["resource"] for a in plan["actions"]] == ["Alias/orders-handler/prod"]
    assert example_repo.cli("validate").code == 0


def test_validate_and_plan_in_a_detached_clone_of_a_pull_request_merge_commit(
    example_repo: SpecRepo, tmp_path: Path
) -> None:
    """What CI checks out for a PR: a detached HEAD at the merge commit; validate says valid, plan shows it."""
    example_repo.git("checkout", "-q", "-b", "pr")
    aliases = example_repo.path / "deploy_specs" / "aliases.yaml"
    aliases.write_text(aliases.read_text(encoding="utf-8").replace("description: production", "description: prd"))
    example_repo.commit("pr change")
    example_repo.git("checkout", "-q", "main")
    example_repo.git("merge", "-q", "--no-ff", "-m", "Merge pull request #1", "pr")
    merge = example_repo.head()
    example_repo.git("reset", "-q", "--hard", "HEAD~1")  # main has not merged it: only the PR ref has
    example_repo.git("update-ref", "refs/pull/1/merge", merge)
    clone = tmp_path / "ci"
    example_repo.git("clone", "-q", str(example_repo.path), str(clone))
    git_in(clone, "fetch", "-q", "origin", "refs/pull/1/merge")
    git_in(clone, "checkout", "-q", "--detach", "FETCH_HEAD")
    validate = run_reconciler(clone, "validate", "--output", "json")
    assert validate.code == 0 and json.loads(validate.stdout)["valid"] is True, validate.stderr
    plan = run_reconciler(clone, "plan", "--output", "json", "--state-dir", str(example_repo.state_dir))
    assert plan.code == 2, plan.stderr
    assert json.loads(plan.stdout)["revision"] == merge


def test_apply_on_a_detached_head_without_a_recorded_branch_asks_for_branch(example_repo: SpecRepo) -> None:
    example_repo.git("checkout", "-q", "--detach", "HEAD")
    result = example_repo.cli("apply")
    assert result.code == 1 and "--branch" in result.stderr


def test_an_absolute_path_inside_the_repository_is_honoured(example_repo: SpecRepo) -> None:
    absolute = str(example_repo.path / "deploy_specs")
    assert example_repo.cli("validate", "--path", absolute).code == 0
    assert example_repo.cli("plan", "--path", absolute).code == 2


def test_an_absolute_path_outside_the_repository_is_refused(example_repo: SpecRepo, tmp_path: Path) -> None:
    result = example_repo.cli("validate", "--path", str(tmp_path / "elsewhere"))
    assert result.code == 1
    assert "--path" in result.stderr and "outside" in result.stderr, result.stderr


def test_a_repository_with_no_commits_says_so(repo: SpecRepo) -> None:
    result = repo.cli("validate")
    assert result.code == 1
    assert "no commits" in result.stderr, result.stderr
    assert "does not exist" not in result.stderr


def test_json_spec_files_are_read_like_yaml_ones(example_repo: SpecRepo) -> None:
    """A spec document in a .json file is loaded (it was skipped without a word); an invalid one is reported."""
    doc = {
        "apiVersion": "reconciler/v1",
        "kind": "Alias",
        "metadata": {"name": "staging"},
        "spec": {"function": "orders-handler", "routing": {"2": 100}},
    }
    example_repo.write("deploy_specs/staging.json", json.dumps(doc, indent="\t"))
    example_repo.commit("staging alias in JSON")
    plan = example_repo.cli_json("plan")
    assert "Alias/orders-handler/staging" in [a["resource"] for a in plan["actions"]]
    doc["spec"]["routing"] = {"2": 50}
    example_repo.write("deploy_specs/staging.json", json.dumps(doc))
    example_repo.commit("broken")
    result = example_repo.cli("validate")
    assert result.code == 1 and "staging.json" in result.stdout + result.stderr
