"""Honest health (DESIGN §13): backoff that never overflows, a crashing pass that backs off, a worker that lives."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.worker import BACKOFF_CAP, backoff_delay, jittered
from tests.daemon.conftest import Daemon, wait_for
from tests.support import SpecRepo

pytestmark = pytest.mark.daemon


@pytest.mark.parametrize("failures", [1025, 1100, 10**6, 10**12])
def test_backoff_never_overflows_after_many_failures(failures: int) -> None:
    """``backoff_delay`` stays at the cap however many failures (it raised OverflowError after 1,025)."""
    assert backoff_delay(failures) == BACKOFF_CAP


def test_jittered_delay_stays_between_half_and_all_of_the_delay() -> None:
    """Jitter spreads retries of many replicas; it never waits longer than the capped delay."""
    delays = [jittered(backoff_delay(n)) for n in (1, 5, 9, 2000) for _ in range(50)]
    assert all(math.isfinite(d) and 0 < d <= BACKOFF_CAP for d in delays)
    assert all(backoff_delay(3) / 2 <= jittered(backoff_delay(3)) <= backoff_delay(3) for _ in range(50))


def start_crashing(example_repo: SpecRepo, tmp_path: Path, failpoint: str) -> Daemon:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RECONCILER_FAILPOINTS": failpoint}
    return Daemon(str(example_repo.path), example_repo.state_dir, tmp_path / "crash.log", env=env)


def test_a_crashing_pass_backs_off_and_the_worker_lives(example_repo: SpecRepo, tmp_path: Path) -> None:
    """A pass that raises (after writing the record) is retried 1 2 4 … s apart, not re-triggered by its own
    record write; /healthz stays 200, /readyz 503, and the failure count is honest."""
    daemon = start_crashing(example_repo, tmp_path, "before_action=raise")
    try:
        wait_for(lambda: len(daemon.events("pass_crashed")) >= 2, timeout=30, what="a crash and its retry")
        time.sleep(3.0)
        crashes = daemon.events("pass_crashed")
        first = datetime.fromisoformat(crashes[0]["timestamp"])
        elapsed = (datetime.now(UTC) - first).total_seconds()
        # retries wait at least 0.5, 1, 2 … s (1, 2, 4 … jittered down to half): k retries take >= (2**k - 1) / 2 s
        assert len(crashes) <= 1 + math.ceil(math.log2(2 * elapsed + 1)), (elapsed, len(crashes))
        assert daemon.request("/healthz")[0] == 200
        assert daemon.request("/readyz")[0] == 503
        assert daemon.metric("reconciler_consecutive_failures") >= 2
        assert daemon.status()["daemon"]["consecutive_failures"] >= 2
    finally:
        daemon.stop()


def test_a_permanent_failure_is_not_counted_as_a_success(
    example_repo: SpecRepo, start_daemon: Callable[..., Daemon]
) -> None:
    """An invalid head commit is a failure: reconciler_consecutive_failures is 1, not 0."""
    example_repo.write("deploy_specs/broken.yaml", "apiVersion: reconciler/v1\nkind: Nope\n")
    example_repo.commit("broken")
    daemon = start_daemon(str(example_repo.path), example_repo.state_dir, ready=False)
    wait_for(lambda: daemon.events("not_applied"), timeout=20, what="the invalid commit to be reported")
    assert daemon.metric("reconciler_consecutive_failures") == 1
    assert daemon.request("/healthz")[0] == 200
