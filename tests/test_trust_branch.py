"""DESIGN §11 "only reviewed commits": apply and rollback act only on the followed branch and on own tags."""

from __future__ import annotations

import json

import pytest

from tests.support import SpecRepo

ALIASES = "deploy_specs/aliases.yaml"


def edit(repo: SpecRepo, old: str, new: str) -> None:
    text = (repo.path / ALIASES).read_text(encoding="utf-8")
    assert old in text
    repo.write(ALIASES, text.replace(old, new))


def routing(repo: SpecRepo) -> object:
    return repo.cli_json("status")["aliases"]["orders-handler/prod"]["routing"]


@pytest.fixture
def two_applied(example_repo: SpecRepo) -> tuple[SpecRepo, str, str]:
    """applied/default/1 at the example (95/5), applied/default/2 at a 50/50 split."""
    assert example_repo.cli("apply").code == 0
    first = example_repo.head()
    edit(example_repo, '{"1": 95, "2": 5}', '{"1": 50, "2": 50}')
    second = example_repo.commit("half and half")
    assert example_repo.cli("apply").code == 0
    return example_repo, first, second


def unmerged_commit(repo: SpecRepo, routing_text: str) -> str:
    """A commit on a branch nobody merged (the followed branch stays where it was)."""
    repo.git("checkout", "-q", "-b", "unreviewed")
    edit(repo, '{"1": 50, "2": 50}', routing_text)
    sha = repo.commit("never reviewed")
    repo.git("checkout", "-q", "main")
    return sha


def test_a_pushed_foreign_tag_does_not_steer_rollback(two_applied: tuple[SpecRepo, str, str]) -> None:
    """Whoever re-points applied/default/1 at an unmerged commit does not decide what rollback deploys."""
    repo, _, _ = two_applied
    rogue = unmerged_commit(repo, '{"2": 100}')
    message = repo.git("tag", "-l", "--format=%(contents)", "applied/default/1")
    repo.git("tag", "-f", "-a", "applied/default/1", rogue, "-m", message)
    result = repo.cli("rollback")
    assert result.code == 1 and "applied/default/1" not in result.stdout, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "tag" in result.stderr, result.stderr
    assert routing(repo) == {"1": 50, "2": 50} and repo.cli_json("status")["pinned"] is None
    history = {h["tag"]: h for h in repo.cli_json("history")}
    assert history["applied/default/1"]["trusted"] is False and history["applied/default/2"]["trusted"] is True
    lines = {line.split()[0]: line for line in repo.cli("history").stdout.splitlines()}
    assert lines["applied/default/1"].endswith("(untrusted)") and "untrusted" not in lines["applied/default/2"]


def test_a_tag_forged_on_a_branch_commit_is_untrusted_too(two_applied: tuple[SpecRepo, str, str]) -> None:
    """A tag this instance did not make counts for nothing even on a reviewed commit; its own tags still work."""
    repo, first, _ = two_applied
    repo.git("tag", "-a", "applied/default/3", first, "-m", json.dumps({"revision": first, "instance": "default"}))
    history = repo.cli_json("history")
    assert [(h["tag"], h["trusted"]) for h in history] == [
        ("applied/default/3", False),
        ("applied/default/2", True),
        ("applied/default/1", True),
    ]
    assert repo.cli("rollback").code == 0
    assert routing(repo) == {"1": 95, "2": 5} and repo.cli_json("status")["pinned"]["tag"] == "applied/default/1"


def test_rollback_to_a_revision_off_the_branch_is_refused(two_applied: tuple[SpecRepo, str, str]) -> None:
    """An explicit rollback target that the followed branch does not contain is refused; nothing applied or pinned."""
    repo, _, _ = two_applied
    rogue = unmerged_commit(repo, '{"2": 100}')
    result = repo.cli("rollback", rogue)
    assert result.code == 1 and "not on branch main" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert routing(repo) == {"1": 50, "2": 50} and repo.cli_json("status")["pinned"] is None


def test_apply_of_a_revision_off_the_branch_is_refused(two_applied: tuple[SpecRepo, str, str]) -> None:
    """apply --rev of an unmerged commit applies nothing and says why; plan --rev still previews it."""
    repo, _, second = two_applied
    rogue = unmerged_commit(repo, '{"2": 100}')
    assert repo.cli("plan", "--rev", rogue).code == 2  # a preview of a pull request is fine
    result = repo.cli("apply", "--rev", rogue)
    assert result.code == 1 and "not on branch main" in result.stderr and rogue[:12] in result.stderr
    status = repo.cli_json("status")
    assert routing(repo) == {"1": 50, "2": 50} and status["applied_revision"] == second


def test_a_tag_of_this_instance_whose_commit_left_the_branch_is_untrusted(
    two_applied: tuple[SpecRepo, str, str],
) -> None:
    """After the branch is rewritten past an applied commit, that commit's tag is listed as untrusted."""
    repo, first, _ = two_applied
    repo.git("reset", "-q", "--hard", first)
    edit(repo, '{"1": 95, "2": 5}', '{"1": 90, "2": 10}')
    repo.commit("rewritten history")
    history = {h["tag"]: h["trusted"] for h in repo.cli_json("history")}
    assert history == {"applied/default/2": False, "applied/default/1": True}
