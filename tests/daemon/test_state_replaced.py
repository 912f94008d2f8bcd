"""The state directory deleted under a running daemon (DESIGN §13): it stops writing and reports unhealthy."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from tests.daemon.conftest import Daemon, set_prod_routing, wait_for
from tests.support import SpecRepo

pytestmark = pytest.mark.daemon


def tags_by_revision(repo: SpecRepo) -> dict[str, list[str]]:
    out = repo.git("for-each-ref", "--format=%(refname:strip=2) %(*objectname)", "refs/tags/applied/default/")
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, revision = line.split()
        found.setdefault(revision, []).append(name)
    return found


def test_a_deleted_state_dir_stops_the_daemon_writing_and_fails_healthz(
    running: Daemon, example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """rm -rf of the state dir: /healthz 503 naming it, no further apply or tag by that daemon; a second
    daemon on the same path then applies and tags the next commit exactly once."""
    first = example_repo.head()
    shutil.rmtree(example_repo.state_dir)
    wait_for(lambda: running.request("/healthz")[0] == 503, timeout=10, what="/healthz to fail")
    assert b"deleted or replaced" in running.request("/healthz")[1]
    assert running.request("/readyz")[0] == 503
    event = wait_for(lambda: running.events("state_dir_replaced"), what="the reason logged")[0]
    assert str(example_repo.state_dir) in event["error"]
    assert "deleted or replaced" in running.status()["daemon"]["health"]
    set_prod_routing(example_repo, 'routing: {"1": 90, "2": 10}')
    second = example_repo.commit("prod 90/10")
    example_repo.publish("orders-handler", times=2)  # the local backend went with the state directory
    other = start_daemon(str(example_repo.path), example_repo.state_dir)
    other.wait_applied(second, timeout=20)
    assert [e["revision"] for e in running.events("reconcile")] == [first]
    assert tags_by_revision(example_repo) == {first: ["applied/default/1"], second: ["applied/default/2"]}
