"""Applied tags written in-process: valid git objects, numbered after every existing tag, no git process."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from reconciler.gitsource import GitRepo
from tests.support import SpecRepo


def message(n: int, revision: str) -> dict[str, Any]:
    return {"revision": revision, "instance": "default", "action_count": n, "actions": []}


def test_applied_tags_are_valid_annotated_tags(repo: SpecRepo) -> None:
    """`git fsck --strict` finds nothing wrong; git reads the tagger, target and JSON message back."""
    revision = repo.commit("one")
    gitrepo = GitRepo(repo.path)
    names = [gitrepo.create_applied_tag("default", revision, message(n, revision)) for n in range(3)]
    assert names == ["applied/default/1", "applied/default/2", "applied/default/3"]
    fsck = subprocess.run(
        ["git", "fsck", "--strict", "--no-dangling"], cwd=repo.path, capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0 and not fsck.stdout.strip() and "warning" not in fsck.stderr, fsck
    assert repo.git("cat-file", "-t", "applied/default/3") == "tag"
    assert repo.git("rev-parse", "applied/default/3^{commit}") == revision
    assert repo.git("for-each-ref", "--format=%(taggername) %(taggeremail)", "refs/tags/applied/default/1") == (
        "Dev <dev@example.com>"
    )
    body = json.loads(repo.git("for-each-ref", "--format=%(contents)", "refs/tags/applied/default/2"))
    assert body == {**message(1, revision), "tag": "applied/default/2"}
    assert [t.name for t in gitrepo.applied_tags("default")] == names[::-1]
    assert gitrepo.applied_tags("default")[0].message["action_count"] == 2


def test_numbers_follow_tags_made_by_others_loose_or_packed(repo: SpecRepo) -> None:
    """A number taken behind the kept counter's back (another process, then `git pack-refs`) is never reused."""
    revision = repo.commit("one")
    gitrepo = GitRepo(repo.path)
    assert gitrepo.create_applied_tag("default", revision, message(1, revision)) == "applied/default/1"
    repo.git("tag", "-a", "-m", "{}", "applied/default/2", revision)  # e.g. a CLI apply beside the daemon
    assert gitrepo.create_applied_tag("default", revision, message(2, revision)) == "applied/default/3"
    repo.git("tag", "-a", "-m", "{}", "applied/default/4", revision)
    repo.git("pack-refs", "--all")
    assert gitrepo.create_applied_tag("default", revision, message(3, revision)) == "applied/default/5"
    repo.git("tag", "-a", "-m", "{}", "applied/default/9", revision)
    repo.git("pack-refs", "--all")
    assert gitrepo.create_applied_tag("default", revision, message(4, revision)) == "applied/default/10"
    assert json.loads(repo.git("for-each-ref", "--format=%(contents)", "refs/tags/applied/default/10"))["tag"] == (
        "applied/default/10"
    )
    assert GitRepo(repo.path).create_applied_tag("other", revision, message(5, revision)) == "applied/other/1"
    assert not list((repo.path / ".git").rglob("*.lock"))


def test_creating_a_tag_starts_no_git_process(repo: SpecRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the repository is open, a tag is an object and a ref file written here: no `git` child."""
    revision = repo.commit("one")
    gitrepo = GitRepo(repo.path)
    gitrepo.create_applied_tag("default", revision, message(0, revision))  # config and numbers read once
    started: list[Any] = []
    real = subprocess.Popen.__init__

    def counting(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        started.append(args[0] if args else kwargs.get("args"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", counting)
    for n in range(3):
        gitrepo.create_applied_tag("default", revision, message(n, revision))
    monkeypatch.undo()
    assert started == []
    assert repo.git("tag", "-l", "applied/default/*").split() == [f"applied/default/{n}" for n in (1, 2, 3, 4)]


def test_the_next_number_follows_the_highest_tag_not_the_count(repo: SpecRepo) -> None:
    """Tags 1 and 5 left (2-4 deleted): the next is 6, never a number in the gap."""
    revision = repo.commit("one")
    gitrepo = GitRepo(repo.path)
    for n in range(5):
        gitrepo.create_applied_tag("default", revision, message(n, revision))
    repo.git("tag", "-d", "applied/default/2", "applied/default/3", "applied/default/4")
    assert GitRepo(repo.path).create_applied_tag("default", revision, message(6, revision)) == "applied/default/6"
