"""Crash safety of applied tags (DESIGN §13): a SIGKILL at each boundary still ends in one tag per applied commit."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.support import RECONCILER, SpecRepo

BOUNDARIES = [
    pytest.param("before_owed_record", id="before-the-owed-tag-is-recorded"),
    pytest.param("after_owed_record", id="after-the-owed-tag-is-recorded"),
    pytest.param("before_action", id="before-the-first-action"),
    pytest.param("after_last_action", id="after-the-last-action-commits"),
    pytest.param("after_applied_record", id="after-the-applied-record-write"),
    pytest.param("tag_created", id="during-git-tag"),
    pytest.param("after_tag", id="after-the-tag-before-the-record"),
]


def apply(repo: SpecRepo, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    if failpoint:
        env["RECONCILER_FAILPOINTS"] = f"{failpoint}=kill"
    argv = [str(RECONCILER), "apply", "--repo", str(repo.path), "--state-dir", str(repo.state_dir)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def tags_by_revision(repo: SpecRepo) -> dict[str, list[str]]:
    out = repo.git("for-each-ref", "--format=%(refname:strip=2) %(*objectname)", "refs/tags/applied/default/")
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, revision = line.split()
        found.setdefault(revision, []).append(name)
    return found


@pytest.mark.parametrize("failpoint", BOUNDARIES)
def test_a_kill_at_each_boundary_converges_to_one_tag_per_applied_commit(
    example_repo: SpecRepo, failpoint: str
) -> None:
    """SIGKILL at the boundary, then a plain apply: the commit is applied and tagged exactly once."""
    head = example_repo.head()
    killed = apply(example_repo, failpoint)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = apply(example_repo)
    assert again.returncode == 0, again.stderr
    assert apply(example_repo).returncode == 0  # and once more: nothing new to tag
    assert tags_by_revision(example_repo) == {head: ["applied/default/1"]}
    assert example_repo.cli("plan").code == 0


@pytest.mark.parametrize("failpoint", ["after_last_action", "after_applied_record", "tag_created", "after_tag"])
def test_a_commit_applied_before_a_kill_is_tagged_even_when_a_newer_commit_comes_next(
    example_repo: SpecRepo, failpoint: str
) -> None:
    """The killed apply's commit (fully applied) is tagged before the next commit is applied and tagged."""
    first = example_repo.head()
    assert apply(example_repo, failpoint).returncode == -signal.SIGKILL
    spec = example_repo.path / "deploy_specs" / "aliases.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("description: production", "description: prod"))
    second = example_repo.commit("describe prod")
    assert apply(example_repo).returncode == 0
    tags = tags_by_revision(example_repo)
    assert sorted(tags) == sorted([first, second]) and all(len(names) == 1 for names in tags.values()), tags
    history = example_repo.cli_json("history")
    assert [h["revision"] for h in history] == [second, first]
