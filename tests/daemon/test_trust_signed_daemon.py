"""DESIGN §11 signed commits in the daemon: an unverified head is reported and counted, the last state stays."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.daemon.conftest import Daemon, wait_for
from tests.support import SpecRepo
from tests.test_trust_signed import SshKeys, commit_ssh_signed, set_routing, ssh_keys

pytestmark = pytest.mark.daemon
__all__ = ["ssh_keys"]  # the fixture, used by name

PROD = "orders-handler/prod"


def test_the_daemon_applies_only_signed_commits(
    repo: SpecRepo, ssh_keys: SshKeys, start_daemon: Callable[..., Daemon]
) -> None:
    """An unsigned commit is not applied: last_error names it, the metric counts it once; a signed one applies."""
    repo.copy_example()
    first = commit_ssh_signed(repo, ssh_keys.trusted, "example, signed")
    repo.publish("orders-handler", times=2)
    daemon = start_daemon(
        str(repo.path), repo.state_dir, "--allowed-signers", str(ssh_keys.allowed_signers), "--resync-interval", "0.3"
    )
    daemon.wait_applied(first)
    set_routing(repo, '{"2": 100}')
    unsigned = repo.commit("unsigned")
    wait_for(lambda: daemon.metric("reconciler_unverified_commits_total") == 1, what="the unverified commit counted")
    status = daemon.status()
    assert status["last_error"] == f"unverified commit {unsigned}: not signed"
    assert status["applied_revision"] == first and status["aliases"][PROD]["routing"] == {"1": 95, "2": 5}
    wait_for(lambda: len(daemon.events("not_applied")) >= 2, what="a resync re-checking the commit")
    assert daemon.metric("reconciler_unverified_commits_total") == 1  # one commit, counted once
    set_routing(repo, '{"1": 50, "2": 50}')
    signed = commit_ssh_signed(repo, ssh_keys.trusted, "signed")
    status = daemon.wait_applied(signed)
    assert status["aliases"][PROD]["routing"] == {"1": 50, "2": 50} and status["last_error"] is None
