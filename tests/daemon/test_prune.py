"""The daemon deletes a removed spec's resource only with --prune, and empties the backend only with --allow-empty."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.daemon.conftest import Daemon, wait_for
from tests.support import SpecRepo

pytestmark = pytest.mark.daemon

STAGES = "deploy_specs/stages.yaml"
V2 = "---\napiVersion: reconciler/v1\nkind: Stage\nmetadata: {name: v2}"
ALL_STAGES = ["orders/dev", "orders/prod", "orders/test", "orders/v1", "orders/v2"]
ALL_ALIASES = ["orders-handler/dev", "orders-handler/prod", "orders-handler/test"]


def remove_v2(repo: SpecRepo) -> str:
    """Commit stages.yaml without the v2 stage; return the commit."""
    text = (repo.path / STAGES).read_text(encoding="utf-8")
    assert V2 in text
    repo.write(STAGES, text[: text.index(V2)])
    return repo.commit("drop the v2 stage")


def remove_every_stage_and_alias(repo: SpecRepo) -> str:
    """Commit the specs with the API alone: no stage, no alias."""
    repo.remove(STAGES)
    repo.remove("deploy_specs/aliases.yaml")
    return repo.commit("drop every stage and alias")


def started(repo: SpecRepo, start_daemon: Callable[..., Daemon], *flags: str) -> Daemon:
    daemon = start_daemon(str(repo.path), repo.state_dir, *flags)
    daemon.wait_applied(repo.head())
    return daemon


def test_without_prune_the_daemon_keeps_a_stage_whose_spec_is_gone(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """A stage removed from git stays live (an orphan) when the daemon runs without --prune."""
    daemon = started(example_repo, start_daemon)
    status = daemon.wait_applied(remove_v2(example_repo))
    assert sorted(status["stages"]) == ALL_STAGES
    assert not [e for e in daemon.events("reconcile") if e["applied"] and e["revision"] == example_repo.head()]


def test_with_prune_the_daemon_deletes_a_stage_whose_spec_is_gone(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """With --prune, the daemon deletes the managed stage whose spec was removed, and nothing else."""
    daemon = started(example_repo, start_daemon, "--prune")
    status = daemon.wait_applied(remove_v2(example_repo))
    assert sorted(status["stages"]) == ["orders/dev", "orders/prod", "orders/test", "orders/v1"]
    assert sorted(status["aliases"]) == ALL_ALIASES


def test_prune_without_allow_empty_never_empties_the_backend(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """Specs that declare nothing are refused under --prune: every stage and alias stays, the error says why."""
    daemon = started(example_repo, start_daemon, "--prune")
    applied = example_repo.head()
    empty = remove_every_stage_and_alias(example_repo)
    status = wait_for(lambda: (s := daemon.status())["attempted_revision"] == empty and s["last_error"] and s)
    assert status["applied_revision"] == applied
    assert "--allow-empty" in status["last_error"]
    assert sorted(status["stages"]) == ALL_STAGES and sorted(status["aliases"]) == ALL_ALIASES
    assert daemon.proc.poll() is None


def test_prune_with_allow_empty_empties_the_backend(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """--prune --allow-empty deletes every managed stage and alias when the specs declare none."""
    daemon = started(example_repo, start_daemon, "--prune", "--allow-empty")
    status = daemon.wait_applied(remove_every_stage_and_alias(example_repo))
    assert status["stages"] == {} and status["aliases"] == {}
    assert status["last_error"] is None
